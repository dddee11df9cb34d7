import numpy as np
import pytest

from bidsrecon.preproc import (
    block_samples,
    block_weights,
    clean_run,
    lss_betas,
    nuisance_design,
    slice_time_correct,
    trial_regressors,
    unusable_voxels,
)
from bidsrecon.preproc.slice_timing import reference_time


def test_clean_run_removes_trend_and_confounds_and_zscores():
    rng = np.random.default_rng(0)
    n = 120
    signal = rng.normal(size=(n, 5))
    confound = rng.normal(size=(n, 1))
    trend = np.linspace(0, 50, n)[:, None]
    data = 1000 + trend + 20 * confound + signal
    cleaned = clean_run(data, confounds=confound, n_discard=4, clip_sd=None)
    assert np.isnan(cleaned[:4]).all()
    kept = cleaned[4:]
    np.testing.assert_allclose(kept.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(kept.std(axis=0, ddof=1), 1, atol=1e-5)
    # What is left is the signal: trend and confound are gone.
    assert abs(np.corrcoef(kept[:, 0], confound[4:, 0])[0, 1]) < 1e-4
    assert np.corrcoef(kept[:, 0], signal[4:, 0])[0, 1] > 0.99


def test_clean_run_clips_and_keeps_constant_voxels_finite():
    data = np.zeros((50, 2))
    data[:, 1] = np.arange(50.0) % 2
    data[25, 1] = 100.0
    cleaned = clean_run(data, clip_sd=3.0)
    assert np.all(cleaned[:, 0] == 0)
    assert cleaned[:, 1].max() == pytest.approx(3.0)


def test_block_weights_fractional_blocks():
    # TR 2 s; a 3-s block starting at 1 s with no delay covers half of volume 0 and all of volume 1.
    weights = block_weights(5, 2.0, onsets=[1.0], durations=[3.0], delay=0.0)
    np.testing.assert_allclose(weights[0], [1 / 3, 2 / 3, 0, 0, 0])


def test_block_samples_average_the_delayed_window():
    data = np.arange(10.0)[:, None] * np.ones((1, 3))
    # 8-s block at 4 s, delay 4 s -> window [8, 16) s -> volumes 4..7 -> mean 5.5
    samples = block_samples(data, 2.0, onsets=[4.0], durations=[8.0], delay=4.0)
    np.testing.assert_allclose(samples, [[5.5, 5.5, 5.5]])


def test_block_past_the_end_of_the_run_is_an_error():
    with pytest.raises(ValueError, match="runs past the end of the run"):
        block_weights(10, 2.0, onsets=[14.0], durations=[8.0], delay=4.0)


def test_block_touching_discarded_volumes_is_an_error():
    data = clean_run(np.random.default_rng(1).normal(size=(20, 2)), n_discard=4)
    with pytest.raises(ValueError, match="discarded volumes"):
        block_samples(data, 2.0, onsets=[0.0], durations=[4.0], delay=2.0)


def test_clean_run_sets_nan_and_constant_voxels_to_zero():
    rng = np.random.default_rng(2)
    data = 1000 + rng.normal(size=(40, 4))
    data[7, 1] = np.nan
    data[:, 2] = 1234.0  # constant: its residual is rounding noise, which must not be z-scored
    np.testing.assert_array_equal(unusable_voxels(data, n_discard=2), [False, True, True, False])
    # NaN in a discarded volume only does not make the voxel unusable.
    assert not unusable_voxels(data, n_discard=8)[1]
    cleaned = clean_run(data, n_discard=2)
    assert np.isfinite(cleaned[2:]).all()
    assert np.all(cleaned[2:, 1:3] == 0)
    assert cleaned[2:, 0].std() > 0.5


def _rapid_event_run(rng, n_volumes=160, n_trials=24, n_voxels=30, tr=2.0):
    """A run of short trials 9-15 s apart whose responses overlap, with a trend and a confound."""
    onsets = 20.0 + np.cumsum(rng.uniform(9.0, 15.0, n_trials))
    durations = np.full(n_trials, 2.0)
    regressors = trial_regressors(n_volumes, tr, onsets, durations)
    amplitudes = rng.normal(1.0, 1.0, size=(n_trials, n_voxels))
    confound = rng.normal(size=(n_volumes, 1))
    data = (500 + regressors @ amplitudes + np.linspace(0, 3, n_volumes)[:, None]
            + 2.0 * confound + 0.3 * rng.normal(size=(n_volumes, n_voxels)))
    return data, confound, regressors, amplitudes, onsets, durations


def test_trial_regressors_peak_after_each_onset():
    onsets = np.array([10.0, 60.0])
    regressors = trial_regressors(60, 2.0, onsets, durations=[1.0, 1.0])
    assert regressors.shape == (60, 2)
    peak_times = (np.argmax(regressors, axis=0) + 0.5) * 2.0
    # Glover's HRF peaks 5-6 s after a short event.
    assert np.all((peak_times - onsets >= 4.0) & (peak_times - onsets <= 8.0))


def test_lss_betas_equal_separate_glms_and_track_the_true_amplitudes():
    rng = np.random.default_rng(3)
    data, confound, regressors, amplitudes, _, _ = _rapid_event_run(rng)
    n_discard = 4
    cleaned = clean_run(data, confound, n_discard=n_discard, clip_sd=None)
    nuisance = nuisance_design(len(data), confound)[n_discard:]
    betas = lss_betas(cleaned[n_discard:], regressors[n_discard:], nuisance)
    assert betas.shape == amplitudes.shape and betas.dtype == np.float32
    # The vectorised solution is the one a separate GLM per trial gives (Mumford et al. 2012).
    kept_regressors = regressors[n_discard:]
    total = kept_regressors.sum(axis=1)
    for trial in (0, 11, len(amplitudes) - 1):
        design = np.column_stack([kept_regressors[:, trial], total - kept_regressors[:, trial], nuisance])
        separate = np.linalg.lstsq(design, cleaned[n_discard:], rcond=None)[0][0]
        np.testing.assert_allclose(betas[trial], separate, rtol=1e-3, atol=1e-4)
    correlations = [np.corrcoef(betas[:, voxel], amplitudes[:, voxel])[0, 1] for voxel in range(amplitudes.shape[1])]
    assert np.median(correlations) > 0.9


def test_lss_rejects_trials_outside_the_fitted_volumes():
    with pytest.raises(ValueError, match="onset 200 s starts after the run ends"):
        trial_regressors(30, 2.0, onsets=[10.0, 200.0], durations=[2.0, 2.0])
    regressors = trial_regressors(60, 2.0, onsets=[0.0, 70.0], durations=[2.0, 2.0])
    # Fitting only from 60 s on: the first trial's response is long over.
    with pytest.raises(ValueError, match="trial 0 has no response"):
        lss_betas(np.ones((30, 3)), regressors[30:], nuisance_design(30))


def test_slice_time_correct_aligns_every_slice_to_the_reference_time():
    tr, n_volumes = 2.0, 60
    slice_times = np.arange(6) * tr / 6  # ascending
    reference = reference_time(slice_times)
    assert reference == pytest.approx(slice_times[-1] / 2)

    def signal(times):
        return np.sin(2 * np.pi * times / 24.0)

    acquired = np.empty((2, 3, 6, n_volumes), dtype=np.float32)
    for index, offset in enumerate(slice_times):
        acquired[:, :, index, :] = signal(np.arange(n_volumes) * tr + offset)
    wanted = signal(np.arange(n_volumes) * tr + reference)
    before = np.abs(acquired - wanted).max(axis=(0, 1, 3))
    corrected = slice_time_correct(acquired.copy(), slice_times, tr, slice_axis=2)
    after = np.abs(corrected[..., 1:-1] - wanted[1:-1]).max(axis=(0, 1, 3))  # ends are held, not extrapolated
    assert before.max() > 0.2
    assert after.max() < 0.01


def test_no_confound_columns_reads_an_empty_table(tmp_path):
    # `--confounds` given without a value selects no column; that must not crash the samples node.
    from bidsrecon.preproc.inputs import read_confounds

    path = tmp_path / "confounds.tsv"
    path.write_text("trans_x\tframewise_displacement\n0.1\tn/a\n0.2\t0.3\n")
    assert read_confounds(path, [], 2).shape == (2, 0)
