import numpy as np
import pytest

from bidsrecon.preproc import block_samples, block_weights, clean_run


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
