"""Finding runs and trials: specification sets, BIDS filters, session labels, run length, bad inputs."""
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bidsrecon.bids.collect import collect_runs, load_bids_filters, load_layout, read_trials
from bidsrecon.errors import BidsReconError
from bidsrecon.spec import load_spec, spec_from_dict

TR = 2.0
SPEC = {
    "name": "toy",
    "training": {"entities": {"session": r"train\d+"}, "events": "trial_type == 'image'",
                 "repeats": {"events": "repeat == 1", "action": "exclude"}},
    "tests": [{"name": "heldout", "entities": {"session": "test"}, "events": "trial_type == 'image'"}],
}


def events_table(names, start=4.0, block=4.0, repeat_after=None):
    """Image blocks back to back after a rest; a repeat of the block at ``repeat_after``."""
    rows = [{"onset": 0.0, "duration": start, "trial_type": "rest", "stimulus_name": "n/a", "repeat": 0}]
    onset = start
    for index, name in enumerate(names):
        rows.append({"onset": onset, "duration": block, "trial_type": "image", "stimulus_name": name, "repeat": 0})
        onset += block
        if index == repeat_after:
            rows.append({"onset": onset, "duration": block, "trial_type": "image", "stimulus_name": name, "repeat": 1})
            onset += block
    return pd.DataFrame(rows)


def write_run(root, session, task, run, events, n_volumes, shape=(2, 2, 2)):
    func = root / "sub-01" / f"ses-{session}" / "func"
    func.mkdir(parents=True, exist_ok=True)
    stem = f"sub-01_ses-{session}_task-{task}_run-{run}"
    data = np.random.default_rng(0).normal(100, 1, (*shape, n_volumes)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), func / f"{stem}_bold.nii.gz")
    if events is not None:
        events.to_csv(func / f"{stem}_events.tsv", sep="\t", index=False, na_rep="n/a")
    return func / f"{stem}_bold.nii.gz"


@pytest.fixture
def toy(tmp_path):
    """Two training sessions (one run each; run 01 of train01 has a repeat), one test session."""
    root = tmp_path / "toy"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "toy", "BIDSVersion": "1.10.0"}))
    (root / "task-view_bold.json").write_text(json.dumps({"RepetitionTime": TR, "TaskName": "view"}))
    write_run(root, "train01", "view", "01", events_table(["a", "b", "c"], repeat_after=0), 14)
    write_run(root, "train02", "view", "01", events_table(["d", "e"]), 8)
    write_run(root, "test", "view", "01", events_table(["a", "d"]), 8)
    return root


def collect(root, spec=SPEC, **options):
    return collect_runs(load_layout(root), "01", spec_from_dict(spec), **options)


def test_sets_trials_and_repeats(toy):
    runs = collect(toy)
    assert [(run.session, run.set_name) for run in runs] == [
        ("test", "heldout"), ("train01", "training"), ("train02", "training")]
    train01 = runs[1]
    assert (train01.run, train01.label, train01.tr, train01.n_volumes) == ("01", "ses-train01_task-view_run-01", TR, 14)
    # The repeat of 'a' is left out; the rest row is not a trial.
    assert list(train01.trials["stimulus"]) == ["a", "b", "c"]
    assert list(train01.trials["onset"]) == [4.0, 12.0, 16.0]
    assert not train01.trials["repeat"].any()


def test_repeats_can_be_kept_and_marked(toy):
    spec = json.loads(json.dumps(SPEC))
    spec["training"]["repeats"]["action"] = "include"
    train01 = [run for run in collect(toy, spec) if run.session == "train01"][0]
    assert list(train01.trials["stimulus"]) == ["a", "a", "b", "c"]
    assert list(train01.trials["repeat"]) == [False, True, False, False]


def test_session_labels_with_or_without_prefix(toy):
    runs = collect(toy, session_labels=["ses-train01", "test"])
    assert sorted(run.session for run in runs) == ["test", "train01"]
    with pytest.raises(BidsReconError, match="--session-label nope: no such session") as error:
        collect(toy, session_labels=["nope"])
    assert error.value.exit_code == 18


def test_bids_filter_file(toy, tmp_path):
    write_run(toy, "train02", "view", "02", events_table(["f"]), 6)
    path = tmp_path / "filter.json"
    path.write_text(json.dumps({"bold": {"run": ["01"]}, "t1w": {"session": "anat"}}))
    runs = collect(toy, bids_filters=load_bids_filters(path))
    assert sorted(run.label for run in runs) == [
        "ses-test_task-view_run-01", "ses-train01_task-view_run-01", "ses-train02_task-view_run-01"]
    # null: the entity must be absent (every run here has one), so nothing is left to train on.
    path.write_text(json.dumps({"bold": {"run": None}}))
    with pytest.raises(BidsReconError, match="has no training trials") as error:
        collect(toy, bids_filters=load_bids_filters(path))
    assert error.value.exit_code == 18 and "--bids-filter-file bold" in str(error.value)
    path.write_text(json.dumps({"bold": {"session": "*", "acquisition": None}}))
    assert len(collect(toy, bids_filters=load_bids_filters(path))) == 4


@pytest.mark.parametrize("content, fragment", [
    ({"blod": {}}, "unknown query 'blod'"),
    ({"bold": {"subject": "01"}}, "--participant-label"),
    ({"bold": {"session": {"a": 1}}}, "must be a label"),
    ({"bold": "x"}, "must be an object"),
    ([], "expected a JSON object"),
])
def test_bad_bids_filter_files(tmp_path, content, fragment):
    path = tmp_path / "filter.json"
    path.write_text(json.dumps(content))
    with pytest.raises(BidsReconError, match=fragment):
        load_bids_filters(path)


def test_unknown_entity_in_filter_file(toy, tmp_path):
    path = tmp_path / "filter.json"
    path.write_text(json.dumps({"bold": {"colour": "red"}}))
    with pytest.raises(BidsReconError, match="'colour' is not a recognized entity"):
        collect(toy, bids_filters=load_bids_filters(path))


def test_set_selecting_no_run_or_no_trial_exits_18(toy):
    spec = json.loads(json.dumps(SPEC))
    spec["tests"][0]["entities"]["session"] = "retest"
    with pytest.raises(BidsReconError) as error:
        collect(toy, spec)
    assert error.value.exit_code == 18
    assert "no heldout trials" in str(error.value) and "no run matches session ~ 'retest'" in str(error.value)

    spec = json.loads(json.dumps(SPEC))
    spec["tests"][0]["events"] = "trial_type == 'movie'"
    with pytest.raises(BidsReconError) as error:
        collect(toy, spec)
    assert error.value.exit_code == 18
    assert "its 1 run(s)" in str(error.value) and "trial_type == 'movie'" in str(error.value)


def test_optional_set_selecting_nothing_is_a_warning(toy, caplog):
    spec = json.loads(json.dumps(SPEC))
    spec["tests"].append({"name": "extra", "required": False, "entities": {"session": "none"}, "events": "x == 1"})
    with caplog.at_level(logging.WARNING, logger="bidsrecon"):
        runs = collect(toy, spec)
    assert {run.set_name for run in runs} == {"training", "heldout"}
    assert "no extra trials" in caplog.text and "skipped" in caplog.text


def test_no_test_trials_at_all(toy):
    spec = json.loads(json.dumps(SPEC))
    spec["tests"][0].update(required=False, entities={"session": "none"})
    with pytest.raises(BidsReconError, match="has no test trials") as error:
        collect(toy, spec)
    assert error.value.exit_code == 18


def test_a_trial_in_training_and_test_is_refused(toy):
    spec = json.loads(json.dumps(SPEC))
    spec["tests"][0]["entities"]["session"] = r"train01|test"
    with pytest.raises(BidsReconError, match="in training and in test set 'heldout'"):
        collect(toy, spec)
    # Exclusive events filters in a shared run are fine: the run serves both sets.
    spec["training"]["events"] = ["trial_type == 'image'", "onset < 12"]
    spec["tests"][0].update(entities={"session": "train01"}, events=["trial_type == 'image'", "onset >= 12"])
    shared = [run for run in collect(toy, spec) if run.session == "train01"]
    assert [(run.set_name, list(run.trials["stimulus"])) for run in shared] == [
        ("training", ["a"]), ("heldout", ["b", "c"])]


def test_run_shorter_than_its_events(toy):
    # train02's last block ends at 12 s, 16 s with the delay; 5 volumes are 10 s.
    write_run(toy, "train02", "view", "01", events_table(["d", "e"]), 5)
    with pytest.raises(BidsReconError) as error:
        collect(toy, delay=4.0)
    message = str(error.value)
    assert "sub-01_ses-train02_task-view_run-01_bold.nii.gz" in message
    assert "16 s of data" in message and "5 volumes x 2 s = 10 s" in message and "--cut-runs" in message


def test_cut_runs_keeps_the_trials_that_fit(toy, caplog):
    write_run(toy, "train02", "view", "01", events_table(["d", "e"]), 7)  # 14 s: 'd' (needs 12 s) fits
    with caplog.at_level(logging.WARNING, logger="bidsrecon"):
        runs = collect(toy, delay=4.0, cut_runs=True)
    train02 = [run for run in runs if run.session == "train02"][0]
    assert list(train02.trials["stimulus"]) == ["d"]
    assert "sub-01_ses-train02_task-view_run-01_bold.nii.gz: dropped 1 of 2 'training' trials" in caplog.text


def test_cut_runs_drops_a_run_left_without_trials(toy, caplog):
    # 'd' needs 12 s with the delay, 'e' 16 s; 5 volumes are 10 s.
    write_run(toy, "train02", "view", "01", events_table(["d", "e"]), 5)
    with caplog.at_level(logging.WARNING, logger="bidsrecon"):
        runs = collect(toy, delay=4.0, cut_runs=True)
    assert "train02" not in {run.session for run in runs}
    assert {run.session for run in runs} == {"train01", "test"}
    assert "dropped 2 of 2 'training' trials" in caplog.text


@pytest.mark.parametrize("change, fragment, code", [
    (lambda root, bold: bold.with_name(bold.name.replace("_bold.nii.gz", "_events.tsv")).unlink(),
     "its events file sub-01_ses-test_task-view_run-01_events.tsv is missing", 66),
    (lambda root, bold: (root / "task-view_bold.json").write_text(json.dumps({"TaskName": "view"})),
     "no RepetitionTime", 66),
    (lambda root, bold: (root / "task-view_bold.json").write_text(json.dumps({"RepetitionTime": "2s"})),
     "RepetitionTime must be a positive number", 64),
    (lambda root, bold: nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), bold),
     "must be 4-D", 64),
    (lambda root, bold: bold.write_bytes(b"not a nifti"), "cannot read it as NIfTI", 66),
])
def test_bad_run_inputs(toy, change, fragment, code):
    change(toy, toy / "sub-01/ses-test/func/sub-01_ses-test_task-view_run-01_bold.nii.gz")
    with pytest.raises(BidsReconError, match=fragment) as error:
        collect(toy)
    assert error.value.exit_code == code


def test_non_numeric_onsets_and_durations(tmp_path):
    trial_set = spec_from_dict(SPEC).training
    path = tmp_path / "events.tsv"
    events = events_table(["a", "b"]).astype(str)
    events.loc[2, "onset"] = "soon"
    events.to_csv(path, sep="\t", index=False)
    with pytest.raises(BidsReconError, match=r"'onset' must be a number in every trial row; got line 4 \('soon'\)"):
        read_trials(path, trial_set)
    events = events_table(["a", "b"]).astype(str)
    events.loc[1, "duration"] = "n/a"
    events.to_csv(path, sep="\t", index=False)
    with pytest.raises(BidsReconError, match=r"'duration' must be a positive number .* line 3 \('n/a'\)"):
        read_trials(path, trial_set)
    events = events_table(["a"]).drop(columns="trial_type")
    events.to_csv(path, sep="\t", index=False)
    with pytest.raises(BidsReconError, match="no column 'trial_type', which the 'training' set reads"):
        read_trials(path, trial_set)


def test_names_are_kept_as_written_without_a_map(tmp_path):
    path = tmp_path / "events.tsv"
    events_table(["0001", "2.50"]).to_csv(path, sep="\t", index=False)
    trials = read_trials(path, spec_from_dict(SPEC).training)
    assert list(trials["stimulus"]) == ["0001", "2.50"]


def test_stim_file_column_is_carried(tmp_path):
    path = tmp_path / "events.tsv"
    events = events_table(["a", "b"]).assign(stim_file=["n/a", "img/a.png", "img/b.jpg"])
    events.to_csv(path, sep="\t", index=False)
    trials = read_trials(path, spec_from_dict(SPEC).training)
    assert list(trials["stim_file"]) == ["img/a.png", "img/b.jpg"]


def test_ds001506_spec_on_the_simulated_dataset(tiny_dataset):
    runs = collect_runs(load_layout(tiny_dataset), "01", load_spec("ds001506"))
    by_set = {}
    for run in runs:
        by_set.setdefault(run.set_name, []).append(run)
    assert set(by_set) == {"training", "natural", "shapes", "letters", "imagery"}
    # The letter run with the stray 'on/a' in a rest row reads like the others.
    letters = by_set["letters"]
    assert len(letters) == 2 and all(len(run.trials) == 2 for run in letters)
    for run in by_set["training"] + by_set["natural"]:
        events = pd.read_csv(run.events, sep="\t", dtype=str)
        assert len(run.trials) == (events["event_type"] == "1").sum()
        assert not run.trials["repeat"].any()
    # Imagery: the imagery periods, mapped through category_index, fixation (16) dropped.
    for run in by_set["imagery"]:
        events = pd.read_csv(run.events, sep="\t", dtype=str)
        periods = events[events["event_type"] == "2"]
        assert len(run.trials) == (periods["category_index"] != "16").sum()
        assert set(run.trials["stimulus"]) <= {name.stem for name in (tiny_dataset / "stimuli").glob("*.png")}


def catalogue_without_pixels(preset):
    """The stimulus names of a preset, as the simulator names them, without drawing images."""
    from bidsrecon.simulate import images, stimuli

    natural = [f"n{1000000 + index // preset.training_images_per_category:08d}_{index + 1}"
               for index in range(preset.n_training_images)]
    tests = list(stimuli.LAB_TEST_IMAGES) + [f"n{3000000 + i:08d}_1" for i in range(preset.n_test_images - 10)]
    shapes = [stimuli.shape_name(c, s) for c in images.SHAPE_COLOURS for s in images.SHAPE_NAMES]
    letters = [stimuli.letter_name(letter) for letter in stimuli.LETTERS[:preset.n_letters]]
    entries = [(natural, "training"), (tests, "test"), (shapes[:preset.n_shapes], "shape"), (letters, "letter")]
    catalogue = tuple(stimuli.Stimulus(name, name, 1, 1, kind) for names, kind in entries for name in names)
    return stimuli.StimulusSet(catalogue, np.zeros((len(catalogue), 1, 1, 3), np.uint8))


def test_ds001506_preset_has_the_real_per_run_layout(tmp_path):
    from bidsrecon.simulate import design, stimuli
    from bidsrecon.simulate.presets import get_preset

    preset = get_preset("ds001506")
    stimulus_set = catalogue_without_pixels(preset)
    plans = design.plan_subject(preset, stimulus_set, stimuli.available_imagery_categories(stimulus_set),
                                stimuli.misleading_category_names(stimulus_set), np.random.default_rng(0))
    layout = {}
    for plan in plans:
        codes = plan.events["event_type"].astype(int)
        kind = plan.session.rstrip("0123456789")
        durations = set(plan.events.loc[codes > 0, "duration"].astype(float))
        layout.setdefault(kind, set()).add(
            (plan.n_volumes, int((codes == 1).sum()), int((codes == 2).sum()), int((codes == -3).sum()),
             tuple(sorted(durations))))
        layout[kind + " runs"] = layout.get(kind + " runs", 0) + 1
    # REFERENCE.md §3: volumes, blocks + one-back repeats (imagery: cue and imagery periods), rests.
    assert layout == {
        "perceptionNaturalImageTraining": {(239, 50, 5, 0, (8.0,))}, "perceptionNaturalImageTraining runs": 120,
        "perceptionNaturalImageTest": {(239, 50, 5, 0, (8.0,))}, "perceptionNaturalImageTest runs": 24,
        "perceptionArtificialImage": {(195, 40, 4, 0, (8.0,))}, "perceptionArtificialImage runs": 20,
        "perceptionLetterImage": {(151, 10, 1, 11, (12.0,))}, "perceptionLetterImage runs": 12,
        "imagery": {(227, 26, 26, 0, (1.0, 3.0, 4.0, 8.0))}, "imagery runs": 20,
    }
    assert len({plan.session for plan in plans if plan.session.startswith("perceptionNaturalImageTraining")}) == 15

    # The built-in specification selects from it what ds001506 holds per subject.
    root = tmp_path / "ds"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "ds", "BIDSVersion": "1.10.0"}))
    for task in ("perception", "imagery"):
        (root / f"task-{task}_bold.json").write_text(json.dumps({"RepetitionTime": TR, "TaskName": task}))
    for plan in plans:
        write_run(root, plan.session, plan.task, f"{plan.run:02d}", plan.events, plan.n_volumes, shape=(1, 1, 1))
    runs = collect_runs(load_layout(root), "01", load_spec("ds001506"))
    trials = {}
    for run in runs:
        trials[run.set_name] = trials.get(run.set_name, 0) + len(run.trials)
    # 1,200 images x 5; 50 x 24; 40 x 20; 10 x 12; 25 imagery targets (fixation dropped) x 20.
    assert trials == {"training": 6000, "natural": 1200, "shapes": 800, "letters": 120, "imagery": 500}


def test_participants_come_from_the_folders_without_participants_tsv(tmp_path):
    # The published ds001506 has no participants.tsv: subjects are its sub-* folders.
    from bidsrecon.bids.collect import collect_participants

    root = tmp_path / "ds001506"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.0.2", "Funding": ""}))
    for subject in ("03", "01", "02"):
        func = root / f"sub-{subject}" / "ses-a" / "func"
        func.mkdir(parents=True)
        nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4)),
                 func / f"sub-{subject}_ses-a_task-x_run-01_bold.nii.gz")
    assert not (root / "participants.tsv").exists()
    layout = load_layout(root)
    assert collect_participants(layout) == ["01", "02", "03"]
    assert collect_participants(layout, ["sub-02"]) == ["02"]
    with pytest.raises(BidsReconError, match="the dataset has: 01, 02, 03"):
        collect_participants(layout, ["04"])


# --- events by inheritance; multi-echo runs ---------------------------------------------------

def _multi_echo(toy, echoes=(1, 2, 3)):
    """The test run of ``toy`` as a multi-echo run: one bold per echo, the events without echo."""
    bold = toy / "sub-01/ses-test/func/sub-01_ses-test_task-view_run-01_bold.nii.gz"
    for echo in echoes:
        (bold.parent / bold.name.replace("_bold", f"_echo-{echo}_bold")).write_bytes(bold.read_bytes())
    bold.unlink()
    return bold.parent


def test_echoes_are_one_run_with_the_events_they_share(toy):
    func = _multi_echo(toy, (1, 2, 10))
    test_runs = [run for run in collect(toy) if run.set_name == "heldout"]
    assert len(test_runs) == 1
    run = test_runs[0]
    assert run.bold == str(func / "sub-01_ses-test_task-view_run-01_echo-1_bold.nii.gz")
    assert [Path(echo).name for echo in run.echoes] == [f"sub-01_ses-test_task-view_run-01_echo-{echo}_bold.nii.gz"
                                                         for echo in (1, 2, 10)]
    assert run.events == str(func / "sub-01_ses-test_task-view_run-01_events.tsv")
    assert list(run.trials["stimulus"]) == ["a", "d"]
    # Single-echo runs list no echoes.
    assert all(run.echoes == () for run in collect(toy) if run.set_name == "training")


def test_events_inherited_from_a_parent_folder(toy):
    # One events file for the task at the top of the dataset serves every run without its own.
    func = toy / "sub-01/ses-test/func"
    (func / "sub-01_ses-test_task-view_run-01_events.tsv").rename(toy / "task-view_events.tsv")
    test_run = next(run for run in collect(toy) if run.set_name == "heldout")
    assert test_run.events == str(toy / "task-view_events.tsv")
    # The nearest file wins over the inherited one; an events file of another run never applies.
    train = next(run for run in collect(toy) if run.session == "train02")
    assert train.events.endswith("ses-train02/func/sub-01_ses-train02_task-view_run-01_events.tsv")
    (toy / "task-view_events.tsv").rename(func / "sub-01_ses-test_task-view_run-02_events.tsv")
    with pytest.raises(BidsReconError, match="its events file sub-01_ses-test_task-view_run-01_events.tsv is missing"):
        collect(toy)


def test_a_multi_echo_raw_run_is_refused_without_fmriprep(toy, tmp_path):
    from bidsrecon.cli import parse_args
    from bidsrecon.participant_plan import _run_inputs

    _multi_echo(toy)
    run = next(run for run in collect(toy) if run.set_name == "heldout")
    config = parse_args([str(toy), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work")])
    with pytest.raises(BidsReconError) as caught:
        _run_inputs(load_layout(toy), run, config, None, None)
    assert caught.value.exit_code == 64
    assert str(caught.value) == (
        f"{run.bold}: a multi-echo run (3 echoes); bidsrecon realigns raw runs one echo at a time and does not "
        "combine echoes: preprocess the dataset with fMRIPrep and give its output with --derivatives (its optimally "
        "combined run is used)")


def test_censored_volumes_drop_the_trials_whose_window_holds_them(toy, caplog):
    from bidsrecon.bids.collect import drop_censored_trials

    run = next(run for run in collect(toy) if run.session == "train01")
    # Trials at 4, 12 and 16 s for 4 s; with the 4-s delay their windows are 8-12, 16-20 and 20-24 s.
    # Volume 4 covers 8-10 s; volume 6 covers 12-14 s, in no window; volume 9 covers 18-20 s.
    with caplog.at_level(logging.WARNING, logger="bidsrecon"):
        kept = drop_censored_trials(run, [4, 6, 9], 4.0, "--confounds-strategy scrubbing")
    assert list(kept.trials["stimulus"]) == ["c"] and list(run.trials["stimulus"]) == ["a", "b", "c"]
    assert ("sub-01_ses-train01_task-view_run-01_bold.nii.gz: dropped 2 of 3 'training' trials whose window "
            "(onset + 4 s delay) holds a volume that --confounds-strategy scrubbing censors (3 censored volume(s), "
            "0-based: 4, 6, 9)") in caplog.text
    # A volume that only touches a window's edge is not in it.
    assert len(drop_censored_trials(run, [12], 4.0, "x").trials) == 3  # 24-26 s, after the last window
    assert drop_censored_trials(run, [], 4.0, "x") is run
