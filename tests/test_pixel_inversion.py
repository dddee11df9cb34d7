"""The luminance decoded by inverting a voxel encoding model (bidsrecon.decoding.pixel_inversion)."""
import warnings

import numpy as np
import pytest

from bidsrecon.decoding import KernelRidgeDecoder, pixel_inversion
from bidsrecon.decoding.pixel_inversion import PRIOR_WEIGHTS, fit_pixel_inversion
from bidsrecon.evaluation import pairwise_identification

SIDE, N_IMAGES, N_TRIALS, N_ITEMS = 8, 150, 2, 12


def _images(rng, n):
    """Smooth random grey images, flattened."""
    coarse = rng.random((n, SIDE // 2, SIDE // 2))
    return np.kron(coarse, np.ones((2, 2))).reshape(n, -1)


@pytest.fixture(scope="module")
def problem():
    """Voxels pooling Gaussian patches of the image (a pRF each) plus noise; 400 silent voxels."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[:SIDE, :SIDE]
    centres = rng.uniform(0, SIDE - 1, (80, 2))
    fields = np.exp(-((ys.ravel()[None] - centres[:, :1]) ** 2 + (xs.ravel()[None] - centres[:, 1:]) ** 2) / 4.0)
    fields = np.vstack([fields, np.zeros((400, SIDE * SIDE))]).T  # (pixels, voxels)
    train, test = _images(rng, N_IMAGES), _images(rng, N_ITEMS)
    image_index = np.repeat(np.arange(N_IMAGES), N_TRIALS)
    samples = train[image_index] @ fields + 2.0 * rng.standard_normal((len(image_index), fields.shape[1]))
    items = np.stack([(test[i] @ fields + 2.0 * rng.standard_normal((N_TRIALS, fields.shape[1]))).mean(axis=0)
                      for i in range(N_ITEMS)])
    mean, std = samples.mean(axis=0), samples.std(axis=0)
    return {"z": (samples - mean) / std, "items": (items - mean) / std, "train": train, "test": test,
            "image_index": image_index, "counts": np.full(N_IMAGES, N_TRIALS), "raw": samples, "raw_items": items}


def _square(images):
    return images.reshape(len(images), SIDE, SIDE)


def _decoded(inversion, train, counts, z, n_trials):
    """Pixels from coefficients, as the pixels pseudo-layer forms them."""
    coefficients = inversion.coefficients(z, n_trials)
    mean = counts @ train / counts.sum()
    return coefficients @ train + (1 - coefficients.sum(axis=1, keepdims=True)) * mean


def test_the_inversion_identifies_new_images_and_drops_the_silent_voxels(problem):
    inversion = fit_pixel_inversion(problem["z"], problem["image_index"], _square(problem["train"]), problem["counts"])
    decoded = _decoded(inversion, problem["train"], problem["counts"], problem["items"], np.full(N_ITEMS, N_TRIALS))
    assert np.mean(pairwise_identification(decoded, problem["test"])) > 0.85
    assert inversion.threshold > 0  # silent voxels only add noise: a threshold that keeps them loses
    assert not np.any(inversion.projection[:, 80:])
    assert inversion.cv_scores.shape == (len(pixel_inversion.THRESHOLDS), len(pixel_inversion.SMOOTHNESS))


def test_each_sample_gets_the_prior_of_its_largest_marginal_likelihood():
    """_posterior against the linear-Gaussian model written out in voxel space."""
    rng = np.random.default_rng(1)
    encoding, noise = rng.standard_normal((3, 6)), rng.uniform(0.5, 2.0, 6)  # 3 basis directions, 6 voxels
    precision = encoding / noise @ encoding.T
    eigenvalues, rotation = np.linalg.eigh(precision)
    projection = rotation.T @ (encoding / noise)
    scale = eigenvalues.sum() / 3
    samples = np.vstack([rng.standard_normal(3) @ encoding * 3, 0.1 * rng.standard_normal(6)])
    n_trials = np.array([2, 3])
    posterior = pixel_inversion._posterior(projection, eigenvalues, scale, samples, n_trials)
    for sample, n, got in zip(samples, n_trials, posterior):
        def log_likelihood(prior):
            covariance = np.diag(noise / n) + encoding.T @ encoding / prior
            return -np.linalg.slogdet(covariance)[1] - sample @ np.linalg.solve(covariance, sample)
        best = max(PRIOR_WEIGHTS * scale, key=log_likelihood)
        mean = np.linalg.solve(n * precision + best * np.eye(3), n * (encoding / noise) @ sample)
        np.testing.assert_allclose(rotation @ got, mean, rtol=1e-9, atol=1e-12)
    # The sample with little signal is shrunk far more.
    assert np.linalg.norm(posterior[1]) < 0.1 * np.linalg.norm(posterior[0])


def test_a_decoder_with_an_inversion_mixes_its_share_and_saves_it(problem, tmp_path):
    import nibabel as nib

    from bidsrecon.decoding.artifact import load_decoder, save_decoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an alpha on the grid's edge is no concern here
        decoder = KernelRidgeDecoder(n_folds=4).fit(problem["raw"], problem["image_index"], {"pixels": problem["train"]})
    n_trials = np.full(N_ITEMS, N_TRIALS)
    ridge = decoder.coefficients(problem["raw_items"], n_trials)["pixels"]
    inversion = fit_pixel_inversion(decoder.X_, problem["image_index"], _square(problem["train"]), problem["counts"])
    decoder.inversions_ = {"pixels": (inversion, 0.5)}
    inverted = inversion.coefficients((problem["raw_items"] - decoder.voxel_mean_) / decoder.voxel_std_, n_trials)
    mixed = decoder.coefficients(problem["raw_items"], n_trials)["pixels"]
    np.testing.assert_allclose(mixed, 0.5 * ridge + 0.5 * inverted)

    mask = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((20, 24, 1), np.uint8), np.eye(4)), mask)
    stem = tmp_path / "sub-01_decoder"
    names = [f"n{index:03d}" for index in range(N_IMAGES)]
    _, sidecar = save_decoder(stem, decoder, layers=["pixels"], encoder_name="none", encoder_weights_sha256=None,
                              image_size=SIDE, training_stimuli=names, training_stimulus_hashes=["0" * 64] * N_IMAGES,
                              voxel_mask_file=mask, software_version="test")
    assert '"Share": 0.5' in sidecar.read_text()
    loaded = load_decoder(stem)
    np.testing.assert_array_equal(loaded.coefficients(problem["raw_items"], n_trials)["pixels"], mixed)


def test_the_smoothest_prior_within_one_standard_error_of_the_best_is_chosen():
    # 5 folds x 2 thresholds x 4 smoothness values; the best is (1, 0), 0.80 +- 0.01.
    means = np.array([[0.70, 0.70, 0.70, 0.70], [0.80, 0.795, 0.785, 0.70]])
    spread = np.array([-2, -1, 0, 1, 2])[:, None, None] * 0.01 / np.std([-2, -1, 0, 1, 2], ddof=1) * np.sqrt(5)
    fold_table = means[None] + spread
    # within one standard error (0.01): smoothness 1 (0.795) but not 2 (0.785) nor 3
    assert pixel_inversion._smoothest_within_one_error(fold_table) == (1, 1)
