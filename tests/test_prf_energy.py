"""The pRF decoder's energy model and its inversion (bidsrecon.decoding.prf_energy)."""
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from test_pixel_prf import _shapes

from bidsrecon.decoding.pixel_denoise import suppress_noise
from bidsrecon.decoding.pixel_prf import fit_prf_decoder, prf_grid, to_channels
from bidsrecon.decoding.prf_energy import (
    _population_shrunk_weights,
    design,
    fit_energy_model,
    gabor_pairs,
    pool,
    pooling_factors,
    refine,
)
from bidsrecon.evaluation.identification import pairwise_identification
from bidsrecon.parallel import task_threads

SIDE = 16
N_VOXELS = 300


def _training_images(n, rng):
    """Smooth colour fields with some sharp-edged patches: (n, 3, SIDE, SIDE) in [0, 1]."""
    noise = gaussian_filter(rng.standard_normal((n, 3, SIDE, SIDE)), (0, 0, 1.5, 1.5)) / 0.18
    images = 0.5 + 0.2 * noise
    for image in images:
        top, left = rng.integers(0, SIDE - 6, 2)
        image[:, top:top + rng.integers(2, 7), left:left + rng.integers(2, 7)] = rng.uniform(0, 1, (3, 1, 1))
    return np.clip(images, 0, 1)


@pytest.fixture(scope="module")
def brain():
    """Voxels that respond as the energy model says, with their own random weights, and a decoder."""
    rng = np.random.default_rng(0)
    candidates = rng.integers(0, len(prf_grid(SIDE)), N_VOXELS)
    n_regressors = 3 + len(gabor_pairs(SIDE))
    weights = rng.standard_normal((N_VOXELS, n_regressors)) * np.r_[[1.0, 0.5, 0.3], np.full(n_regressors - 3, 1.5)]

    def respond(pixels):
        with torch.no_grad():
            regressors = design(torch.from_numpy(to_channels(pixels)), SIDE, pooling_factors(SIDE),
                                gabor_pairs(SIDE), torch.from_numpy(candidates)).numpy()
        return np.einsum("nkv,vk->nv", regressors, weights) / 0.05

    train = _training_images(400, rng)
    image_index = np.repeat(np.arange(len(train)), 2)
    samples = respond(train)[image_index]
    samples = samples + rng.standard_normal(samples.shape)
    mean, std = samples.mean(axis=0), samples.std(axis=0)
    z = (samples - mean) / std
    counts = np.full(len(train), 2)
    prf = fit_prf_decoder(z, image_index, train, counts)
    model = fit_energy_model(prf, z, image_index, train, counts)
    return {"prf": prf, "model": model, "weights": weights, "candidates": candidates, "respond": respond,
            "mean": mean, "std": std, "rng": rng}


def test_pooling_is_the_grid_fields_dot_product():
    maps = np.random.default_rng(1).standard_normal((2, 3, SIDE, SIDE))
    candidates = np.array([0, 7, 300, len(prf_grid(SIDE)) - 1])
    pooled = pool(torch.from_numpy(maps), pooling_factors(SIDE), torch.from_numpy(candidates)).numpy()
    expected = np.einsum("nmp,vp->nmv", maps.reshape(2, 3, -1), prf_grid(SIDE)[candidates])
    np.testing.assert_allclose(pooled, expected, atol=1e-12)


def test_energy_sees_edges_and_their_orientation_not_uniform_luminance():
    grey, dark = np.full((1, 3, SIDE, SIDE), 0.5), np.full((1, 3, SIDE, SIDE), 0.2)
    square = _shapes(np.random.default_rng(1))[-2:-1]  # filled, pixels 5-10 of the middle
    # A 0.6-px field (the grid's second width) on the square's right edge, inside the image.
    field = torch.tensor([1 * 256 + 8 * 16 + 10])
    energies = [design(torch.from_numpy(to_channels(image)), SIDE, pooling_factors(SIDE), gabor_pairs(SIDE),
                       field)[0, 3:, 0].numpy() for image in (grey, dark, square)]
    assert energies[1].max() < 2 * energies[0].max()
    # Filters 0 and 4 vary along x (a vertical edge's), 2 and 6 along y, at the two wavelengths.
    assert min(energies[2][[0, 4]]) > 5 * energies[1].max()
    assert min(energies[2][[0, 4]]) > 2.5 * max(energies[2][[2, 6]])


def test_the_model_explains_the_voxels_better_than_the_linear_pRF(brain):
    prf, model = brain["prf"], brain["model"]
    kept = prf.voxels < N_VOXELS
    assert kept.mean() > 0.9
    assert np.median(model.r2) > np.median(prf.r2[prf.voxels]) + 0.05
    # Where the pRF found is the true one, the fitted weights are the true ones, up to the z-scoring.
    exact = kept & (prf.candidates == brain["candidates"][np.minimum(prf.voxels, N_VOXELS - 1)])
    true = brain["weights"][prf.voxels[exact]] / 0.05 / brain["std"][prf.voxels[exact], None]
    assert np.corrcoef(model.weights[exact].ravel(), true.ravel())[0, 1] > 0.95


def test_refining_tells_squares_from_rings_better_than_the_linear_decoder(brain):
    """Where voxels respond to edges, the linear pRF decoder takes that response for luminance."""
    prf, rng = brain["prf"], brain["rng"]
    shapes = _shapes(rng)
    n_trials = np.full(len(shapes), 4)
    samples = brain["respond"](shapes) + rng.standard_normal((len(shapes), N_VOXELS)) / 2
    z = (samples - brain["mean"]) / brain["std"]
    refined = refine(prf, brain["model"], z, n_trials)
    assert refined.shape == shapes.shape and refined.dtype == np.float32
    linear = prf.decode(z, n_trials)
    flat = shapes.reshape(len(shapes), -1)
    scores = [pairwise_identification(images.reshape(len(shapes), -1), flat).mean() for images in (linear, refined)]
    assert scores[1] > 0.85 and scores[1] > scores[0] + 0.05
    assert np.abs(refined - shapes).mean() < 0.8 * np.abs(linear - shapes).mean()


def test_suppressing_noise_greys_the_background_and_keeps_the_shapes(brain):
    """After refining, the local Wiener filter (bidsrecon.decoding.pixel_denoise) brings the grey
    background of every shape closer to grey and keeps what tells the shapes apart."""
    prf, rng = brain["prf"], brain["rng"]
    shapes = _shapes(rng)
    n_trials = np.full(len(shapes), 4)
    z = (brain["respond"](shapes) + rng.standard_normal((len(shapes), N_VOXELS)) / 2 - brain["mean"]) / brain["std"]
    refined = refine(prf, brain["model"], z, n_trials)
    cleaned = suppress_noise(refined, prf.noise_variance(z, n_trials), prf.channel_mean)
    background = (shapes == 0.5).all(axis=1)
    luminance = [to_channels(images)[:, 0].reshape(background.shape) for images in (refined, cleaned)]
    residue = [np.abs(image[background]).mean() for image in luminance]   # grey is luminance 0
    assert residue[1] < 0.7 * residue[0], residue
    flat = shapes.reshape(len(shapes), -1)
    scores = [pairwise_identification(images.reshape(len(shapes), -1), flat).mean() for images in (refined, cleaned)]
    one_judgement = 2 / (len(shapes) * (len(shapes) - 1))  # one pair of shapes told apart or not
    assert scores[1] > 0.85 and scores[1] >= scores[0] - one_judgement - 1e-9, scores


def test_the_refined_bits_do_not_depend_on_the_thread_count(brain):
    prf, rng = brain["prf"], brain["rng"]
    shapes = _shapes(rng)
    z = (brain["respond"](shapes) + rng.standard_normal((len(shapes), N_VOXELS)) - brain["mean"]) / brain["std"]
    results = []
    for threads in (1, 2):
        with task_threads(threads):
            results.append(refine(prf, brain["model"], z, np.full(len(shapes), 1)))
    assert np.array_equal(results[0], results[1])


def _voxel_population(n_images, noise_sd, spread, rng, n_voxels=400, n_regressors=11):
    """Regressors and responses of voxels whose weights scatter around a shared mean."""
    regressors = rng.standard_normal((n_images, n_regressors, n_voxels)) * rng.uniform(0.5, 2, n_voxels)
    # Orientation-like regressors that the images rarely vary alone: strongly correlated columns.
    regressors[:, 4:] = regressors[:, 3:4] + 0.2 * regressors[:, 4:]
    weights = rng.standard_normal(n_regressors) + spread * rng.standard_normal((n_voxels, n_regressors))
    centred = regressors - regressors.mean(axis=0)
    responses = np.einsum("nkv,vk->nv", centred, weights) + noise_sd * rng.standard_normal((n_images, n_voxels))
    return centred, responses - responses.mean(axis=0), weights


def _least_squares_per_voxel(centred, responses):
    """Each voxel's weights fitted alone: (n_voxels, n_regressors)."""
    return np.stack([np.linalg.lstsq(centred[:, :, v], responses[:, v], rcond=None)[0]
                     for v in range(responses.shape[1])])


def test_shrinking_towards_the_population_brings_noisy_weights_closer_to_the_true_ones():
    rng = np.random.default_rng(3)
    centred, responses, weights = _voxel_population(60, noise_sd=3.0, spread=0.3, rng=rng)
    shrunk = _population_shrunk_weights(centred, responses)
    alone = _least_squares_per_voxel(centred, responses)
    errors = [np.sqrt(((estimate - weights) ** 2).mean()) for estimate in (alone, shrunk)]
    assert errors[1] < 0.6 * errors[0], errors


def test_weights_measured_well_are_left_at_their_least_squares_estimates():
    rng = np.random.default_rng(4)
    centred, responses, _ = _voxel_population(400, noise_sd=0.05, spread=1.0, rng=rng)
    shrunk = _population_shrunk_weights(centred, responses)
    alone = _least_squares_per_voxel(centred, responses)
    np.testing.assert_allclose(shrunk, alone, atol=0.01)
