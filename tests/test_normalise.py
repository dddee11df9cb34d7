"""Normalisation to the run's rest (the paper's) against the z-score over the run, and its checks."""
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from checks import without_console

from bidsrecon.bids.collect import load_layout
from bidsrecon.cli import main, parse_args
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.paper import CLIP_SD, DELAY_SECONDS, DISCARD_SECONDS
from bidsrecon.participant_plan import plan_participant
from bidsrecon.preproc import baseline_volumes, block_samples, clean_run, normalise_run, reduce_outliers
from bidsrecon.spec import SPECS, default_normalisation, load_spec, resolve_normalisation, spec_from_dict

ROOT = Path(__file__).resolve().parent.parent
TR = 2.0
SPEC_DS001506 = json.loads((ROOT / "bidsrecon" / "specs" / "ds001506.json").read_text())


# --- the numbers -------------------------------------------------------------------------------------

def test_baseline_volumes_are_the_whole_volumes_inside_the_rest_after_the_discarded_ones():
    # ds001506: the opening 32-s rest at TR 2 s is volumes 0-15; the first 8 s (4 volumes) are discarded.
    assert baseline_volumes([0.0], [32.0], 239, TR, n_discard=4).tolist() == list(range(4, 16))
    # A volume only partly inside the rest (30-32 s against a rest ending at 31 s) is not rest.
    assert baseline_volumes([0.0], [31.0], 239, TR).tolist() == list(range(15))
    # Several rest events (letter runs' 12-s rests) add up; none inside gives nothing.
    assert baseline_volumes([0.0, 44.0], [32.0, 12.0], 100, TR, n_discard=4).tolist() == [*range(4, 16), 22, 23, 24, 25, 26, 27]
    assert baseline_volumes([0.0], [8.0], 100, TR, n_discard=4).size == 0


def test_percent_change_from_the_rest_of_a_hand_made_run():
    """Rest at 500 (and 2000), blocks 15 (60) units above it, a drift: the rest comes out at 0 and the
    blocks at 100 * 15 / the rest level, the drift removed.

    The block pattern is symmetric about the middle of the kept volumes (4-39), so that the linear
    trend takes nothing from it and the expected values are exact. The drift is regressed out
    around the run's middle (volume 21.5), where the rest level is 500 + 21.5 * drift.
    """
    n_volumes, n_discard = 40, 4
    block = np.zeros(n_volumes)
    block[12:16] = block[28:32] = 1.0
    level, response, drift = np.array([500.0, 2000.0]), np.array([15.0, 60.0]), np.array([0.5, -3.0])
    data = level + block[:, None] * response + drift * np.arange(n_volumes)[:, None]
    rest = np.r_[4:10, 34:40]
    out = normalise_run(data, rest, n_discard=n_discard, clip_sd=None)
    assert out.dtype == np.float32 and np.isnan(out[:n_discard]).all()
    expected = 100 * block[:, None] * response / (level + 21.5 * drift)  # 2.94 % and 3.10 %
    np.testing.assert_allclose(out[n_discard:], expected[n_discard:], atol=1e-4)
    # Without the drift, exactly 3 %; and through the block samples, 4 s late (blocks at 16 s and 48 s).
    out = normalise_run(level + block[:, None] * response, rest, n_discard=n_discard, clip_sd=None)
    np.testing.assert_allclose(out[n_discard:], 3.0 * block[n_discard:, None] * [1, 1], atol=1e-4)
    samples = block_samples(out, TR, np.array([20.0, 52.0]), np.array([8.0, 8.0]), 4.0)
    np.testing.assert_allclose(samples, 3.0, atol=1e-4)
    # Against a z-score over the run, which puts the rest below 0 and the blocks at no fixed value.
    zscored = clean_run(level + block[:, None] * response, n_discard=n_discard, clip_sd=None)
    assert zscored[rest].mean() < -0.3


def test_the_baseline_is_the_rest_mean_not_the_run_mean():
    # Twice the stimulation leaves the blocks at 3 % and the rest at 0; a z-score moves both.
    # (Patterns symmetric about volume 31.5, the middle of the kept volumes: the trend takes nothing.)
    rng = np.random.default_rng(0)
    n_volumes = 60
    base = np.zeros(n_volumes)
    base[20:24] = base[40:44] = 3.0
    more = base.copy()
    more[24:28] = more[36:40] = 3.0
    rest = np.r_[4:14, 50:60]
    zscored = []
    for pattern in (base, more):
        data = 800 * (1 + pattern[:, None] / 100) + rng.normal(0, 0.01, (n_volumes, 3))
        out = normalise_run(data, rest, n_discard=4, clip_sd=None)
        np.testing.assert_allclose(out[20:24], 3.0, atol=0.01)
        np.testing.assert_allclose(out[rest], 0.0, atol=0.01)
        zscored.append(clean_run(data, n_discard=4, clip_sd=None)[rest].mean())
    assert zscored[1] < zscored[0] - 0.2


def test_outlier_reduction_clips_at_3_sd_in_passes():
    rng = np.random.default_rng(1)
    column = rng.normal(0, 1, 200)
    column[50] = 40.0  # a spike that inflates the first pass's SD
    once = reduce_outliers(column[:, None].copy(), 3.0, n_passes=1)[:, 0]
    bound = column.mean() + 3 * column.std(ddof=1)
    assert once[50] == pytest.approx(bound)
    untouched = np.abs(column - column.mean()) < 3 * column.std(ddof=1)
    np.testing.assert_array_equal(once[untouched], column[untouched])  # values within the bound are kept
    ten = reduce_outliers(column[:, None].copy(), 3.0)[:, 0]  # the lab's 10 passes bring the spike in further
    assert ten[50] < once[50] - 1.0
    assert ten.max() == pytest.approx(ten.mean() + 3 * ten.std(ddof=1), rel=0.02)  # settled: at its own bound
    assert (np.abs(ten - ten.mean()) <= 3 * ten.std(ddof=1) * 1.001).all()
    # normalise_run reduces the outliers of each voxel over the kept volumes, the discarded ones aside.
    data = np.column_stack([1000 + 10 * column, 1000 + 10 * rng.normal(0, 1, 200)])
    out = normalise_run(data, np.arange(4, 30), n_discard=4)
    assert out[50, 0] < 10.0 and out[50, 0] == pytest.approx(np.nanmax(out[:, 0]))
    kept = out[4:]
    for voxel in range(2):
        assert np.abs(kept[:, voxel] - kept[:, voxel].mean()).max() <= 3 * kept[:, voxel].std(ddof=1) * 1.02


def test_unusable_voxels_become_zero_and_too_short_a_rest_is_refused():
    rng = np.random.default_rng(2)
    data = 1000 + rng.normal(0, 5, (30, 5))
    data[7, 1] = np.nan  # NaN
    data[:, 2] = 1000.0  # constant
    data[:, 3] -= 2000.0  # a negative level: a percent of it means nothing
    data[:, 4] = rng.normal(0, 5, 30)  # a level of 0 (already centred data)
    out = normalise_run(data, np.arange(4, 12), n_discard=4)
    assert np.isfinite(out[4:]).all()
    assert (out[4:, 1:] == 0).all() and (out[4:, 0] != 0).any()
    with pytest.raises(ValueError, match="at least 2"):
        normalise_run(data, baseline_volumes([0.0], [10.0], 30, TR, n_discard=4), n_discard=4)
    with pytest.raises(ValueError, match="kept volumes"):
        normalise_run(data, np.arange(0, 10), n_discard=4)


# --- the effect: letter runs against training runs ------------------------------------------------------

def _ds001506_like_run(block, rest_between, n_blocks, rng, n_voxels=200):
    """32-s opening rest, ``n_blocks`` blocks (each followed by ``rest_between`` s of rest), 6-s final rest.

    Each voxel responds to the blocks' images with amplitudes cycling 0-4 %, 4 s late, plus noise.
    """
    onsets = 32.0 + np.arange(n_blocks) * (block + rest_between)
    n_volumes = int((onsets[-1] + block + rest_between + 6.0) / TR)
    amplitudes = np.arange(n_blocks) % 5 * 1.0
    times = np.arange(n_volumes) * TR
    percent = np.zeros(n_volumes)
    for onset, amplitude in zip(onsets, amplitudes):
        percent[(times >= onset + 4.0) & (times < onset + block + 4.0)] = amplitude
    data = 1000 * (1 + percent[:, None] / 100) + rng.normal(0, 5, (n_volumes, n_voxels))
    return data, onsets, np.full(n_blocks, float(block)), amplitudes


def _offset(normalised, onsets, durations, amplitudes):
    """The samples' value for a block with no response, in units of 1 % of response."""
    samples = block_samples(normalised, TR, onsets, durations, 4.0).mean(axis=1)
    gain, offset = np.polyfit(amplitudes, samples, 1)
    return offset / gain


def test_letter_and_training_runs_share_their_offset_under_rest_but_not_under_zscore():
    """The bug: a z-score over the run shifts letter runs (half rest) against training runs (no rest).

    Same voxels, same responses, ds001506's two designs (training: 55 back-to-back 8-s blocks,
    239 volumes; letters: 11 12-s blocks each followed by 12 s of rest, 151 volumes).
    """
    rng = np.random.default_rng(3)
    training = _ds001506_like_run(8.0, 0.0, 55, rng)
    letters = _ds001506_like_run(12.0, 12.0, 11, rng)
    offsets = {}
    for name, (data, onsets, durations, amplitudes) in (("training", training), ("letters", letters)):
        rest = baseline_volumes([0.0], [32.0], len(data), TR, n_discard=4)
        offsets[name, "rest"] = _offset(normalise_run(data, rest, n_discard=4), onsets, durations, amplitudes)
        offsets[name, "zscore"] = _offset(clean_run(data, n_discard=4), onsets, durations, amplitudes)
    shift_zscore = offsets["letters", "zscore"] - offsets["training", "zscore"]
    shift_rest = offsets["letters", "rest"] - offsets["training", "rest"]
    # z-score: a no-response block sits at minus the run's mean response, which differs by ~1 %.
    assert shift_zscore > 0.8
    # rest: both near the rest level; what is left is the linear trend's share of the blocks.
    assert abs(shift_rest) < 0.3 * shift_zscore
    assert abs(offsets["letters", "rest"]) < 0.5 and abs(offsets["training", "rest"]) < 0.6


# --- the specification, the command line and the plan --------------------------------------------------

def test_the_specification_names_the_rest_and_decides_the_default():
    spec = SPECS["ds001506"]
    assert [str(condition) for condition in spec.baseline] == ["event_type in [-1, -3]"]
    assert default_normalisation(spec) == "rest" and resolve_normalisation(None, spec) == "rest"
    assert resolve_normalisation("zscore", spec) == "zscore"
    without = spec_from_dict({key: value for key, value in SPEC_DS001506.items() if key != "baseline"})
    assert without.baseline == () and resolve_normalisation(None, without) == "zscore"
    with pytest.raises(BidsReconError, match="no \"baseline\"") as error:
        resolve_normalisation("rest", without)
    assert error.value.exit_code == EXIT_BAD_ARGUMENTS and "--normalise zscore" in str(error.value)
    with pytest.raises(BidsReconError, match="unknown key 'event_type' in baseline"):
        spec_from_dict({**SPEC_DS001506, "baseline": {"event_type": [-1]}})


def test_normalise_option_spellings(tmp_path):
    common = [str(tmp_path / "bids"), str(tmp_path / "out"), "participant"]
    assert parse_args(common).normalise is None  # decided by the specification
    assert parse_args([*common, "--normalise", "zscore"]).normalise == "zscore"
    assert parse_args([*common, "--normalize", "rest"]).normalise == "rest"
    with pytest.raises(SystemExit) as error:
        parse_args([*common, "--normalise", "percent"])
    assert error.value.code == EXIT_BAD_ARGUMENTS


def _plan(dataset, tmp_path, *options, spec="ds001506"):
    config = parse_args([str(dataset), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                         "--skip-bids-validation", "--spec", str(spec), *options])
    return plan_participant(load_layout(dataset), "01", load_spec(config.spec), config)


def test_the_plan_writes_each_runs_rest_for_the_rest_normalisation(tiny_dataset, tmp_path):
    """ds001506's rest: the opening 32 s of every run, and in letter runs also the 12-s rests between
    the blocks (event_type -3), which the opening rest alone would leave out."""
    plan = _plan(tiny_dataset, tmp_path)
    assert plan.normalise == "rest" and len(plan.baseline_files) == len(plan.trials_files) == len(plan.runs)
    letter_runs = 0
    for path, run in zip(plan.baseline_files, plan.runs):
        table = pd.read_csv(path, sep="\t")
        assert table.iloc[0].to_dict() == {"onset": 0.0, "duration": 32.0}
        if "perceptionLetterImage" not in str(run.bold):
            assert len(table) == 1
            continue
        letter_runs += 1
        events = pd.read_csv(str(run.bold).replace("_bold.nii.gz", "_events.tsv"), sep="\t")
        between = events[events["event_type"] == -3]
        assert len(between) >= 2 and (between["duration"] == 12.0).all()
        assert table.iloc[1:].to_dict("list") == {"onset": between["onset"].tolist(), "duration": [12.0] * len(between)}
    assert letter_runs > 0
    plan = _plan(tiny_dataset, tmp_path, "--normalise", "zscore")
    assert plan.normalise == "zscore" and plan.baseline_files == []


def test_a_rest_lost_to_the_discarded_seconds_is_refused_before_any_work(tiny_dataset, tmp_path):
    with pytest.raises(BidsReconError) as error:
        _plan(tiny_dataset, tmp_path, "--discard-seconds", "32")
    message = str(error.value)
    assert error.value.exit_code == EXIT_BAD_ARGUMENTS
    assert "_events.tsv" in message and "--discard-seconds" in message and "--normalise zscore" in message
    assert not (tmp_path / "work" / "sub-01" / "trials").exists()


def test_a_run_without_the_named_rest_is_refused_naming_its_file(tiny_dataset, tmp_path, capsys):
    """Through the command line: only letter runs have the 12-s rests (event_type -3)."""
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**SPEC_DS001506, "baseline": {"events": "event_type == -3"}}))
    code = main([str(tiny_dataset), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                 "--spec", str(spec), "-w", str(tmp_path / "work"), "--encoder", "efficientnet-lite0-random"])
    stderr = without_console(capsys.readouterr().err)
    assert code == EXIT_INPUT_MISSING, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bidsrecon: error: ")
    assert "perceptionNaturalImageTraining" in lines[0] and "_events.tsv" in lines[0]
    assert "event_type == -3" in lines[0] and "--normalise zscore" in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))
    # The z-score needs no rest: the same specification gets past this check.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = _plan(tiny_dataset, tmp_path, "--normalise", "zscore", spec=spec)
    assert plan.normalise == "zscore"


# --- the RunSamples node --------------------------------------------------------------------------------

def _write_run(folder, series, onsets, durations, rest):
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    grid = (2, 5, 5)
    nib.save(nib.Nifti1Image(np.asarray(series, dtype=np.float32).T.reshape(grid + (len(series),)), np.eye(4)),
             folder / "bold.nii.gz")
    nib.save(nib.Nifti1Image(np.ones(grid, dtype=np.uint8), np.eye(4)), folder / "mask.nii.gz")
    pd.DataFrame({"onset": onsets, "duration": durations}).to_csv(folder / "trials.tsv", sep="\t", index=False)
    pd.DataFrame({"onset": [r[0] for r in rest], "duration": [r[1] for r in rest]}).to_csv(
        folder / "baseline.tsv", sep="\t", index=False)
    return {"bold_file": str(folder / "bold.nii.gz"), "mask_file": str(folder / "mask.nii.gz"),
            "trials_file": str(folder / "trials.tsv"), "tr": TR, "discard_seconds": DISCARD_SECONDS,
            "delay_seconds": DELAY_SECONDS, "clip_sd": CLIP_SD, "method": "block"}


def test_run_samples_normalises_to_the_rest_file(tmp_path, monkeypatch):
    from bidsrecon.interfaces.samples import RunSamples

    monkeypatch.chdir(tmp_path)
    data, onsets, durations, _ = _ds001506_like_run(8.0, 0.0, 10, np.random.default_rng(4), n_voxels=50)
    data[:, 7] -= data[:, 7].mean()  # a voxel already centred, level 0: zeroed, with a warning
    files = _write_run(tmp_path / "run", data, onsets, durations, [(0.0, 32.0)])
    with pytest.warns(RuntimeWarning, match="1 of 50 mask voxels .* no positive rest level"):
        result = RunSamples(**files, normalise="rest", baseline_file=str(tmp_path / "run" / "baseline.tsv")).run()
    samples = np.load(result.outputs.out_samples)
    expected = block_samples(normalise_run(data, np.arange(4, 16), n_discard=4), TR, onsets, durations, 4.0)
    np.testing.assert_allclose(samples, expected, atol=1e-4)
    assert (samples[:, 7] == 0).all() and result.outputs.n_zeroed_voxels == 1
    zscored = np.load(RunSamples(**files, normalise="zscore").run().outputs.out_samples)
    assert not np.allclose(zscored, samples, atol=0.1)
    with pytest.raises(BidsReconError, match="needs baseline_file"):
        RunSamples(**files, normalise="rest").run()
    short = _write_run(tmp_path / "short", data, onsets, durations, [(0.0, 8.0)])
    with pytest.raises(BidsReconError, match=r"short/baseline.tsv .*0 whole volume\(s\)"):
        RunSamples(**short, normalise="rest", baseline_file=str(tmp_path / "short" / "baseline.tsv")).run()
