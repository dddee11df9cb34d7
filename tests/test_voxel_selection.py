"""--n-voxels: voxels ranked on the training samples only."""
import inspect

import numpy as np
import pytest

from bidsrecon.decoding.voxel_selection import (
    F_RATIO,
    MIN_WITHIN_DF,
    VARIANCE,
    reliability_weights,
    select_voxels,
    selection_method,
    voxel_scores,
)
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, BidsReconError


def _samples(rng, n_images, n_repeats, signal_sd, noise_sd):
    """Samples (image-major) whose voxel v carries image effects of SD signal_sd[v] plus noise of SD noise_sd[v]."""
    signal_sd, noise_sd = np.asarray(signal_sd, float), np.asarray(noise_sd, float)
    effects = rng.standard_normal((n_images, len(signal_sd))) * signal_sd
    image_index = np.repeat(np.arange(n_images), n_repeats)
    noise = rng.standard_normal((len(image_index), len(signal_sd))) * noise_sd
    return (effects[image_index] + noise).astype(np.float32), image_index


def test_repeats_select_reliable_voxels_over_noisy_ones():
    # 10 reliable voxels with small noise among 90 that only carry large noise: the F ratio finds
    # the reliable ones although the noisy ones vary more.
    rng = np.random.default_rng(0)
    signal = np.r_[np.full(10, 0.5), np.zeros(90)]
    noise = np.r_[np.full(10, 0.5), np.full(90, 2.0)]
    samples, image_index = _samples(rng, n_images=30, n_repeats=4, signal_sd=signal, noise_sd=noise)
    scores, method = voxel_scores(samples, image_index)
    assert method == F_RATIO
    np.testing.assert_array_equal(select_voxels(samples, image_index, 10), np.arange(10))
    assert scores[:10].min() > scores[10:].max()
    # Variance alone would have preferred the noisy voxels: that is why repeats are used when present.
    assert np.all(samples[:, 10:].var(axis=0).min() > samples[:, :10].var(axis=0).max())


def test_f_ratio_matches_one_way_anova():
    from scipy.stats import f_oneway

    rng = np.random.default_rng(1)
    samples, image_index = _samples(rng, n_images=12, n_repeats=3, signal_sd=[0.0, 0.3, 1.0], noise_sd=[1, 1, 1])
    scores, method = voxel_scores(samples, image_index)
    expected = [f_oneway(*(samples[image_index == i, v] for i in range(12))).statistic for v in range(3)]
    assert method == F_RATIO
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_without_repeats_variance_ranks_voxels():
    rng = np.random.default_rng(2)
    signal = np.r_[np.full(5, 1.5), np.zeros(45)]
    samples, image_index = _samples(rng, n_images=60, n_repeats=1, signal_sd=signal, noise_sd=np.ones(50))
    scores, method = voxel_scores(samples, image_index)
    assert method == VARIANCE
    np.testing.assert_allclose(scores, samples.astype(np.float64).var(axis=0, ddof=1), rtol=1e-6)
    np.testing.assert_array_equal(select_voxels(samples, image_index, 5), np.arange(5))


def test_method_needs_enough_within_image_degrees_of_freedom():
    # Each repeated image adds (repeats - 1) within-image degrees of freedom.
    assert selection_method(np.r_[np.repeat(np.arange(MIN_WITHIN_DF), 2), [100, 101]]) == F_RATIO
    assert selection_method(np.r_[np.repeat(np.arange(MIN_WITHIN_DF - 1), 2), [100, 101]]) == VARIANCE
    assert selection_method(np.zeros(50)) == VARIANCE  # one image: nothing to tell apart


def test_test_samples_cannot_change_the_selection():
    rng = np.random.default_rng(3)
    signal = rng.uniform(0, 1, 40)
    samples, image_index = _samples(rng, n_images=20, n_repeats=3, signal_sd=signal, noise_sd=np.ones(40))
    is_training = np.r_[np.ones(45, bool), np.zeros(15, bool)]  # the last five images are test items
    chosen = select_voxels(samples[is_training], image_index[is_training], 8)

    altered = samples.copy()
    altered[~is_training] = rng.standard_normal((15, 40)) * 100
    altered[np.ix_(~is_training, chosen)] = -1000  # would sink exactly the chosen voxels if test rows counted
    np.testing.assert_array_equal(select_voxels(altered[is_training], image_index[is_training], 8), chosen)
    # The only inputs are training samples, their image labels and K: no room for test data.
    assert list(inspect.signature(select_voxels).parameters) == ["train_samples", "train_image_index", "n_voxels"]
    assert list(inspect.signature(voxel_scores).parameters) == ["train_samples", "train_image_index"]
    # A training sample, by contrast, does count (so the check above could have failed).
    moved = samples[is_training].copy()
    moved[:, chosen[0]] = rng.standard_normal(45) * 1e-3
    assert chosen[0] not in select_voxels(moved, image_index[is_training], 8)


def test_indices_are_sorted_ties_keep_the_lower_index_and_constant_voxels_come_last():
    rng = np.random.default_rng(4)
    samples = rng.standard_normal((30, 6))
    samples[:, 1] = 5.0  # constant
    samples[:, 4] = samples[:, 2]  # tie with voxel 2
    labels = np.repeat(["a", "b", "c"], 10)
    scores, _ = voxel_scores(samples, labels)
    assert scores[1] == -np.inf
    chosen = select_voxels(samples, labels, 5)
    assert list(chosen) == sorted(chosen) and 1 not in chosen
    order = np.argsort(-scores, kind="stable")
    assert list(order).index(2) < list(order).index(4)
    # String labels and integer labels rank the same.
    np.testing.assert_array_equal(select_voxels(samples, np.repeat([0, 1, 2], 10), 5), chosen)


def test_chunked_scores_equal_unchunked(monkeypatch):
    import bidsrecon.decoding.voxel_selection as module

    rng = np.random.default_rng(5)
    samples, image_index = _samples(rng, 12, 3, rng.uniform(0, 1, 30), np.ones(30))
    whole, _ = voxel_scores(samples, image_index)
    monkeypatch.setattr(module, "CHUNK_VOXELS", 7)
    np.testing.assert_allclose(voxel_scores(samples, image_index)[0], whole, rtol=1e-12)


@pytest.mark.parametrize("n_voxels", [0, 11, 2.5, True, "3"])
def test_bad_n_voxels_is_a_user_error(n_voxels):
    samples = np.random.default_rng(6).standard_normal((20, 10))
    with pytest.raises(BidsReconError, match="--n-voxels") as caught:
        select_voxels(samples, np.arange(20) % 4, n_voxels)
    assert caught.value.exit_code == EXIT_BAD_ARGUMENTS
    assert "10 voxels" in str(caught.value)


def test_misuse_is_a_value_error():
    samples = np.random.default_rng(7).standard_normal((20, 10))
    with pytest.raises(ValueError, match="one label per sample"):
        voxel_scores(samples, np.arange(19))
    with pytest.raises(ValueError, match="2-D"):
        voxel_scores(samples[:, 0], np.arange(20))
    with pytest.raises(ValueError, match="at least 2"):
        voxel_scores(samples[:1], [0])
    samples[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        voxel_scores(samples, np.arange(20) % 4)


def test_reliability_weights_are_f_minus_one_and_finite_for_a_noiseless_voxel():
    rng = np.random.default_rng(0)
    image_index = np.repeat(np.arange(30), 2)
    samples = rng.standard_normal((60, 5))
    samples[:, 0] += 3 * rng.standard_normal(30)[image_index]  # a reliable voxel
    samples[:, 1] = rng.standard_normal(30)[image_index]       # an image effect and no noise: F infinite
    samples[:, 2] = 1.0                                         # constant
    weights = reliability_weights(samples, image_index)
    scores, _ = voxel_scores(samples, image_index)
    finite = np.clip(scores[[0, 3, 4]] - 1, 0, None)
    expected = np.array([finite[0], finite.max(), 0.0, finite[1], finite[2]])
    np.testing.assert_allclose(weights, expected / expected.mean())
    assert reliability_weights(samples[::2], image_index[::2]) is None  # no repeats: no weights
