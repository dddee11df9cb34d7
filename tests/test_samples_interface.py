"""The RunSamples interface: confounds, the block and LSS methods, bad voxels and bad inputs."""
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bidsrecon.errors import EXIT_BAD_ARGUMENTS, BidsReconError
from bidsrecon.interfaces.samples import RunSamples
from bidsrecon.paper import CLIP_SD, DELAY_SECONDS, DISCARD_SECONDS
from bidsrecon.preproc import trial_regressors

TR = 2.0
GRID = (2, 5, 5)


def _write_run(folder, series, onsets, durations, confounds=None, affine=None):
    """Files of one run whose voxels hold ``series`` (n_volumes, n_voxels); the mask covers them all."""
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([3.0, 3.0, 3.0, 1.0]) if affine is None else affine
    volumes = np.asarray(series, dtype=np.float32).T.reshape(GRID + (len(series),))
    nib.save(nib.Nifti1Image(volumes, affine), folder / "bold.nii.gz")
    nib.save(nib.Nifti1Image(np.ones(GRID, dtype=np.uint8), affine), folder / "mask.nii.gz")
    pd.DataFrame({"onset": onsets, "duration": durations, "stimulus": [f"im{i}" for i in range(len(onsets))]}).to_csv(
        folder / "trials.tsv", sep="\t", index=False)
    files = {"bold_file": str(folder / "bold.nii.gz"), "mask_file": str(folder / "mask.nii.gz"),
             "trials_file": str(folder / "trials.tsv"), "tr": TR}
    if confounds is not None:
        confounds.to_csv(folder / "confounds.tsv", sep="\t", index=False, na_rep="n/a")
        files["confounds_file"] = str(folder / "confounds.tsv")
    return files


def _run(tmp_path, monkeypatch, **inputs):
    monkeypatch.chdir(tmp_path)
    # The node's settings come from the options (Config): the paper's, unless a test says otherwise.
    paper = {"discard_seconds": DISCARD_SECONDS, "delay_seconds": DELAY_SECONDS, "clip_sd": CLIP_SD,
             "method": "block", "normalise": "zscore"}
    result = RunSamples(**{**paper, **inputs}).run()
    return np.load(result.outputs.out_samples), result.outputs


def _block_run(rng, n_voxels=GRID[0] * GRID[1] * GRID[2]):
    """ds001506-like blocks (16-s rest, ten 8-s blocks, rest) with a strong confound and a trend."""
    n_volumes = 56
    onsets = 16.0 + 8.0 * np.arange(10)
    durations = np.full(10, 8.0)
    amplitudes = rng.normal(size=(10, n_voxels))
    evoked = np.zeros((n_volumes, n_voxels))
    for block, onset in enumerate(onsets):  # the response, 4 s late
        evoked[int((onset + 4.0) / TR):int((onset + 12.0) / TR)] = amplitudes[block]
    confound = np.convolve(rng.normal(size=n_volumes + 4), np.ones(5) / 5, mode="valid")
    confound = (confound - confound.mean()) / confound.std()
    loading = rng.uniform(10.0, 20.0, n_voxels)
    series = (1000 + 2.0 * evoked + confound[:, None] * loading + np.linspace(0, 5, n_volumes)[:, None]
              + 0.3 * rng.normal(size=(n_volumes, n_voxels)))
    return series, onsets, durations, amplitudes, confound


def _mean_correlation(samples, reference):
    return np.mean([np.corrcoef(samples[:, voxel], reference[:, voxel])[0, 1] for voxel in range(samples.shape[1])])


def test_confounds_are_regressed_out_of_block_samples(tmp_path, monkeypatch):
    series, onsets, durations, amplitudes, confound = _block_run(np.random.default_rng(0))
    displacement = np.abs(np.diff(confound, prepend=np.nan))  # n/a in the first row, as fMRIPrep writes
    table = pd.DataFrame({"my_confound": confound, "framewise_displacement": displacement, "csf": 1.0})
    files = _write_run(tmp_path / "run", series, onsets, durations, confounds=table)
    without, _ = _run(tmp_path, monkeypatch, **{k: v for k, v in files.items() if k != "confounds_file"})
    with_confounds, outputs = _run(tmp_path, monkeypatch, **files,
                                   confound_columns=["my_confound", "framewise_displacement"])
    assert with_confounds.shape == (10, series.shape[1]) and outputs.n_zeroed_voxels == 0
    assert np.isfinite(with_confounds).all()
    confound_per_block = np.array([confound[int((o + 4) / TR):int((o + 12) / TR)].mean() for o in onsets])
    confound_per_block = np.repeat(confound_per_block[:, None], series.shape[1], axis=1)
    assert _mean_correlation(without, confound_per_block) > 0.8
    assert abs(_mean_correlation(with_confounds, confound_per_block)) < 0.3
    assert _mean_correlation(with_confounds, amplitudes) > 0.9


def test_default_confound_columns_are_the_six_motion_parameters(tmp_path, monkeypatch):
    series, onsets, durations, _, confound = _block_run(np.random.default_rng(1))
    table = pd.DataFrame({"framewise_displacement": confound})
    files = _write_run(tmp_path / "run", series, onsets, durations, confounds=table)
    with pytest.raises(BidsReconError, match="no confound column.*trans_x, trans_y, trans_z, rot_x, rot_y, rot_z"):
        _run(tmp_path, monkeypatch, **files)


def test_lss_betas_follow_the_true_trial_amplitudes(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    n_volumes, n_trials, n_voxels = 150, 22, GRID[0] * GRID[1] * GRID[2]
    onsets = 16.0 + np.cumsum(rng.uniform(9.0, 14.0, n_trials))
    durations = np.full(n_trials, 2.0)
    amplitudes = rng.normal(1.0, 1.0, size=(n_trials, n_voxels))
    series = (800 + 3.0 * trial_regressors(n_volumes, TR, onsets, durations) @ amplitudes
              + 0.5 * rng.normal(size=(n_volumes, n_voxels)))
    files = _write_run(tmp_path / "run", series, onsets, durations)
    betas, _ = _run(tmp_path, monkeypatch, **files, method="lss")
    assert betas.shape == (n_trials, n_voxels) and betas.dtype == np.float32
    assert _mean_correlation(betas, amplitudes) > 0.85
    # Block averages of these overlapping short trials follow the amplitudes less well.
    blocks, _ = _run(tmp_path, monkeypatch, **files, method="block")
    assert _mean_correlation(betas, amplitudes) > _mean_correlation(blocks, amplitudes)


def test_nan_and_constant_voxels_become_zero_with_a_warning(tmp_path, monkeypatch):
    series, onsets, durations, _, _ = _block_run(np.random.default_rng(3))
    series[20, 3] = np.nan
    series[:, 7] = 0.0  # e.g. signal dropout outside the brain
    files = _write_run(tmp_path / "run", series, onsets, durations)
    for method in ("block", "lss"):
        with pytest.warns(RuntimeWarning, match="bold.nii.gz: 2 of 50 mask voxels are NaN or constant"):
            samples, outputs = _run(tmp_path, monkeypatch, **files, method=method)
        assert outputs.n_zeroed_voxels == 2
        assert np.isfinite(samples).all()
        assert np.all(samples[:, [3, 7]] == 0) and np.all(samples[:, 0] != 0)


def _bad_three_d_bold(folder, files):
    nib.save(nib.Nifti1Image(np.ones(GRID, dtype=np.float32), np.diag([3.0, 3.0, 3.0, 1.0])), folder / "bold.nii.gz")
    return "bold.nii.gz: a BOLD run must be 4-D"


def _bad_mask_shape(folder, files):
    nib.save(nib.Nifti1Image(np.ones((2, 5, 4), dtype=np.uint8), np.diag([3.0, 3.0, 3.0, 1.0])), folder / "mask.nii.gz")
    return r"bold.nii.gz: its grid \(shape \(2, 5, 5\)\) differs from the mask"


def _bad_mask_affine(folder, files):
    nib.save(nib.Nifti1Image(np.ones(GRID, dtype=np.uint8), np.diag([2.0, 2.0, 2.0, 1.0])), folder / "mask.nii.gz")
    return "differs from the mask .*another affine"


def _bad_onsets(folder, files):
    trials = pd.read_csv(folder / "trials.tsv", sep="\t")
    trials["onset"] = trials["onset"].astype(object)
    trials.loc[2, "onset"] = "soon"
    trials.to_csv(folder / "trials.tsv", sep="\t", index=False)
    return "trials.tsv: 'onset' must hold numbers \\(seconds\\); got row 3: 'soon'"


def _bad_confound_value(folder, files):
    table = pd.DataFrame({name: np.zeros(56) for name in ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")})
    table["rot_y"] = table["rot_y"].astype(object)
    table.loc[5, "rot_y"] = "oops"
    table.to_csv(folder / "confounds.tsv", sep="\t", index=False)
    files["confounds_file"] = str(folder / "confounds.tsv")
    return "confounds.tsv: confound 'rot_y' row 6 is 'oops', not a number"


def _bad_confound_rows(folder, files):
    table = pd.DataFrame({name: np.zeros(50) for name in ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")})
    table.to_csv(folder / "confounds.tsv", sep="\t", index=False)
    files["confounds_file"] = str(folder / "confounds.tsv")
    return "confounds.tsv: 50 rows of confounds for a run of 56 volumes"


def _block_past_the_end(folder, files):
    pd.DataFrame({"onset": [10.0, 104.0], "duration": [8.0, 8.0]}).to_csv(folder / "trials.tsv", sep="\t", index=False)
    return "trials.tsv \\(run .*bold.nii.gz\\): block at onset 104 s .* runs past the end of the run"


@pytest.mark.parametrize("spoil", [_bad_three_d_bold, _bad_mask_shape, _bad_mask_affine, _bad_onsets,
                                   _bad_confound_value, _bad_confound_rows, _block_past_the_end])
def test_bad_inputs_give_a_clear_error_naming_the_file(tmp_path, monkeypatch, spoil):
    series, onsets, durations, _, _ = _block_run(np.random.default_rng(4))
    files = _write_run(tmp_path / "run", series, onsets, durations)
    message = spoil(tmp_path / "run", files)
    with pytest.raises(BidsReconError, match=message) as error:
        _run(tmp_path, monkeypatch, **files)
    assert error.value.exit_code == EXIT_BAD_ARGUMENTS
