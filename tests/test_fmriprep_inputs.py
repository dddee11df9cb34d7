"""fMRIPrep derivatives as input: --derivatives, --space, --confounds."""
import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bidsrecon.bids.confounds import resolve_confound_columns, select_confounds, summarise_columns
from bidsrecon.bids.fmriprep import (
    DerivativeDataset,
    OutputSpace,
    find_fmriprep_run,
    index_derivatives,
    parse_derivatives,
    parse_space,
    raw_run_entities,
)
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.preproc.motion import MOTION_COLUMNS

TRAINING_RUN = {"subject": "01", "session": "perceptionNaturalImageTraining01", "task": "perception", "run": "01"}
TRAINING_LABEL = "sub-01_ses-perceptionNaturalImageTraining01_task-perception_run-01"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The tiny simulated dataset with its fMRIPrep-style derivatives; tests must not modify it."""
    from bidsrecon.simulate import simulate_dataset

    return simulate_dataset(tmp_path_factory.mktemp("fmriprep") / "bids", preset="tiny", fmriprep=True)


@pytest.fixture(scope="module")
def fmriprep_dir(dataset):
    return dataset / "derivatives" / "fmriprep"


@pytest.fixture(scope="module")
def indexed(fmriprep_dir):
    return index_derivatives(parse_derivatives([f"fmriprep={fmriprep_dir}"]))


@pytest.fixture
def fmriprep_copy(fmriprep_dir, tmp_path):
    """A copy of the derivatives that a test may break."""
    return Path(shutil.copytree(fmriprep_dir, tmp_path / "fmriprep"))


def _description(root, name="fMRIPrep"):
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": "test", "BIDSVersion": "1.10.0", "DatasetType": "derivative", "GeneratedBy": [{"Name": name}]}))
    return root


def _write_run(root, stem, space_entities, n_volumes=10, confounds_suffix="timeseries", table=None):
    """Bold, mask (one per space entity string) and confounds of one run in a hand-made derivative folder."""
    func = root / "sub-02" / "func"
    func.mkdir(parents=True, exist_ok=True)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for space in space_entities:
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4, n_volumes), np.int16), affine),
                 func / f"{stem}_{space}_desc-preproc_bold.nii.gz")
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), affine), func / f"{stem}_{space}_desc-brain_mask.nii.gz")
    if table is None:
        table = pd.DataFrame({name: np.linspace(0, 1, n_volumes) for name in MOTION_COLUMNS})
    table.to_csv(func / f"{stem}_desc-confounds_{confounds_suffix}.tsv", sep="\t", index=False, na_rep="n/a")
    return func


# --- --derivatives and --space ---------------------------------------------------------------

def test_parse_derivatives_named_bare_and_relative(fmriprep_dir, tmp_path, monkeypatch):
    other = _description(tmp_path / "other", name="MyPipeline")
    monkeypatch.chdir(tmp_path)
    datasets = parse_derivatives([f"prep={fmriprep_dir}", str(fmriprep_dir), "other"])
    assert datasets == [
        DerivativeDataset("prep", fmriprep_dir.resolve()),
        DerivativeDataset("fmriprep", fmriprep_dir.resolve()),  # named after GeneratedBy
        DerivativeDataset("mypipeline", other.resolve()),
    ]


@pytest.mark.parametrize("value", ["=/data/fmriprep", "fmriprep=", " = "])
def test_malformed_derivatives_value(value):
    with pytest.raises(BidsReconError, match="expected NAME=PATH") as caught:
        parse_derivatives([value])
    assert caught.value.exit_code == EXIT_BAD_ARGUMENTS


def test_derivatives_folder_must_be_a_dataset(tmp_path):
    (tmp_path / "plain").mkdir()
    expected = r"plain is not a BIDS derivative dataset \(it has no dataset_description"
    with pytest.raises(BidsReconError, match=expected) as caught:
        parse_derivatives([f"fmriprep={tmp_path / 'plain'}"])
    assert caught.value.exit_code == EXIT_INPUT_MISSING
    with pytest.raises(BidsReconError, match="missing.*no such folder") as caught:
        parse_derivatives([str(tmp_path / "missing")])
    assert caught.value.exit_code == EXIT_INPUT_MISSING


def test_a_name_given_twice_is_refused(fmriprep_dir):
    with pytest.raises(BidsReconError, match="fmriprep") as caught:
        parse_derivatives([str(fmriprep_dir), f"fmriprep={fmriprep_dir}"])
    assert caught.value.exit_code == EXIT_BAD_ARGUMENTS


def test_parse_space():
    assert parse_space() == OutputSpace("T1w")
    assert parse_space("MNI152NLin2009cAsym") == OutputSpace("MNI152NLin2009cAsym")
    space = parse_space("MNI152NLin2009cAsym:res-2")
    assert space == OutputSpace("MNI152NLin2009cAsym", "2") and str(space) == "MNI152NLin2009cAsym:res-2"
    # fMRIPrep's cohorts, the modifiers in either order.
    space = parse_space("MNIPediatricAsym:cohort-1:res-2")
    assert space == OutputSpace("MNIPediatricAsym", "2", "1") == parse_space("MNIPediatricAsym:res-2:cohort-1")
    assert str(space) == "MNIPediatricAsym:cohort-1:res-2"
    assert parse_space("MNIInfant:cohort-3") == OutputSpace("MNIInfant", None, "3")
    for bad in ("", "MNI152NLin2009cAsym:2", "T1w:res-", "T1w:cohort-", "T1w_res-2", "MNI:res-2:x",
                "MNI:res-1:res-2", "MNI:cohort-1:cohort-2", "MNI:den-91k"):
        with pytest.raises(BidsReconError, match=r"expected SPACE, SPACE:res-N or SPACE:cohort-N:res-N") as caught:
            parse_space(bad)
        assert caught.value.exit_code == EXIT_BAD_ARGUMENTS


# --- finding a run's files ---------------------------------------------------------------------

def test_every_simulated_run_is_found(dataset, fmriprep_dir, indexed):
    raw_runs = sorted(dataset.glob("sub-*/ses-*/func/*_bold.nii.gz"))
    assert len(raw_runs) == 11
    for raw in raw_runs:
        found = find_fmriprep_run(indexed, raw_run_entities(raw))
        stem = raw.name.removesuffix("_bold.nii.gz")
        assert Path(found.bold).name == f"{stem}_space-T1w_desc-preproc_bold.nii.gz"
        assert Path(found.mask).name == f"{stem}_space-T1w_desc-brain_mask.nii.gz"
        assert Path(found.confounds).name == f"{stem}_desc-confounds_timeseries.tsv"
        assert found.confound_columns == MOTION_COLUMNS
        assert found.n_volumes == nib.load(raw).shape[3]
        assert found.space == "T1w" and found.derivatives == str(fmriprep_dir.resolve())
        assert nib.load(found.mask).shape == nib.load(found.bold).shape[:3]


def test_run_entities_as_strings_or_numbers(indexed):
    assert raw_run_entities(f"/x/sub-01/func/{TRAINING_LABEL}_bold.nii.gz") == TRAINING_RUN
    by_string = find_fmriprep_run(indexed, TRAINING_RUN)
    assert find_fmriprep_run(indexed, {**TRAINING_RUN, "run": 1}) == by_string
    # Empty values, as collect.Run holds for absent entities, mean "absent".
    assert find_fmriprep_run(indexed, {**TRAINING_RUN, "acquisition": ""}) == by_string


@pytest.mark.parametrize("kind, removed, pattern", [
    ("brain mask", "space-T1w_desc-brain_mask.nii.gz", "space-T1w_desc-brain_mask{.nii.gz,.nii}"),
    ("confounds", "desc-confounds_timeseries.tsv", "desc-confounds_{timeseries,regressors}.tsv"),
])
def test_missing_derivative_file_names_the_run_and_the_pattern(fmriprep_copy, kind, removed, pattern):
    func = fmriprep_copy / "sub-01/ses-perceptionNaturalImageTraining01/func"
    (func / f"{TRAINING_LABEL}_{removed}").unlink()
    indexed = index_derivatives(parse_derivatives([str(fmriprep_copy)]))
    with pytest.raises(BidsReconError) as caught:
        find_fmriprep_run(indexed, TRAINING_RUN)
    message = str(caught.value)
    assert caught.value.exit_code == EXIT_INPUT_MISSING
    assert f"run {TRAINING_LABEL}" in message and f"but not its {kind}" in message
    assert message.endswith(
        f"looked for sub-01/ses-perceptionNaturalImageTraining01/func/{TRAINING_LABEL}_{pattern}")


def test_missing_bold_in_the_space_names_the_pattern(indexed, fmriprep_dir):
    with pytest.raises(BidsReconError) as caught:
        find_fmriprep_run(indexed, TRAINING_RUN, space="MNI152NLin2009cAsym:res-2")
    assert caught.value.exit_code == EXIT_INPUT_MISSING
    assert str(caught.value) == (
        f"no preprocessed bold in space MNI152NLin2009cAsym:res-2 for run {TRAINING_LABEL}: looked for "
        f"sub-01/ses-perceptionNaturalImageTraining01/func/{TRAINING_LABEL}_space-MNI152NLin2009cAsym_res-2_"
        f"desc-preproc_bold{{.nii.gz,.nii}} in {fmriprep_dir.resolve()}")
    with pytest.raises(BidsReconError, match=r"run-07_space-T1w\[_res-\*\]_desc-preproc_bold"):
        find_fmriprep_run(indexed, {**TRAINING_RUN, "run": "07"})


def test_resolutions_of_a_standard_space(tmp_path):
    root = _description(tmp_path / "fmriprep")
    _write_run(root, "sub-02_task-a", ["space-MNI152NLin2009cAsym_res-1", "space-MNI152NLin2009cAsym_res-2",
                                       "space-T1w"])
    indexed = index_derivatives(parse_derivatives([str(root)]))
    run = {"subject": "02", "task": "a"}
    with pytest.raises(BidsReconError, match=r"res-1_desc-preproc_bold.nii.gz, .*res-2_desc-preproc_bold.nii.gz; "
                                             r"choose one .*--space SPACE:res-N") as caught:
        find_fmriprep_run(indexed, run, space="MNI152NLin2009cAsym")
    assert caught.value.exit_code == EXIT_BAD_ARGUMENTS
    found = find_fmriprep_run(indexed, run, space=parse_space("MNI152NLin2009cAsym:res-2"))
    assert found.bold.endswith("sub-02_task-a_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.nii.gz")
    assert found.mask.endswith("sub-02_task-a_space-MNI152NLin2009cAsym_res-2_desc-brain_mask.nii.gz")
    assert found.space == "MNI152NLin2009cAsym:res-2"
    assert find_fmriprep_run(indexed, run).bold.endswith("sub-02_task-a_space-T1w_desc-preproc_bold.nii.gz")


def test_entities_the_run_lacks_must_be_absent(tmp_path):
    root = _description(tmp_path / "fmriprep")
    _write_run(root, "sub-02_task-a_acq-fast", ["space-T1w"])
    _write_run(root, "sub-02_task-a", ["space-T1w"])
    indexed = index_derivatives(parse_derivatives([str(root)]))
    assert "acq-" not in find_fmriprep_run(indexed, {"subject": "02", "task": "a"}).bold
    found = find_fmriprep_run(indexed, {"subject": "02", "task": "a", "acquisition": "fast"})
    assert Path(found.confounds).name == "sub-02_task-a_acq-fast_desc-confounds_timeseries.tsv"


def test_folders_are_searched_in_order(tmp_path, fmriprep_dir):
    own = _description(tmp_path / "own")
    _write_run(own, "sub-02_task-a", ["space-T1w"])
    indexed = index_derivatives(parse_derivatives([f"own={own}", f"fmriprep={fmriprep_dir}"]))
    # Not in the first folder: taken from the second, all three files from it.
    found = find_fmriprep_run(indexed, TRAINING_RUN)
    assert found.derivatives == str(fmriprep_dir.resolve())
    assert all(path.startswith(str(fmriprep_dir.resolve())) for path in (found.bold, found.mask, found.confounds))
    assert find_fmriprep_run(indexed, {"subject": "02", "task": "a"}).derivatives == str(own.resolve())


def test_older_fmriprep_confounds_name_is_accepted(tmp_path):
    root = _description(tmp_path / "fmriprep")
    _write_run(root, "sub-02_task-a", ["space-T1w"], confounds_suffix="regressors")
    found = find_fmriprep_run(index_derivatives(parse_derivatives([str(root)])), {"subject": "02", "task": "a"})
    assert found.confounds.endswith("sub-02_task-a_desc-confounds_regressors.tsv")


def test_confounds_rows_must_match_the_volumes(tmp_path):
    root = _description(tmp_path / "fmriprep")
    table = pd.DataFrame({name: np.zeros(9) for name in MOTION_COLUMNS})
    _write_run(root, "sub-02_task-a", ["space-T1w"], n_volumes=10, table=table)
    with pytest.raises(BidsReconError, match="has 9 rows but .* has 10 volumes"):
        find_fmriprep_run(index_derivatives(parse_derivatives([str(root)])), {"subject": "02", "task": "a"})


def test_a_3d_preprocessed_bold_is_refused(tmp_path):
    root = _description(tmp_path / "fmriprep")
    func = _write_run(root, "sub-02_task-a", ["space-T1w"])
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.int16), np.eye(4)),
             func / "sub-02_task-a_space-T1w_desc-preproc_bold.nii.gz")
    with pytest.raises(BidsReconError, match="must be 4-D with at least 2 volumes; got shape \\(4, 4, 4\\)"):
        find_fmriprep_run(index_derivatives(parse_derivatives([str(root)])), {"subject": "02", "task": "a"})


def test_confounds_are_resolved_per_run(indexed):
    found = find_fmriprep_run(indexed, TRAINING_RUN, confounds=["rot_z", "trans_?", "a_comp_cor_*", "cosine*"])
    assert found.confound_columns == ("trans_x", "trans_y", "trans_z", "rot_z", "a_comp_cor_00", "a_comp_cor_01",
                                      "a_comp_cor_02", "a_comp_cor_03", "a_comp_cor_04", "cosine00")
    assert found.confounds_strategy is None and found.censored_volumes == ()
    with pytest.raises(BidsReconError, match="--confounds 'aroma_\\*' matches no column") as caught:
        find_fmriprep_run(indexed, TRAINING_RUN, confounds=["aroma_*"])
    assert caught.value.exit_code == EXIT_BAD_ARGUMENTS


# --- --confounds ------------------------------------------------------------------------------

def test_select_confounds_default_is_the_six_motion_parameters(indexed):
    path = find_fmriprep_run(indexed, TRAINING_RUN).confounds
    table = pd.read_csv(path, sep="\t")
    names, values = select_confounds(path)
    assert names == list(MOTION_COLUMNS)
    np.testing.assert_array_equal(values, table[list(MOTION_COLUMNS)].to_numpy())
    assert values.shape == (len(table), 6) and values.dtype == np.float64


def test_select_confounds_globs_and_missing_values(indexed):
    path = find_fmriprep_run(indexed, TRAINING_RUN).confounds
    table = pd.read_csv(path, sep="\t")
    assert pd.isna(table["framewise_displacement"][0])  # n/a in the file
    names, values = select_confounds(path, ["framewise_displacement", "cosine*", "a_comp_cor_0[0-1]"])
    assert names == ["framewise_displacement", "a_comp_cor_00", "a_comp_cor_01", "cosine00"]
    assert values[0, 0] == 0.0
    np.testing.assert_array_equal(values[1:, 0], table["framewise_displacement"][1:])
    np.testing.assert_array_equal(values[:, 1:], table[names[1:]].to_numpy())
    names, values = select_confounds(path, [])
    assert names == [] and values.shape == (len(table), 0)


def test_pattern_matching_nothing_lists_the_columns(indexed):
    path = find_fmriprep_run(indexed, TRAINING_RUN).confounds
    with pytest.raises(BidsReconError) as caught:
        select_confounds(path, ["trans_x", "motion_outlier*"])
    message = str(caught.value)
    assert caught.value.exit_code == EXIT_BAD_ARGUMENTS
    assert message.startswith(f"--confounds 'motion_outlier*' matches no column of {path}; its columns are: ")
    assert "global_signal, global_signal_derivative1, global_signal_power2, global_signal_derivative1_power2, csf," \
        in message
    assert "a_comp_cor_00..a_comp_cor_04 (5), cosine00" in message


def test_non_numeric_confound_column(tmp_path):
    path = tmp_path / "confounds.tsv"
    pd.DataFrame({"trans_x": [0.1, 0.2, 0.3], "label": ["a", "b", "n/a"]}).to_csv(path, sep="\t", index=False)
    with pytest.raises(BidsReconError, match="confound 'label' row 1 is 'a', not a number"):
        select_confounds(path, ["label"])
    with pytest.raises(BidsReconError, match="empty column name"):
        resolve_confound_columns(["trans_x"], [""])


def test_summarise_columns():
    columns = ["csf", "a_comp_cor_00", "a_comp_cor_01", "a_comp_cor_02", "cosine00", "trans_x", "motion_outlier07"]
    assert summarise_columns(columns) == \
        "csf, a_comp_cor_00..a_comp_cor_02 (3), cosine00, trans_x, motion_outlier07"


# --- cohorts and multi-echo runs ---------------------------------------------------------------

def test_cohort_is_matched_in_the_file_names(tmp_path):
    root = _description(tmp_path / "fmriprep")
    _write_run(root, "sub-02_task-a", ["space-MNIPediatricAsym_cohort-1_res-2", "space-MNIPediatricAsym_cohort-2_res-2",
                                       "space-T1w"])
    indexed = index_derivatives(parse_derivatives([str(root)]))
    run = {"subject": "02", "task": "a"}
    with pytest.raises(BidsReconError, match=r"cohort-1_res-2_desc-preproc_bold.nii.gz, .*cohort-2_res-2_desc-"
                                             r"preproc_bold.nii.gz; choose one .*SPACE:cohort-N:res-N") as caught:
        find_fmriprep_run(indexed, run, space="MNIPediatricAsym")
    assert caught.value.exit_code == EXIT_BAD_ARGUMENTS
    found = find_fmriprep_run(indexed, run, space="MNIPediatricAsym:cohort-2:res-2")
    assert Path(found.bold).name == "sub-02_task-a_space-MNIPediatricAsym_cohort-2_res-2_desc-preproc_bold.nii.gz"
    assert Path(found.mask).name == "sub-02_task-a_space-MNIPediatricAsym_cohort-2_res-2_desc-brain_mask.nii.gz"
    assert found.space == "MNIPediatricAsym:cohort-2:res-2"
    # The only resolution of a cohort is taken, and named in the space found.
    assert find_fmriprep_run(indexed, run, space="MNIPediatricAsym:cohort-1").space == "MNIPediatricAsym:cohort-1:res-2"
    with pytest.raises(BidsReconError, match=r"space-MNIPediatricAsym_cohort-3\[_res-\*\]_desc-preproc_bold") as caught:
        find_fmriprep_run(indexed, run, space="MNIPediatricAsym:cohort-3")
    assert caught.value.exit_code == EXIT_INPUT_MISSING


def _write_echoes(func, stem, echoes, n_volumes=10):
    for echo in echoes:
        nib.save(nib.Nifti1Image(np.full((4, 4, 4, n_volumes), echo, np.int16), np.diag([2.0, 2.0, 2.0, 1.0])),
                 func / f"{stem}_echo-{echo}_space-T1w_desc-preproc_bold.nii.gz")


def test_the_optimally_combined_echo_is_taken(tmp_path):
    # fMRIPrep --me-output-echos writes each echo next to the optimally combined run.
    root = _description(tmp_path / "fmriprep")
    func = _write_run(root, "sub-02_task-a_run-1", ["space-T1w"])
    _write_echoes(func, "sub-02_task-a_run-1", (1, 2, 3))
    indexed = index_derivatives(parse_derivatives([str(root)]))
    found = find_fmriprep_run(indexed, {"subject": "02", "task": "a", "run": "1"})
    assert Path(found.bold).name == "sub-02_task-a_run-1_space-T1w_desc-preproc_bold.nii.gz"
    assert Path(found.mask).name == "sub-02_task-a_run-1_space-T1w_desc-brain_mask.nii.gz"


def test_per_echo_files_alone_are_refused(tmp_path):
    root = _description(tmp_path / "fmriprep")
    func = _write_run(root, "sub-02_task-a_run-1", ["space-T1w"])
    (func / "sub-02_task-a_run-1_space-T1w_desc-preproc_bold.nii.gz").unlink()
    _write_echoes(func, "sub-02_task-a_run-1", (1, 2))
    indexed = index_derivatives(parse_derivatives([str(root)]))
    with pytest.raises(BidsReconError) as caught:
        find_fmriprep_run(indexed, {"subject": "02", "task": "a", "run": "1"})
    assert caught.value.exit_code == EXIT_INPUT_MISSING
    assert str(caught.value) == (
        f"fmriprep ({root.resolve()}) holds only per-echo preprocessed bold files of run sub-02_task-a_run-1 "
        "(sub-02_task-a_run-1_echo-1_space-T1w_desc-preproc_bold.nii.gz, "
        "sub-02_task-a_run-1_echo-2_space-T1w_desc-preproc_bold.nii.gz); bidsrecon reads fMRIPrep's optimally "
        "combined run, sub-02/func/sub-02_task-a_run-1_space-T1w[_res-*]_desc-preproc_bold{.nii.gz,.nii}, which "
        "fMRIPrep writes for every multi-echo run: copy it next to them")


# --- --confounds-strategy ----------------------------------------------------------------------

def _motion_24():
    return {f"{name}{suffix}" for name in MOTION_COLUMNS for suffix in ("", "_derivative1", "_power2",
                                                                       "_derivative1_power2")}


def test_strategies_select_nilearns_columns(indexed):
    simple = find_fmriprep_run(indexed, TRAINING_RUN, strategy="simple")
    assert simple.confounds_strategy == "simple" and simple.censored_volumes == ()
    assert set(simple.confound_columns) == _motion_24() | {"csf", "white_matter", "cosine00"}
    table = _table(simple.confounds)
    assert list(simple.confound_columns) == [column for column in table.columns if column in simple.confound_columns]
    compcor = find_fmriprep_run(indexed, TRAINING_RUN, strategy="compcor")
    assert set(compcor.confound_columns) == _motion_24() | {"cosine00"} | {f"a_comp_cor_0{i}" for i in range(5)}
    scrubbing = find_fmriprep_run(indexed, TRAINING_RUN, strategy="scrubbing")
    wm_csf = {f"{name}{suffix}" for name in ("csf", "white_matter")
              for suffix in ("", "_derivative1", "_power2", "_derivative1_power2")}
    assert set(scrubbing.confound_columns) == _motion_24() | wm_csf | {"cosine00"}
    assert scrubbing.censored_volumes == ()  # the simulated run moves little: nothing to scrub
    # Strategies read the table's values as --confounds does.
    names, values = select_confounds(compcor.confounds, compcor.confound_columns)
    assert tuple(names) == compcor.confound_columns and np.isfinite(values).all()


def _table(path):
    return pd.read_csv(path, sep="\t", na_values="n/a")


def _confounds_file(root):
    return root / "sub-01/ses-perceptionNaturalImageTraining01/func" / f"{TRAINING_LABEL}_desc-confounds_timeseries.tsv"


def test_scrubbing_censors_the_high_motion_volumes(fmriprep_copy):
    path = _confounds_file(fmriprep_copy)
    table = _table(path)
    table.loc[30, "framewise_displacement"] = 0.9  # over nilearn's 0.5 mm
    table.loc[44, "std_dvars"] = 2.0  # over nilearn's 1.5
    table.to_csv(path, sep="\t", index=False, na_rep="n/a")
    indexed = index_derivatives(parse_derivatives([str(fmriprep_copy)]))
    assert find_fmriprep_run(indexed, TRAINING_RUN, strategy="scrubbing").censored_volumes == (30, 44)
    # Only scrubbing looks at the motion.
    assert find_fmriprep_run(indexed, TRAINING_RUN, strategy="compcor").censored_volumes == ()


def test_non_steady_state_volumes_are_censored_by_every_strategy(fmriprep_copy):
    path = _confounds_file(fmriprep_copy)
    table = _table(path)
    table["non_steady_state_outlier00"] = np.eye(len(table))[0]
    table["non_steady_state_outlier01"] = np.eye(len(table))[1]
    table.to_csv(path, sep="\t", index=False, na_rep="n/a")
    indexed = index_derivatives(parse_derivatives([str(fmriprep_copy)]))
    found = find_fmriprep_run(indexed, TRAINING_RUN, strategy="simple")
    assert found.censored_volumes == (0, 1)
    assert not any(column.startswith("non_steady_state") for column in found.confound_columns)


def test_compcor_needs_the_confounds_json(fmriprep_copy):
    path = _confounds_file(fmriprep_copy)
    path.with_suffix(".json").unlink()
    indexed = index_derivatives(parse_derivatives([str(fmriprep_copy)]))
    with pytest.raises(BidsReconError) as caught:
        find_fmriprep_run(indexed, TRAINING_RUN, strategy="compcor")
    assert caught.value.exit_code == EXIT_INPUT_MISSING
    assert str(caught.value).startswith(
        f"{path}: --confounds-strategy compcor needs its JSON sidecar {path.with_suffix('.json').name}")
    # The other strategies do without it.
    assert find_fmriprep_run(indexed, TRAINING_RUN, strategy="simple").confound_columns


def test_a_strategy_the_table_cannot_serve(tmp_path):
    root = _description(tmp_path / "fmriprep")
    _write_run(root, "sub-02_task-a", ["space-T1w"])  # the six motion parameters only
    indexed = index_derivatives(parse_derivatives([str(root)]))
    with pytest.raises(BidsReconError) as caught:
        find_fmriprep_run(indexed, {"subject": "02", "task": "a"}, strategy="simple")
    message = str(caught.value)
    assert caught.value.exit_code == EXIT_BAD_ARGUMENTS and "\n" not in message
    assert message.startswith(f"{root.resolve()}/sub-02/func/sub-02_task-a_desc-confounds_timeseries.tsv: nilearn's "
                              "'simple' denoising strategy cannot use it (")
    assert "trans_x_derivative1" in message and message.endswith(
        "choose another --confounds-strategy, or name the columns with --confounds")


def test_confounds_and_a_strategy_together_are_refused(indexed):
    with pytest.raises(BidsReconError, match="give --confounds or --confounds-strategy, not both") as caught:
        find_fmriprep_run(indexed, TRAINING_RUN, confounds=["trans_x"], strategy="simple")
    assert caught.value.exit_code == EXIT_BAD_ARGUMENTS


def test_scrubbing_leaves_the_censored_trials_out_of_the_plan(dataset, tmp_path, caplog):
    from bidsrecon.bids.collect import load_layout
    from bidsrecon.cli import parse_args
    from bidsrecon.participant_plan import plan_participant
    from bidsrecon.spec import load_spec

    bids = Path(shutil.copytree(dataset, tmp_path / "bids"))
    path = _confounds_file(bids / "derivatives/fmriprep")
    table = _table(path)
    table.loc[40, "framewise_displacement"] = 0.9  # 80-82 s: in the window of the trial at 72 s only
    table.to_csv(path, sep="\t", index=False, na_rep="n/a")

    def plan(*options):
        config = parse_args([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                             "--skip-bids-validation", "-d", str(bids / "derivatives/fmriprep"), *options])
        derivatives = index_derivatives(parse_derivatives(config.derivatives))
        result = plan_participant(load_layout(bids), "01", load_spec(config.spec), config, derivatives,
                                  parse_space(config.space))
        return next(inputs for inputs in result.runs if TRAINING_LABEL in inputs.bold), result

    full, _ = plan()
    with caplog.at_level(logging.WARNING, logger="bidsrecon"):
        scrubbed, result = plan("--confounds-strategy", "scrubbing")
    assert scrubbed.censored_volumes == (40,) and full.censored_volumes == ()
    tr, delay = scrubbed.run.tr, 4.0
    window = full.run.trials["onset"] + delay, full.run.trials["onset"] + full.run.trials["duration"] + delay
    hit = ((40 * tr < window[1]) & (41 * tr > window[0])).to_numpy()
    assert hit.sum() == 1
    pd.testing.assert_frame_equal(scrubbed.run.trials, full.run.trials[~hit].reset_index(drop=True))
    assert f"{TRAINING_LABEL}_bold.nii.gz: dropped 1 of {len(full.run.trials)} 'training' trials" in caplog.text
    # The trials table the workflow reads is the one without them.
    written = pd.read_csv(result.trials_files[result.runs.index(scrubbed)], sep="\t")
    assert list(written["onset"]) == list(scrubbed.run.trials["onset"])
    assert set(scrubbed.confound_columns) > _motion_24()


def test_strategy_options_on_the_command_line(tiny_fmriprep_dataset, tmp_path):
    from checks import one_line_error
    from test_cli import run_cli

    from bidsrecon.cli import parse_args

    bids, out = str(tiny_fmriprep_dataset), str(tmp_path / "out")
    prep = str(tiny_fmriprep_dataset / "derivatives" / "fmriprep")
    config = parse_args([bids, out, "participant", "-d", prep, "--confounds-strategy", "compcor"])
    assert config.confounds_strategy == "compcor" and config.confounds is None
    assert parse_args([bids, out, "participant"]).confounds_strategy is None
    with pytest.raises(BidsReconError, match="give --confounds or --confounds-strategy, not both") as caught:
        parse_args([bids, out, "participant", "-d", prep, "--confounds-strategy", "simple", "--confounds", "csf"])
    assert caught.value.exit_code == EXIT_BAD_ARGUMENTS
    one_line_error(run_cli(bids, out, "participant", "--confounds-strategy", "simple", "-w", tmp_path / "work"), 64,
                   "--confounds-strategy simple reads fMRIPrep's confounds: give --derivatives PATH")
    one_line_error(run_cli(bids, out, "participant", "-d", prep, "--confounds-strategy", "ica_aroma"), 64,
                   "invalid choice: 'ica_aroma'")
    assert not (tmp_path / "out").exists()
