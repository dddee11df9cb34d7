"""Tests of the simulated ds001506-like dataset (bidsrecon.simulate), on the tiny preset."""
import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bidsrecon.errors import EXIT_BAD_ARGUMENTS, BidsReconError
from bidsrecon.simulate import simulate_dataset
from bidsrecon.simulate.dataset import build_stimuli, build_subject
from bidsrecon.simulate.design import IMAGERY_COLUMNS, PERCEPTION_COLUMNS
from bidsrecon.simulate.images import TEST_PHOTOGRAPHS, TRAINING_PHOTOGRAPHS
from bidsrecon.simulate.presets import PRESETS, get_preset
from bidsrecon.simulate.stimuli import LAB_TEST_IMAGES, imagery_target

VALIDATOR = Path(sys.executable).parent / "bids-validator-deno"
TR = 2.0
SEED = 0


def _read_events(path):
    # Ids stay strings: 1518878.005950 must not lose its trailing zero.
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def _validate(path):
    result = subprocess.run([str(VALIDATOR), str(path)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def _tree_digest(root, pattern="**/*"):
    digest = hashlib.sha256()
    for path in sorted(p for p in root.glob(pattern) if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def fmriprep_dataset(tmp_path_factory):
    return simulate_dataset(tmp_path_factory.mktemp("sim") / "fmriprep", preset="tiny",
                            seed=SEED, fmriprep=True)


@pytest.fixture(scope="module")
def raw_dataset(tmp_path_factory):
    """Written through the command line, without derivatives."""
    out = tmp_path_factory.mktemp("sim") / "raw"
    result = subprocess.run(
        [sys.executable, "-m", "bidsrecon.simulate", str(out), "--seed", str(SEED)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    return out


def _func_files(root, suffix):
    return sorted(root.glob(f"sub-*/ses-*/func/*{suffix}"))


def test_validator_passes_raw(raw_dataset):
    assert not (raw_dataset / "derivatives").exists()
    _validate(raw_dataset)


def test_validator_passes_with_fmriprep(fmriprep_dataset):
    _validate(fmriprep_dataset)
    _validate(fmriprep_dataset / "derivatives" / "fmriprep")


def test_sessions_named_like_ds001506(raw_dataset):
    sessions = sorted(path.name for path in (raw_dataset / "sub-01").iterdir())
    assert sessions == [
        "ses-anatomy", "ses-imagery01", "ses-perceptionArtificialImage01",
        "ses-perceptionLetterImage01", "ses-perceptionNaturalImageTest01",
        "ses-perceptionNaturalImageTraining01", "ses-perceptionNaturalImageTraining02",
    ]
    assert (raw_dataset / "sub-01/ses-anatomy/anat/sub-01_ses-anatomy_T1w.nii.gz").is_file()
    description = json.loads((raw_dataset / "dataset_description.json").read_text())
    assert description["BIDSVersion"] == "1.10.0" and description["DatasetType"] == "raw"
    assert "simulated" in description["GeneratedBy"][0]["Description"].lower()
    for task in ("perception", "imagery"):
        sidecar = json.loads((raw_dataset / f"task-{task}_bold.json").read_text())
        assert sidecar["RepetitionTime"] == TR and sidecar["TaskName"] == task


def test_volumes_match_event_timeline(raw_dataset):
    bold_files = _func_files(raw_dataset, "_bold.nii.gz")
    assert len(bold_files) == 4 + 2 + 2 + 2 + 1
    for bold_file in bold_files:
        image = nib.load(bold_file)
        events = _read_events(str(bold_file).replace("_bold.nii.gz", "_events.tsv"))
        end = float(events["onset"].iloc[-1]) + float(events["duration"].iloc[-1])
        assert image.shape[3] * TR == end
        assert image.header.get_zooms()[3] == TR


def test_perception_events(raw_dataset):
    stimuli = {path.stem for path in (raw_dataset / "stimuli").glob("*.png")}
    for path in _func_files(raw_dataset, "task-perception_run-*_events.tsv"):
        events = _read_events(path)
        assert tuple(events.columns) == PERCEPTION_COLUMNS
        codes = events["event_type"].astype(int)
        durations = events["duration"].astype(float)
        onsets = events["onset"].astype(float)
        assert (codes.iloc[0], durations.iloc[0], onsets.iloc[0]) == (-1, 32.0, 0.0)
        assert (codes.iloc[-1], durations.iloc[-1]) == (-2, 6.0)
        assert np.allclose(onsets.iloc[1:].to_numpy(), (onsets + durations).iloc[:-1].to_numpy())
        blocks = events[codes > 0]
        letters = "LetterImage" in path.name
        assert set(blocks["duration"].astype(float)) == {12.0 if letters else 8.0}
        assert set(codes) <= ({-1, -2, -3, 1, 2} if letters else {-1, -2, 1, 2})
        if letters:
            # Every letter block is followed by a 12-s rest (ds001506's 302-s runs).
            following = codes.to_numpy()[np.flatnonzero(codes.to_numpy() > 0) + 1]
            assert set(following) == {-3}
        assert set(blocks["stimulus_name"]) <= stimuli
        rests = events[codes < 0]
        for column in ("stimulus_name", "category_index", "image_index", "response_time"):
            assert set(rests[column]) == {"n/a"}
        natural = blocks[blocks["stimulus_name"].str.startswith("n")]
        for name, stimulus_id in zip(natural["stimulus_name"], natural["stimulus_id"]):
            synset, image = name.split("_")
            assert stimulus_id == f"{int(synset[1:])}.{int(image):06d}"


def test_one_back_repeats_show_previous_image(raw_dataset):
    for path in _func_files(raw_dataset, "task-perception_run-*_events.tsv"):
        blocks = _read_events(path).query("event_type in ['1', '2']").reset_index(drop=True)
        repeats = np.flatnonzero(blocks["event_type"] == "2")
        assert len(repeats) == max(1, round((len(blocks) - len(repeats)) / 10))
        for index in repeats:
            assert index > 0 and blocks["event_type"][index - 1] == "1"
            assert blocks["stimulus_name"][index] == blocks["stimulus_name"][index - 1]
            assert blocks["response_time"][index] != "n/a"


def test_first_letter_run_carries_the_on_a_glitch(raw_dataset):
    [first_path] = _func_files(raw_dataset, "LetterImage01_task-perception_run-01_events.tsv")
    [second_path] = _func_files(raw_dataset, "LetterImage01_task-perception_run-02_events.tsv")
    first, second = _read_events(first_path), _read_events(second_path)
    assert (first.query("event_type == '-3'")["stimulus_id"] == "on/a").sum() == 1
    assert "on/a" not in set(second["stimulus_id"])


def test_imagery_mapping_is_the_labs():
    assert [imagery_target(index) for index in (1, 2, 3, 4, 15)] == [
        "colorExpStim02_red_smallring", "colorExpStim04_red_+", "colorExpStim05_red_X",
        "colorExpStim07_green_smallring", "colorExpStim40_black_X"]
    assert imagery_target(16) is None
    assert imagery_target(17) == "n02416519_12793" and imagery_target(26) == "n04507155_21299"


def test_imagery_events(raw_dataset):
    stimuli = {path.stem for path in (raw_dataset / "stimuli").glob("*.png")}
    [path] = _func_files(raw_dataset, "task-imagery_run-01_events.tsv")
    events = _read_events(path)
    assert tuple(events.columns) == IMAGERY_COLUMNS
    codes = events["event_type"].astype(int).tolist()
    assert codes[0] == -1 and codes[-1] == -2
    trials = events.iloc[1:-1]
    assert codes[1:-1] == [1, 2, 3, 4] * 5
    assert trials["duration"].astype(float).tolist() == [4.0, 8.0, 3.0, 1.0] * 5
    assert set(trials["evaluation"].astype(int)) <= {1, 2, 3, 4, 5}
    indices = trials.query("event_type == '2'")["category_index"].astype(int).tolist()
    assert any(i < 16 for i in indices) and 16 in indices and any(i > 16 for i in indices)
    for index, name in zip(trials["category_index"].astype(int), trials["category_name"]):
        target = imagery_target(index)
        assert target is None or target in stimuli
        # The published labels mislead: they never name the imagined natural image.
        assert target is None or not target.startswith(name)


def test_stimulus_sets(raw_dataset):
    names = {path.stem for path in (raw_dataset / "stimuli").glob("*.png")}
    by_session = {}
    for path in _func_files(raw_dataset, "task-perception_run-*_events.tsv"):
        session = path.name.split("_")[1]
        by_session.setdefault(session.rstrip("0123456789"), set()).update(
            _read_events(path).query("event_type == '1'")["stimulus_name"])
    training = by_session["ses-perceptionNaturalImageTraining"]
    test = by_session["ses-perceptionNaturalImageTest"]
    assert len(training) == 40 and len(test) == 4 and not training & test
    assert test == set(LAB_TEST_IMAGES[:4])
    assert not set(TEST_PHOTOGRAPHS) & set(TRAINING_PHOTOGRAPHS)
    assert by_session["ses-perceptionArtificialImage"] == {
        "colorExpStim01_red_square", "colorExpStim02_red_smallring", "colorExpStim03_red_largering",
        "colorExpStim04_red_+", "colorExpStim05_red_X"}
    assert by_session["ses-perceptionLetterImage"] == {"letter_black_img011_A", "letter_black_img013_C"}
    assert names == training | test | by_session["ses-perceptionArtificialImage"] | by_session[
        "ses-perceptionLetterImage"]


def test_roi_masks_on_bold_grid(raw_dataset):
    bold_file = _func_files(raw_dataset, "_bold.nii.gz")[0]
    bold = nib.load(bold_file)
    masks = sorted((raw_dataset / "sourcedata/sub-01/anat").glob("sub-01_mask_*.nii.gz"))
    assert len(masks) == 22
    visual = np.zeros(bold.shape[:3], bool)
    for path in masks:
        mask = nib.load(path)
        assert mask.shape == bold.shape[:3] and np.allclose(mask.affine, bold.affine)
        visual |= mask.get_fdata() > 0
    brain = bold.get_fdata()[..., 0] > 500
    assert (visual & brain).sum() / brain.sum() >= 0.6


def test_fmriprep_outputs(fmriprep_dataset):
    derivatives = fmriprep_dataset / "derivatives/fmriprep"
    description = json.loads((derivatives / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "fMRIPrep"
    for raw_file in _func_files(fmriprep_dataset, "_bold.nii.gz"):
        stem = raw_file.name.replace("_bold.nii.gz", "")
        folder = derivatives / raw_file.relative_to(fmriprep_dataset).parent
        preproc = nib.load(folder / f"{stem}_space-T1w_desc-preproc_bold.nii.gz")
        sidecar = json.loads((folder / f"{stem}_space-T1w_desc-preproc_bold.json").read_text())
        assert sidecar["RepetitionTime"] == TR and sidecar["SkullStripped"] is False
        mask = nib.load(folder / f"{stem}_space-T1w_desc-brain_mask.nii.gz")
        assert mask.shape == preproc.shape[:3]
        table = pd.read_csv(folder / f"{stem}_desc-confounds_timeseries.tsv", sep="\t", na_values="n/a")
        assert len(table) == preproc.shape[3]
        for column in ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z",
                       "framewise_displacement", "global_signal", "csf", "white_matter",
                       "a_comp_cor_00", "a_comp_cor_04", "cosine00"):
            assert column in table.columns
        # n/a only in the first row of the difference-based columns, as fMRIPrep writes them.
        differences = [column for column in table.columns if column in ("framewise_displacement", "dvars", "std_dvars")
                       or column.endswith(("_derivative1", "_derivative1_power2"))]
        assert len(differences) == 2 * 9 + 3
        assert table[differences].iloc[0].isna().all() and not table.iloc[1:].isna().any().any()
        assert not table.drop(columns=differences).isna().any().any()
        np.testing.assert_allclose(table["trans_x_derivative1"][1:], np.diff(table["trans_x"]), atol=1e-5)
        np.testing.assert_allclose(table["csf_power2"], table["csf"] ** 2, rtol=1e-4)  # written with 6 digits
        assert 0.5 < table["std_dvars"][1:].median() < 2  # standardised: about 1 without artefacts
        # Motion starts at zero: the first raw volume equals the motion-free one; later
        # ones differ by the movement recorded in the confounds.
        raw = nib.load(raw_file).get_fdata()
        clean = preproc.get_fdata()
        assert np.array_equal(raw[..., 0], clean[..., 0])
        assert table[["trans_x", "trans_y", "trans_z"]].abs().to_numpy()[1:].max() > 0
        assert not np.array_equal(raw[..., -1], clean[..., -1])


def test_raw_data_do_not_depend_on_fmriprep_flag(raw_dataset, fmriprep_dataset):
    # The raw dataset came through the CLI, the other through the API: same seed, same bytes.
    assert _tree_digest(raw_dataset, "sub-*/**/*") == _tree_digest(fmriprep_dataset, "sub-*/**/*")
    assert _tree_digest(raw_dataset, "stimuli/*") == _tree_digest(fmriprep_dataset, "stimuli/*")


def _block_samples(root, run_files):
    """Detrended, z-scored, 4-s-shifted block averages of each stimulus block."""
    samples, names = [], []
    for events_file in run_files:
        bold_file = (root / "derivatives/fmriprep" / events_file.relative_to(root).parent
                     / events_file.name.replace("_events.tsv", "_space-T1w_desc-preproc_bold.nii.gz"))
        data = nib.load(bold_file).get_fdata()
        series = data.reshape(-1, data.shape[3]).T
        time = np.arange(len(series))
        trend = np.column_stack([np.ones_like(time), time, time ** 2]).astype(float)
        series = series - trend @ np.linalg.lstsq(trend, series, rcond=None)[0]
        series = (series - series.mean(0)) / (series.std(0) + 1e-9)
        for event in _read_events(events_file).query("event_type in ['1', '2']").itertuples():
            start = int(float(event.onset) / TR) + 2
            samples.append(series[start:start + int(float(event.duration) / TR)].mean(0))
            names.append(event.stimulus_name)
    return np.array(samples), names


def _column_correlation(left, right):
    left = (left - left.mean(0)) / left.std(0)
    right = (right - right.mean(0)) / right.std(0)
    return (left * right).mean(0)


def test_visual_voxels_follow_the_encoding_model(fmriprep_dataset):
    preset = get_preset("tiny")
    stimulus_set, maps = build_stimuli(preset, SEED)
    simulation = build_subject(preset, stimulus_set, maps, SEED, 1)
    samples, names = _block_samples(
        fmriprep_dataset, _func_files(fmriprep_dataset, "task-perception_run-*_events.tsv"))
    drive = simulation.responses[[stimulus_set.row(name) for name in names]]
    visual = simulation.anatomy.visual_mask.ravel()
    other = simulation.anatomy.brain_mask.ravel() & ~visual
    visual_r = _column_correlation(samples[:, visual], drive)
    # Non-visual voxels compared with the drive of visual voxels: chance level.
    other_r = _column_correlation(samples[:, other], drive[:, np.arange(other.sum()) % drive.shape[1]])
    assert np.median(visual_r) > 0.3
    assert np.median(visual_r) > np.median(other_r) + 0.25


def test_seed_subjects_and_rewrite(tmp_path, raw_dataset):
    out = simulate_dataset(tmp_path / "again", n_subjects=2, seed=SEED + 1)
    runs = {label: nib.load(out / f"sub-{label}/ses-imagery01/func/"
                            f"sub-{label}_ses-imagery01_task-imagery_run-01_bold.nii.gz").get_fdata()
            for label in ("01", "02")}
    assert not np.array_equal(runs["01"], runs["02"])
    preset = get_preset("tiny")
    stimulus_set, maps = build_stimuli(preset, SEED + 1)
    models = [build_subject(preset, stimulus_set, maps, SEED + 1, subject).model for subject in (1, 2)]
    assert not np.allclose(models[0].gain[:10], models[1].gain[:10])
    other_seed = nib.load(_func_files(out, "_bold.nii.gz")[0]).get_fdata()
    assert not np.array_equal(other_seed, nib.load(_func_files(raw_dataset, "_bold.nii.gz")[0]).get_fdata())
    # A previous simulation is replaced, extra subjects included, and the same seed
    # gives the same bytes.
    simulate_dataset(out, n_subjects=1, seed=SEED)
    assert not (out / "sub-02").exists()
    assert _tree_digest(out, "sub-*/**/*") == _tree_digest(raw_dataset, "sub-*/**/*")


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(BidsReconError, match="not empty"):
        simulate_dataset(tmp_path)
    result = subprocess.run([sys.executable, "-m", "bidsrecon.simulate", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == EXIT_BAD_ARGUMENTS and "not empty" in result.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("arguments, message", [
    ({"preset": "huge"}, "Unknown simulation preset"),
    ({"n_subjects": 0}, "n_subjects"),
    ({"seed": -1}, "seed"),
    ({"noise": -1.0}, "noise"),
])
def test_rejects_bad_arguments(tmp_path, arguments, message):
    with pytest.raises(BidsReconError, match=message):
        simulate_dataset(tmp_path / "out", **arguments)
    assert not (tmp_path / "out").exists()


def test_preset_rejects_inconsistent_sizes():
    with pytest.raises(ValueError, match="x and z even"):
        replace(PRESETS["tiny"], volume_shape=(11, 12, 8))
    with pytest.raises(ValueError, match="at most 40 shapes"):
        replace(PRESETS["demo"], n_shapes=41)
