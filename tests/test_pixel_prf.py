"""The small image decoded by inverting pRF encoding models (bidsrecon.decoding.pixel_prf)."""
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.stats import multivariate_normal

from bidsrecon.decoding.pixel_prf import (
    OFFSET_VARIANCES,
    PRIOR_SCALE_FACTOR,
    PRIOR_SCALES,
    R2_THRESHOLD,
    fit_prf_decoder,
    from_channels,
    local_contrast,
    prf_grid,
    to_channels,
)
from bidsrecon.evaluation.identification import pairwise_identification
from bidsrecon.parallel import task_threads

SIDE = 16


def _smooth_images(n, rng):
    """Natural-ish training images: smooth colour fields around grey, (n, 3, SIDE, SIDE) in [0, 1]."""
    noise = rng.standard_normal((n, 3, SIDE, SIDE))
    return np.clip(0.5 + 0.25 * gaussian_filter(noise, (0, 0, 1.5, 1.5)) / 0.18, 0, 1)


def _shapes(rng):
    """Filled squares and rings of one colour at a few places: (n, 3, SIDE, SIDE)."""
    images = []
    y, x = np.mgrid[:SIDE, :SIDE] + 0.5
    for cy, cx in ((5, 5), (5, 11), (11, 5), (11, 11), (8, 8)):
        distance = np.hypot(y - cy, x - cx)
        for mask in (np.maximum(abs(y - cy), abs(x - cx)) < 3, abs(distance - 3) < 1):
            image = np.full((3, SIDE, SIDE), 0.5)
            image[:, mask] = np.array([0.9, 0.2, 0.2])[:, None]
            images.append(image)
    return np.array(images)


def _brain(rng, n_prf_voxels=300, n_silent=100):
    """Voxels with a pRF of the search grid each and random channel weights, then silent ones."""
    candidates = rng.integers(0, len(prf_grid(SIDE)), n_prf_voxels)
    weights = rng.standard_normal((n_prf_voxels, 3)) * [1.0, 0.6, 0.4]
    contrast_weight = rng.uniform(0, 2, n_prf_voxels)

    def respond(pixels):
        channels, fields = to_channels(pixels), prf_grid(SIDE)[candidates]
        pooled = np.einsum("nkp,vp->nkv", channels, fields)
        driven = np.einsum("nkv,vk->nv", pooled, weights) + contrast_weight * (local_contrast(channels, SIDE) @ fields.T)
        return np.hstack([driven / 0.05, np.zeros((len(pixels), n_silent))])
    return candidates, respond


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    candidates, respond = _brain(rng)
    train = _smooth_images(400, rng)
    image_index = np.repeat(np.arange(len(train)), 2)
    samples = respond(train)[image_index]
    samples = samples + rng.standard_normal(samples.shape)
    mean, std = samples.mean(axis=0), samples.std(axis=0)
    decoder = fit_prf_decoder((samples - mean) / std, image_index, train, np.full(len(train), 2))
    return {"decoder": decoder, "candidates": candidates, "respond": respond, "mean": mean, "std": std, "rng": rng}


def test_channels_round_trip():
    pixels = np.random.default_rng(1).uniform(0, 1, (4, 3, SIDE, SIDE))
    np.testing.assert_allclose(from_channels(to_channels(pixels), SIDE), pixels, atol=1e-12)
    grey = np.full((1, 3, SIDE, SIDE), 0.5)
    np.testing.assert_allclose(to_channels(grey), 0, atol=1e-12)  # the background is the zero image


def test_each_voxel_gets_its_own_receptive_field_and_silent_voxels_are_left_out(fitted):
    decoder, candidates = fitted["decoder"], fitted["candidates"]
    n_prf = len(candidates)
    # Silent voxels pass the chance threshold (99 % of voxels with the images shuffled) about 1 % of the time.
    assert np.sum(decoder.voxels >= n_prf) <= 3
    assert np.median(decoder.r2[n_prf:]) < R2_THRESHOLD
    assert np.sum(decoder.voxels < n_prf) > 0.9 * n_prf
    kept = decoder.voxels < n_prf
    grid = prf_grid(SIDE)
    # The fitted field is the true one, or one that overlaps it almost entirely.
    fitted_fields, true_fields = decoder.candidates[kept], candidates[decoder.voxels[kept]]
    overlap = np.array([grid[fit] @ grid[true] / np.linalg.norm(grid[fit]) / np.linalg.norm(grid[true])
                        for fit, true in zip(fitted_fields, true_fields)])
    assert np.mean(fitted_fields == true_fields) > 0.6
    assert np.median(overlap) > 0.95


def test_shapes_unlike_the_training_images_are_identified(fitted):
    """Trained on smooth colour fields, it tells a square from a ring of the same colour and place."""
    decoder, rng = fitted["decoder"], fitted["rng"]
    shapes = _shapes(rng)
    n_trials = np.full(len(shapes), 4)
    samples = fitted["respond"](shapes) + rng.standard_normal((len(shapes), 400)) / 2  # 4 trials averaged
    decoded = decoder.decode((samples - fitted["mean"]) / fitted["std"], n_trials)
    assert decoded.shape == shapes.shape and decoded.dtype == np.float32
    scores = pairwise_identification(decoded.reshape(len(shapes), -1), shapes.reshape(len(shapes), -1))
    assert scores.mean() > 0.9
    # Each square against the ring at its place: the decoded image correlates best with its own.
    flat, truth = decoded.reshape(len(shapes), -1), shapes.reshape(len(shapes), -1)
    for square in range(0, len(shapes), 2):
        own, other = (np.corrcoef(flat[square], truth[index])[0, 1] for index in (square, square + 1))
        assert own > other


def _noise_and_offset(decoder, count, offset_variance):
    """``M = N / n + τ² 1 1ᵀ`` over the kept voxels."""
    return np.diag(decoder.noise / count) + offset_variance * np.ones((len(decoder.noise),) * 2)


def test_the_decoded_image_is_the_posterior_mean_under_the_most_likely_scale_and_offset(fitted):
    """As decoded equals the voxel-space form x̄ + sΣAᵀ (A sΣ Aᵀ + M)⁻¹ (z − z̄), M = N / n + τ² 1 1ᵀ, with
    s the factor times the scale and τ² the offset variance of the grids under which z − z̄ is most
    likely, computed here from the Gaussian density itself. The second and third items carry an
    offset on every voxel, as a run normalised as a whole gives."""
    decoder, rng = fitted["decoder"], fitted["rng"]
    shapes = _shapes(rng)[:3]
    z = (fitted["respond"](shapes) + rng.standard_normal((3, 400)) - fitted["mean"]) / fitted["std"]
    z[1:, :] += np.array([[0.3], [-0.2]])
    n_trials = np.array([1, 3, 3])
    decoded = decoder.decode(z, n_trials).astype(np.float64)
    covariance = decoder.prior_factor @ decoder.prior_factor.T
    A = decoder.encoding
    expected = []
    scales, offsets = decoder.hyperparameters(z, n_trials)
    for row, count, scale, offset in zip(z, n_trials, scales, offsets):
        centred = row[decoder.voxels] - decoder.response_mean
        evidence = [[multivariate_normal(cov=s * A @ covariance @ A.T + _noise_and_offset(decoder, count, t))
                     .logpdf(centred) for t in OFFSET_VARIANCES] for s in PRIOR_SCALES]
        best_scale, best_offset = np.unravel_index(np.argmax(evidence), np.shape(evidence))
        assert scale == PRIOR_SCALE_FACTOR * PRIOR_SCALES[best_scale] and offset == OFFSET_VARIANCES[best_offset]
        noise = _noise_and_offset(decoder, count, offset)
        gain = scale * covariance @ A.T @ np.linalg.inv(scale * A @ covariance @ A.T + noise)
        expected.append(decoder.channel_mean + gain @ centred)
    assert min(offsets[1:]) > 0
    np.testing.assert_allclose(decoded, from_channels(np.array(expected), SIDE), atol=1e-5)


def test_an_offset_on_every_voxel_is_not_read_as_the_image(fitted):
    """Shapes whose samples all sit 0.3 SD above the training samples' decode much as without it."""
    decoder, rng = fitted["decoder"], fitted["rng"]
    shapes = _shapes(rng)
    n_trials = np.full(len(shapes), 4)
    z = (fitted["respond"](shapes) + rng.standard_normal((len(shapes), 400)) / 2 - fitted["mean"]) / fitted["std"]
    plain, shifted = decoder.decode(z, n_trials), decoder.decode(z + 0.3, n_trials)
    # The model's misfit of these shapes is partly shared by the voxels: without the shift, the
    # evidence finds at most the smallest offset variances; with it, a larger one for every item.
    plain_offsets, shifted_offsets = (decoder.hyperparameters(samples, n_trials)[1] for samples in (z, z + 0.3))
    assert np.all(plain_offsets <= OFFSET_VARIANCES[1]) and np.all(shifted_offsets > plain_offsets)
    error = np.abs(shifted - plain).mean()
    assert error < 0.2 * np.abs(plain - 0.5).mean()


def test_noise_variance_is_that_of_the_decoded_image_under_noise_and_offset_alone(fitted):
    """The variance of the posterior mean's values when ``z − z̄`` is noise and offset of covariance
    ``M = N / n + τ² 1 1ᵀ``, ``diag(G M Gᵀ)`` with the gain ``G = sΣAᵀ (A sΣ Aᵀ + M)⁻¹`` written out,
    per channel (the third item with an offset, so τ² > 0)."""
    decoder, rng = fitted["decoder"], fitted["rng"]
    shapes = _shapes(rng)[:3]
    z = (fitted["respond"](shapes) + rng.standard_normal((3, 400)) - fitted["mean"]) / fitted["std"]
    z[2] += 0.3
    n_trials = np.array([1, 3, 3])
    variance = decoder.noise_variance(z, n_trials)
    assert variance.shape == (3, 3, SIDE * SIDE)
    covariance = decoder.prior_factor @ decoder.prior_factor.T
    A = decoder.encoding
    scales, offsets = decoder.hyperparameters(z, n_trials)
    assert offsets[2] > 0
    for item, (count, scale, offset) in enumerate(zip(n_trials, scales, offsets)):
        noise = _noise_and_offset(decoder, count, offset)
        gain = scale * covariance @ A.T @ np.linalg.inv(scale * A @ covariance @ A.T + noise)
        np.testing.assert_allclose(variance[item].ravel(), np.diag(gain @ noise @ gain.T), rtol=1e-6, atol=1e-12)
    with task_threads(1):
        one = decoder.noise_variance(z, n_trials)
    with task_threads(2):
        two = decoder.noise_variance(z, n_trials)
    assert np.array_equal(one, two)


def test_weakly_driven_samples_are_shrunk_more(fitted):
    """The same shapes at a fifth of their contrast choose smaller prior scales."""
    decoder, rng = fitted["decoder"], fitted["rng"]
    shapes = _shapes(rng)
    faint = 0.5 + 0.2 * (shapes - 0.5)
    n_trials = np.full(len(shapes), 4)
    scales = [decoder.hyperparameters((fitted["respond"](images) + rng.standard_normal((len(images), 400)) / 2
                                       - fitted["mean"]) / fitted["std"], n_trials)[0] for images in (shapes, faint)]
    assert np.median(scales[1]) < np.median(scales[0])


def test_no_responsive_voxel_is_a_clear_error():
    rng = np.random.default_rng(2)
    train = _smooth_images(60, rng)
    image_index = np.repeat(np.arange(60), 2)
    with pytest.raises(ValueError, match="No voxel's pRF explains"):
        fit_prf_decoder(rng.standard_normal((120, 20)), image_index, train, np.full(60, 2))
