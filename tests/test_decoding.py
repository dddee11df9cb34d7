"""Tests of the kernel-ridge decoder and of the passes through the encoder."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as functional
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import Ridge

from bidsrecon.decoding import (
    KernelRidgeDecoder,
    collapse_onto_images,
    decode_features,
    grouped_folds,
    iter_feature_batches,
    sample_unit_features,
)
from bidsrecon.decoding.cross_validation import out_of_fold_smoothers
from bidsrecon.decoding.stage import PENALTY_IMAGES_MIN, penalty_images
from bidsrecon.errors import BidsReconError
from bidsrecon.features.correlation import profile_correlation
from bidsrecon.features.spread import spread_from_moments

torch.set_num_threads(1)


class TinyEncoder:
    """A deterministic three-layer network following the encoder interface (a test double)."""

    layers = ("conv1", "conv2", "fc")
    device = torch.device("cpu")

    def __init__(self, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.conv1_weight = torch.randn(4, 3, 3, 3, generator=generator)
        # A large bias gives the features a mean far from zero, as real pre-ReLU layers can have.
        self.conv1_bias = torch.full((4,), 20.0)
        self.conv2_weight = 0.3 * torch.randn(6, 4, 3, 3, generator=generator)
        self.fc_weight = 0.1 * torch.randn(5, 6 * 4 * 4, generator=generator)

    def features(self, images, layers):
        conv1 = functional.conv2d(images, self.conv1_weight, self.conv1_bias, padding=1)
        conv2 = functional.conv2d(functional.relu(conv1), self.conv2_weight, padding=1, stride=2)
        fc = functional.relu(conv2).flatten(1) @ self.fc_weight.T
        every_layer = {"conv1": conv1, "conv2": conv2, "fc": fc}
        return {layer: every_layer[layer] for layer in layers}


def _images(n_images, seed=0, size=8):
    return np.random.default_rng(seed).random((n_images, size, size, 3), dtype=np.float32)


def _true_features(encoder, images, layers):
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.no_grad():
        features = encoder.features(tensor, layers=list(layers))
    return {layer: value.numpy().astype(np.float64) for layer, value in features.items()}


def _zscore(X):
    std = X.std(axis=0, ddof=1)
    std[std == 0] = 1
    return (X - X.mean(axis=0)) / std, X.mean(axis=0), std


def _repeated_trials(n_images, rng, max_trials=3, skipped=()):
    """image_index with 1..max_trials trials per image, shuffled; `skipped` images get none."""
    trials = [np.full(rng.integers(1, max_trials + 1), image)
              for image in range(n_images) if image not in skipped]
    return rng.permutation(np.concatenate(trials))


def _synthetic_problem(noise, n_images=40, n_voxels=60, n_units=12, seed=0):
    """Images have a few latent factors; voxels and features are linear maps of them.

    A trial is the image's voxel pattern (the factors' map plus image-specific structure the
    features do not share) plus trial noise of SD ``noise``.
    """
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n_images, 6))
    patterns = (latent @ rng.standard_normal((6, n_voxels))
                + 0.5 * rng.standard_normal((n_images, n_voxels)))
    targets = latent @ rng.standard_normal((6, n_units))
    image_index = _repeated_trials(n_images, rng, max_trials=4)
    X = patterns[image_index] + noise * rng.standard_normal((len(image_index), n_voxels))
    return X, image_index, targets


def _reference_cv_scores(X, image_index, targets, folds, alphas, average_repeats=True, zscored=False):
    """Grouped CV with scikit-learn's Ridge: profile correlation per fold, mean over folds (``X``
    z-scored here unless ``zscored``)."""
    Xz = X if zscored else _zscore(X)[0]
    scores = np.zeros((len(alphas), len(folds)))
    for alpha_position, alpha in enumerate(alphas):
        for fold_position, fold in enumerate(folds):
            held_out = np.isin(image_index, fold)
            model = Ridge(alpha=alpha).fit(Xz[~held_out], targets[image_index[~held_out]])
            if average_repeats:
                samples = np.stack([Xz[image_index == image].mean(axis=0) for image in fold])
                true = targets[fold]
            else:
                samples, true = Xz[held_out], targets[image_index[held_out]]
            predicted = model.predict(samples)
            scores[alpha_position, fold_position] = np.mean(
                [np.corrcoef(predicted[:, unit], true[:, unit])[0, 1]
                 for unit in range(targets.shape[1])])
    return scores.mean(axis=1)


@pytest.mark.filterwarnings("ignore:Layer")
def test_decoding_equals_dual_kernel_ridge_and_sklearn_ridge():
    rng = np.random.default_rng(1)
    encoder = TinyEncoder()
    n_images, n_voxels = 11, 40
    images = _images(n_images)
    # Image 10 has no trial: its column must get zero weight everywhere.
    image_index = _repeated_trials(n_images, rng, skipped=(10,))
    X = rng.standard_normal((len(image_index), n_voxels)) + 3.0
    X[:, 5] = 7.0  # a constant voxel
    X_test = rng.standard_normal((4, n_voxels)) + 3.0
    cv_targets, _ = sample_unit_features(encoder, images, encoder.layers, n_units=20)

    decoder = KernelRidgeDecoder(alphas=[0.01, 0.1, 1.0], n_folds=3).fit(
        X, image_index, cv_targets)
    coefficients = decoder.coefficients(X_test)
    counts = np.bincount(image_index, minlength=n_images)
    decoded, _, _ = decode_features(encoder, images, coefficients, counts, batch_size=3,
                                    progress=False)

    Xz, mean, std = _zscore(X)
    Xz_test = (X_test - mean) / std
    kernel = Xz @ Xz.T
    onehot = np.eye(n_images)[image_index]
    features = _true_features(encoder, images, encoder.layers)
    for layer, alpha in decoder.alpha_.items():
        dual = Xz_test @ Xz.T @ np.linalg.inv(kernel + alpha * np.eye(len(kernel)))
        np.testing.assert_allclose(coefficients[layer], dual @ onehot, rtol=1e-9, atol=1e-12)
        assert np.all(coefficients[layer][:, 10] == 0)

        Y = features[layer].reshape(n_images, -1)[image_index]
        train_mean = Y.mean(axis=0)
        dual_prediction = train_mean + dual @ (Y - train_mean)
        sklearn_prediction = Ridge(alpha=alpha).fit(Xz, Y).predict(Xz_test)
        ours = decoded[layer].reshape(len(X_test), -1).astype(np.float64)
        scale = np.abs(sklearn_prediction).max()
        np.testing.assert_allclose(dual_prediction, sklearn_prediction, atol=1e-9 * scale)
        assert np.abs(ours - sklearn_prediction).max() <= 1e-6 * scale
        # The test has teeth: the shrinkage towards the mean is far above the tolerance.
        assert np.abs(sklearn_prediction - train_mean).max() > 1e-3 * scale


@pytest.mark.filterwarnings("ignore:Layer")
def test_voxels_weigh_by_their_reliability_over_repeated_images():
    """Each voxel's kernel weight is its F ratio over the training images minus 1 (floored at 0,
    mean 1): the decoder is the dual ridge on voxels scaled by the weights' square roots, voxels
    that respond to nothing weigh next to nothing, and new images decode better than with equal
    weights."""
    rng = np.random.default_rng(3)
    n_images, n_test, n_signal, n_noise, repeats = 60, 30, 40, 400, 3
    latent = rng.standard_normal((n_images + n_test, 6))
    patterns = np.hstack([latent @ rng.standard_normal((6, n_signal)), np.zeros((n_images + n_test, n_noise))])
    targets = latent @ rng.standard_normal((6, 12))
    image_index = np.repeat(np.arange(n_images), repeats)
    X = patterns[image_index] + 2.0 * rng.standard_normal((len(image_index), n_signal + n_noise))
    X_test = patterns[n_images:] + 2.0 / np.sqrt(repeats) * rng.standard_normal((n_test, n_signal + n_noise))
    cv_targets = {"layer": targets[:n_images]}
    weighted = KernelRidgeDecoder(n_folds=4).fit(X, image_index, cv_targets)
    equal = KernelRidgeDecoder(n_folds=4, voxel_weights="none").fit(X, image_index, cv_targets)

    image_means = np.stack([X[image_index == image].mean(axis=0) for image in range(n_images)])
    between = repeats * image_means.var(axis=0, ddof=1)
    within = ((X - image_means[image_index]) ** 2).sum(axis=0) / (len(X) - n_images)
    expected = np.clip(between / within - 1, 0, None)
    np.testing.assert_allclose(weighted.voxel_weight_, expected / expected.mean(), rtol=1e-9)
    assert equal.voxel_weight_ is None
    assert weighted.voxel_weight_[n_signal:].mean() < 0.05 * weighted.voxel_weight_[:n_signal].mean()

    Xz, mean, std = _zscore(X)
    scaled, scaled_test = Xz * np.sqrt(weighted.voxel_weight_), (X_test - mean) / std * np.sqrt(weighted.voxel_weight_)
    alpha = weighted.alpha_["layer"]
    dual = scaled_test @ scaled.T @ np.linalg.inv(scaled @ scaled.T + alpha * np.eye(len(X)))
    coefficients = weighted.coefficients(X_test)["layer"]
    np.testing.assert_allclose(coefficients, dual @ np.eye(n_images)[image_index], rtol=1e-8, atol=1e-12)

    def accuracy(decoder):
        weights = decoder.coefficients(X_test)["layer"]
        decoded = weights @ targets[:n_images] + (1 - weights.sum(1, keepdims=True)) * targets[:n_images].mean(0)
        return np.mean(profile_correlation(decoded, targets[n_images:]))

    assert accuracy(weighted) > accuracy(equal) + 0.03  # 0.973 against 0.926


def test_voxel_weights_must_be_known():
    X, image_index, targets = _synthetic_problem(noise=1.0)
    with pytest.raises(ValueError, match="voxel_weights must be one of"):
        KernelRidgeDecoder(voxel_weights="snr").fit(X, image_index, {"layer": targets})


def test_collapse_onto_images_sums_the_samples_of_each_image():
    sample_coefficients = np.arange(12.0).reshape(2, 6)
    collapsed = collapse_onto_images(sample_coefficients, np.array([2, 0, 2, 1, 2, 0]), 4)
    np.testing.assert_array_equal(collapsed, [[1 + 5, 3, 0 + 2 + 4, 0],
                                              [7 + 11, 9, 6 + 8 + 10, 0]])


def test_grouped_folds_keep_all_trials_of_an_image_together():
    rng = np.random.default_rng(2)
    image_index = _repeated_trials(23, rng, skipped=(4, 17))
    folds = grouped_folds(image_index, 5, random_state=3)
    held_out = np.concatenate(folds)
    # Every shown image is held out exactly once, as a whole; unshown images never are.
    np.testing.assert_array_equal(np.sort(held_out), np.unique(image_index))
    assert sorted(len(fold) for fold in folds) == [4, 4, 4, 4, 5]
    for fold in folds:
        held_out_samples = np.isin(image_index, fold)
        assert not set(image_index[held_out_samples]) & set(image_index[~held_out_samples])
    again = grouped_folds(image_index, 5, random_state=3)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again))


def test_out_of_fold_predictions_never_see_the_held_out_images():
    X, image_index, _ = _synthetic_problem(noise=1.0, n_images=12)
    Xz = _zscore(X)[0]
    folds = grouped_folds(image_index, 3)
    smoothers = out_of_fold_smoothers(Xz @ Xz.T, image_index, 12, folds, np.array([1.0, 50.0]))
    for fold in folds:
        assert np.all(smoothers[:, fold][:, :, fold] == 0)
    # Each prediction is an affine combination of training images: constants are reproduced.
    np.testing.assert_allclose(smoothers.sum(axis=2), 1.0, atol=1e-10)


@pytest.mark.filterwarnings("ignore:Layer")
def test_cv_scores_average_held_out_repeats_like_test_data():
    X, image_index, targets = _synthetic_problem(noise=3.0)
    decoder = KernelRidgeDecoder(alphas=np.logspace(-2, 2, 5), n_folds=4, random_state=1, voxel_weights="none")
    decoder.fit(X, image_index, {"layer": targets})
    folds = grouped_folds(image_index, 4, random_state=1)

    averaged = _reference_cv_scores(X, image_index, targets, folds, decoder.alphas_)
    single_trials = _reference_cv_scores(X, image_index, targets, folds, decoder.alphas_,
                                         average_repeats=False)
    np.testing.assert_allclose(decoder.cv_scores_["layer"], averaged, rtol=1e-8)
    assert np.abs(averaged - single_trials).max() > 0.05  # the two protocols differ


def test_cv_chooses_the_best_alpha_and_more_shrinkage_for_noisier_data():
    chosen = {}
    for noise in (0.5, 10.0):
        X, image_index, targets = _synthetic_problem(noise=noise, n_images=60, n_voxels=80)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the optimum must lie inside the default grid
            decoder = KernelRidgeDecoder().fit(X, image_index, {"layer": targets})
        scores = decoder.cv_scores_["layer"]
        assert decoder.alpha_["layer"] == decoder.alphas_[np.argmax(scores)]
        assert scores.max() > 0.3
        chosen[noise] = decoder.alpha_["layer"]
    assert chosen[10.0] > 10 * chosen[0.5]


def test_penalty_on_a_subset_of_images_is_the_cross_validation_of_their_samples():
    X, image_index, targets = _synthetic_problem(noise=3.0, n_images=40, n_voxels=50)
    subset = np.arange(0, 40, 2)
    alphas = np.logspace(-2, 2, 5)
    on_subset = KernelRidgeDecoder(alphas=alphas, n_folds=4, voxel_weights="none").fit(
        X, image_index, {"layer": targets[subset]}, cv_images=subset)
    # The cross-validation of those images' samples alone, z-scored with every sample's statistics;
    # the decoder keeps every sample.
    kept = np.isin(image_index, subset)
    renumbered = np.searchsorted(subset, image_index[kept])
    folds = grouped_folds(renumbered, 4, random_state=0)
    expected = _reference_cv_scores(_zscore(X)[0][kept], renumbered, targets[subset], folds, on_subset.alphas_,
                                    zscored=True)
    np.testing.assert_allclose(on_subset.cv_scores_["layer"], expected, rtol=1e-8)
    assert on_subset.X_.shape == X.shape and on_subset.n_images_ == 40
    every = KernelRidgeDecoder(alphas=alphas, n_folds=4).fit(X, image_index, {"layer": targets},
                                                             cv_images=np.arange(40))
    today = KernelRidgeDecoder(alphas=alphas, n_folds=4).fit(X, image_index, {"layer": targets})
    np.testing.assert_array_equal(every.cv_scores_["layer"], today.cv_scores_["layer"])
    with pytest.raises(ValueError, match="ascending image numbers"):
        KernelRidgeDecoder().fit(X, image_index, {"layer": targets[subset]}, cv_images=subset[::-1])


def test_penalty_images_are_a_seeded_share_of_the_training_images():
    assert penalty_images(PENALTY_IMAGES_MIN, seed=0, share=0.15) is None  # few images: all of them
    chosen = penalty_images(1200, seed=0, share=0.15)
    assert len(chosen) == 180 and np.all(np.diff(chosen) > 0) and chosen[-1] < 1200
    np.testing.assert_array_equal(chosen, penalty_images(1200, seed=0, share=0.15))
    assert not np.array_equal(chosen, penalty_images(1200, seed=1, share=0.15))
    assert len(penalty_images(400, seed=0, share=0.15)) == PENALTY_IMAGES_MIN


def test_relative_alphas_are_scaled_by_the_kernel_diagonal():
    X, image_index, targets = _synthetic_problem(noise=1.0, n_images=10, n_voxels=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        decoder = KernelRidgeDecoder(alphas=[1.0, 2.0], n_folds=2).fit(
            X, image_index, {"layer": targets})
    mean_diagonal = np.mean(np.sum(_zscore(X)[0] ** 2, axis=1))
    np.testing.assert_allclose(decoder.alphas_, [mean_diagonal, 2 * mean_diagonal])
    assert decoder.n_images_ == 10 and decoder.X_.shape == X.shape


def test_decode_features_is_the_count_weighted_combination_in_any_batch_size():
    rng = np.random.default_rng(4)
    encoder = TinyEncoder()
    n_images = 9
    images = _images(n_images, seed=5)
    counts = np.array([0, 2, 1, 5, 1, 0, 3, 2, 1])
    coefficients = {"conv1": rng.standard_normal((3, n_images)),
                    "fc": rng.standard_normal((2, n_images))}
    features = _true_features(encoder, images, coefficients)

    decoded, train_mean, train_spread = decode_features(
        encoder, images, coefficients, counts, batch_size=4, progress=False)
    decoded_one_batch, _, _ = decode_features(encoder, images, coefficients, counts,
                                              batch_size=n_images, progress=False)
    for layer, layer_coefficients in coefficients.items():
        flat = features[layer].reshape(n_images, -1)
        mean = counts @ flat / counts.sum()
        mean_square = counts @ flat**2 / counts.sum()
        layer_shape = features[layer].shape[1:]
        assert train_mean[layer].shape == layer_shape
        np.testing.assert_allclose(train_mean[layer].reshape(-1), mean, rtol=1e-6, atol=1e-5)
        assert train_spread[layer] == pytest.approx(
            spread_from_moments(mean.reshape(layer_shape), mean_square.reshape(layer_shape)),
            rel=1e-5)
        expected = (layer_coefficients @ flat
                    + (1 - layer_coefficients.sum(axis=1))[:, None] * mean[None, :])
        assert decoded[layer].dtype == np.float32
        assert decoded[layer].shape == (len(layer_coefficients),) + layer_shape
        scale = np.abs(expected).max()
        assert np.abs(decoded[layer].reshape(len(expected), -1) - expected).max() < 1e-5 * scale
        np.testing.assert_allclose(decoded[layer], decoded_one_batch[layer],
                                   atol=1e-5 * scale, rtol=0)


def test_iter_feature_batches_streams_small_batches_from_arrays_or_sequences():
    encoder = TinyEncoder()
    images = _images(7, seed=6)
    features = _true_features(encoder, images, ["conv2", "fc"])
    from_array = list(iter_feature_batches(encoder, images, ["conv2", "fc"], batch_size=3))
    from_list = list(iter_feature_batches(encoder, list(images), ["conv2", "fc"], batch_size=3))
    assert [start for start, _ in from_array] == [0, 3, 6]
    for (start, batch), (_, batch_from_list) in zip(from_array, from_list):
        assert set(batch) == {"conv2", "fc"}
        assert batch["conv2"].dtype == np.float32 and len(batch["conv2"]) <= 3
        np.testing.assert_allclose(batch["conv2"], features["conv2"][start:start + 3], rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_array_equal(batch["fc"], batch_from_list["fc"])


def test_iter_feature_batches_leaves_gradients_enabled_for_the_caller():
    batches = iter_feature_batches(TinyEncoder(), _images(4), ["fc"], batch_size=2)
    next(batches)
    assert torch.is_grad_enabled()


def test_sample_unit_features_draws_units_per_layer_reproducibly():
    encoder = TinyEncoder()
    images = _images(6, seed=7)
    features = _true_features(encoder, images, encoder.layers)
    sampled, unit_indices = sample_unit_features(encoder, images, ["conv1", "fc"], n_units=50,
                                                 batch_size=4)
    assert len(unit_indices["conv1"]) == 50 and len(unit_indices["fc"]) == 5  # fc has 5 units
    assert np.all(np.diff(unit_indices["conv1"]) > 0) and unit_indices["conv1"].max() < 256
    np.testing.assert_allclose(sampled["conv1"],
                               features["conv1"].reshape(6, -1)[:, unit_indices["conv1"]],
                               atol=1e-5)
    _, conv1_alone = sample_unit_features(encoder, images, ["conv1"], n_units=50)
    np.testing.assert_array_equal(conv1_alone["conv1"], unit_indices["conv1"])
    _, other_seed = sample_unit_features(encoder, images, ["conv1"], n_units=50, seed=1)
    assert not np.array_equal(other_seed["conv1"], unit_indices["conv1"])


def test_fit_rejects_inconsistent_inputs_with_clear_messages():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((6, 4))
    targets = {"fc": rng.standard_normal((3, 2))}
    decoder = KernelRidgeDecoder(n_folds=2)
    with pytest.raises(ValueError, match="X has 6 samples but image_index has 5"):
        decoder.fit(X, np.array([0, 1, 2, 0, 1]), targets)
    with pytest.raises(ValueError, match=r"image_index must lie in \[0, 3\).*from 0 to 3"):
        decoder.fit(X, np.array([0, 1, 2, 3, 1, 2]), targets)
    with pytest.raises(ValueError, match="1-D array of integers"):
        decoder.fit(X, np.array([0.0, 1, 2, 0, 1, 2]), targets)
    with pytest.raises(ValueError, match="one row per training image"):
        decoder.fit(X, np.array([0, 1, 2, 0, 1, 2]),
                    {"fc": targets["fc"], "conv": rng.standard_normal((4, 2))})
    with pytest.raises(BidsReconError, match="3 unique images, fewer than two for each of the 5"):
        KernelRidgeDecoder(n_folds=5).fit(X, np.array([0, 1, 2, 0, 1, 2]), targets)
    with pytest.raises(ValueError, match="n_folds must be an integer >= 2"):
        KernelRidgeDecoder(n_folds=1).fit(X, np.array([0, 1, 2, 0, 1, 2]), targets)
    with pytest.raises(ValueError, match="positive numbers"):
        KernelRidgeDecoder(alphas=[1.0, -1.0], n_folds=2).fit(
            X, np.array([0, 1, 2, 0, 1, 2]), targets)


def test_coefficients_need_a_fitted_decoder_and_matching_voxels():
    X, image_index, targets = _synthetic_problem(noise=1.0, n_images=8, n_voxels=10)
    with pytest.raises(NotFittedError):
        KernelRidgeDecoder().coefficients(X[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        decoder = KernelRidgeDecoder(n_folds=2).fit(X, image_index, {"layer": targets})
    with pytest.raises(ValueError, match="X_test has 9 voxels; the decoder was fitted on 10"):
        decoder.coefficients(X[:2, :9])


def test_stream_rejects_bad_images_layers_and_counts():
    encoder = TinyEncoder()
    images = _images(4)
    coefficients = {"fc": np.ones((2, 4))}
    with pytest.raises(ValueError, match=r"values in \[0, 1\]; images 0-3 range from .* to 2\d\d"):
        next(iter_feature_batches(encoder, images * 255, ["fc"]))
    with pytest.raises(ValueError, match=r"Unknown layers \['fc9'\]; this encoder has"):
        next(iter_feature_batches(encoder, images, ["fc9"]))
    with pytest.raises(ValueError, match=r"counts must be 4 integers"):
        decode_features(encoder, images, coefficients, np.ones(3, int), progress=False)
    with pytest.raises(ValueError, match=r"must have shape \(n_items, 4\)"):
        decode_features(encoder, images, {"fc": np.ones((2, 5))}, np.ones(4, int),
                        progress=False)


def test_decoding_through_the_packaged_random_efficientnet():
    encoders = pytest.importorskip(
        "bidsrecon.encoders", reason="bidsrecon.encoders is not written yet")
    if not hasattr(encoders, "get_encoder"):
        pytest.skip("bidsrecon.encoders.get_encoder is not written yet")
    encoder = encoders.get_encoder("efficientnet-lite0-random")
    layers = [encoder.layers[0], encoder.layers[-1]]
    images = _images(5, seed=9, size=64)
    counts = np.array([1, 2, 0, 1, 3])
    coefficients = {layer: np.random.default_rng(10).standard_normal((2, 5)) for layer in layers}
    decoded, train_mean, _ = decode_features(encoder, images, coefficients, counts,
                                             batch_size=2, progress=False)
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).to(encoder.device)
    with torch.no_grad():
        features = encoder.features(tensor, layers=layers)
    for layer in layers:
        flat = features[layer].cpu().numpy().astype(np.float64).reshape(5, -1)
        mean = counts @ flat / counts.sum()
        expected = (coefficients[layer] @ flat
                    + (1 - coefficients[layer].sum(axis=1))[:, None] * mean)
        scale = np.abs(expected).max()
        assert np.abs(decoded[layer].reshape(2, -1) - expected).max() < 1e-4 * scale
        np.testing.assert_allclose(train_mean[layer].reshape(-1), mean,
                                   atol=1e-4 * np.abs(mean).max())


def test_plan_layer_groups_packs_layers_in_network_order_under_the_budget():
    from bidsrecon.decoding.memory import decoding_memory, plan_layer_groups

    layer_units = {"a": 1000, "b": 1000, "c": 100, "d": 10}
    layer_items = {"d": 2, "a": 2, "b": 2, "c": 2}
    everything = decoding_memory(layer_units, layer_items, batch_size=4)
    assert plan_layer_groups(layer_units, layer_items, 4, everything) == [["a", "b", "c", "d"]]
    groups = plan_layer_groups(layer_units, layer_items, 4, everything - 1)
    assert len(groups) > 1 and sum(groups, []) == ["a", "b", "c", "d"]
    outputs = 4 * 2 * sum(layer_units.values())
    for group in groups:
        group_memory = decoding_memory(layer_units, {layer: 2 for layer in group}, 4)
        group_outputs = 4 * 2 * sum(layer_units[layer] for layer in group)
        assert outputs + group_memory - group_outputs <= everything - 1
    with pytest.raises(BidsReconError, match="too small to decode layer 'a'"):
        plan_layer_groups(layer_units, layer_items, 4, outputs + 1000)
    with pytest.raises(ValueError, match="memory_budget must be a positive number of bytes"):
        plan_layer_groups(layer_units, layer_items, 4, 0)


def test_decode_features_under_a_memory_budget_matches_one_pass():
    from bidsrecon.decoding.memory import decoding_memory, plan_layer_groups
    from bidsrecon.decoding.stream import _layer_units

    encoder = TinyEncoder()
    images = _images(6, seed=11)
    rng = np.random.default_rng(12)
    counts = np.array([1, 2, 1, 3, 1, 2])
    coefficients = {layer: rng.standard_normal((2, 6)) for layer in ("fc", "conv1", "conv2")}
    layer_units = {"conv1": 4 * 8 * 8, "conv2": 6 * 4 * 4, "fc": 5}
    budget = decoding_memory(layer_units, {"conv1": 2}, 3) + 4 * 2 * (96 + 5)
    assert _layer_units(encoder, images) == layer_units
    # conv1 alone fills the budget with everyone's outputs: two passes.
    assert plan_layer_groups(layer_units, {layer: 2 for layer in coefficients}, 3, budget) == [
        ["conv1"], ["conv2", "fc"]]
    decoded, train_mean, train_spread = decode_features(
        encoder, images, coefficients, counts, batch_size=3, progress=False,
        memory_budget=budget)
    reference, reference_mean, reference_spread = decode_features(
        encoder, images, coefficients, counts, batch_size=3, progress=False)
    assert list(decoded) == ["fc", "conv1", "conv2"]  # the caller's order
    for layer in coefficients:
        scale = np.abs(reference[layer]).max()
        np.testing.assert_allclose(decoded[layer], reference[layer], atol=1e-6 * scale)
        np.testing.assert_allclose(train_mean[layer], reference_mean[layer], rtol=1e-6)
        assert train_spread[layer] == pytest.approx(reference_spread[layer], rel=1e-6)


def test_plan_decoding_prefers_a_smaller_batch_to_a_second_pass():
    from bidsrecon.decoding.memory import decoding_memory, plan_decoding, plan_layer_groups

    layer_units = {"a": 1000, "b": 500, "c": 10}
    layer_items = dict.fromkeys(layer_units, 2)
    # Layer a alone fits a batch of 8 (with everyone's outputs); all three fit a batch of 5.
    budget = decoding_memory(layer_units, {"a": 2}, 8) + 4 * 2 * (500 + 10)
    assert decoding_memory(layer_units, layer_items, 5) <= budget < decoding_memory(layer_units, layer_items, 6)
    assert len(plan_layer_groups(layer_units, layer_items, 8, budget)) == 2
    assert plan_decoding(layer_units, layer_items, 8, budget) == (5, [["a", "b", "c"]])
    # Not below a quarter of the batch: 16 equal layers fit one group only at a batch of 2 when
    # one of them fits a batch of 16, so the layers are split at the batch asked for.
    many = {f"l{index}": 1000 for index in range(16)}
    many_items = dict.fromkeys(many, 2)
    budget = decoding_memory(many, {"l0": 2}, 16) + 4 * 2 * 1000 * 15
    assert decoding_memory(many, many_items, 3) > budget
    assert plan_decoding(many, many_items, 16, budget) == (
        16, plan_layer_groups(many, many_items, 16, budget))


def test_uint8_images_decode_exactly_as_their_float32_values():
    encoder = TinyEncoder()
    pixels = np.random.default_rng(3).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    coefficients = {"conv1": np.random.default_rng(4).standard_normal((2, 5))}
    counts = np.array([1, 2, 1, 1, 2])
    from_uint8 = decode_features(encoder, pixels, coefficients, counts, batch_size=2, progress=False)
    from_float = decode_features(encoder, pixels.astype(np.float32) / 255.0, coefficients, counts,
                                 batch_size=2, progress=False)
    for ours, reference in zip(from_uint8, from_float):
        np.testing.assert_array_equal(ours["conv1"], reference["conv1"])


@pytest.mark.parametrize("n_images", [1, 5, 7, 8, 13])
def test_gathered_batches_decode_as_one_batch_at_a_time(n_images, monkeypatch):
    """Batches are gathered before each sweep of the outputs; a partial last gathering included."""
    from bidsrecon.decoding import stream

    encoder = TinyEncoder()
    images = _images(n_images, seed=21)
    rng = np.random.default_rng(22)
    coefficients = {layer: rng.standard_normal((3, n_images)) for layer in ("conv1", "fc")}
    counts = rng.integers(1, 4, n_images)
    gathered = decode_features(encoder, images, coefficients, counts, batch_size=2, progress=False)
    monkeypatch.setattr(stream, "ACCUMULATED_BATCHES", 1)
    one_by_one = decode_features(encoder, images, coefficients, counts, batch_size=2, progress=False)
    for layer in coefficients:
        for result, expected in zip(gathered, one_by_one):
            scale = np.abs(np.asarray(expected[layer])).max()
            np.testing.assert_allclose(result[layer], expected[layer], atol=1e-6 * scale, rtol=1e-5)


# ---------------------------------------------------------------- alpha for the test items' trials

def _two_trial_training_and_averaged_test(n_test_trials, noise=6.0, n_train=240, n_test=400, seed=0):
    """Training images shown twice; fresh test images averaged over ``n_test_trials`` trials."""
    rng = np.random.default_rng(seed)
    n_voxels, n_units = 100, 40
    to_voxels, to_units = rng.standard_normal((8, n_voxels)), rng.standard_normal((8, n_units))

    def images(n):
        latent = rng.standard_normal((n, 8))
        return latent @ to_voxels + 0.5 * rng.standard_normal((n, n_voxels)), latent @ to_units

    train_patterns, train_targets = images(n_train)
    image_index = np.repeat(np.arange(n_train), 2)
    X = train_patterns[image_index] + noise * rng.standard_normal((len(image_index), n_voxels))
    test_patterns, test_targets = images(n_test)
    X_test = test_patterns + noise * rng.standard_normal((n_test, n_voxels)) / np.sqrt(n_test_trials)
    return X, image_index, train_targets, X_test, test_targets


@pytest.mark.filterwarnings("ignore:Layer")
def test_scores_for_the_held_out_images_own_trial_count_are_uncorrected():
    """Scored for as many trials as the held-out images average, nothing is corrected: the
    scores are the plain ones (moments pooled over folds instead of correlations averaged)."""
    X, image_index, targets, _, _ = _two_trial_training_and_averaged_test(2, noise=15.0)
    plain = KernelRidgeDecoder().fit(X, image_index, {"layer": targets})
    for_two = KernelRidgeDecoder().fit(X, image_index, {"layer": targets}, test_trials=[2, 2])
    assert for_two.trial_counts_ == (2,)
    np.testing.assert_allclose(for_two.cv_scores_by_trials_["layer"][2], plain.cv_scores_["layer"], atol=0.01)
    assert for_two.alpha_ == plain.alpha_


@pytest.mark.filterwarnings("ignore:Layer")
def test_alpha_is_chosen_for_the_test_items_trial_count():
    """Held-out images average 2 trials, test items 16: scored as 16-trial averages, the CV
    curve follows the test items' real one and its choice decodes them at least as well."""
    X, image_index, targets, X_test, test_targets = _two_trial_training_and_averaged_test(16, noise=15.0)
    decoder = KernelRidgeDecoder(voxel_weights="none").fit(X, image_index, {"layer": targets}, test_trials=[2, 16])
    decoder_at = KernelRidgeDecoder(voxel_weights="none").fit(X, image_index, {"layer": targets})
    test_scores = []
    for alpha in decoder.alphas_:
        decoder_at.alpha_ = {"layer": alpha}
        weights = decoder_at.coefficients(X_test)["layer"]
        predicted = weights @ targets + (1 - weights.sum(1, keepdims=True)) * targets.mean(0)
        test_scores.append(np.nanmean(profile_correlation(predicted, test_targets)))
    test_scores = np.array(test_scores)
    chosen = {count: int(np.flatnonzero(decoder.alphas_ == alpha)[0])
              for count, alpha in decoder.alpha_by_trials_["layer"].items()}
    assert chosen[16] < chosen[2]  # less noise, less shrinkage
    assert test_scores[chosen[16]] > test_scores[chosen[2]]
    assert test_scores[chosen[16]] >= test_scores.max() - 0.005
    # The scores for 16 trials estimate the test items' correlations; the 2-trial ones do not.
    assert np.abs(decoder.cv_scores_by_trials_["layer"][16] - test_scores).max() < 0.05
    assert np.abs(decoder.cv_scores_by_trials_["layer"][2] - test_scores).max() > 0.2
    assert decoder.alpha_["layer"] == decoder.alpha_by_trials_["layer"][16]
    # Each item is decoded with its own count's alpha.
    both = decoder.coefficients(X_test[:4], test_trials=[2, 16, 16, 2])["layer"]
    for row, count in enumerate([2, 16, 16, 2]):
        decoder_at.alpha_ = {"layer": decoder.alpha_by_trials_["layer"][count]}
        np.testing.assert_allclose(both[row], decoder_at.coefficients(X_test[[row]])["layer"][0], rtol=1e-10)


def test_decode_pass_keeps_the_sampled_units_of_every_image():
    encoder, images = TinyEncoder(), _images(10)
    sampled, indices = sample_unit_features(encoder, images, ["conv1", "fc"], n_units=7)
    kept = dict(indices)
    coefficients = {layer: np.full((2, 10), 0.1) for layer in ("conv1", "conv2", "fc")}
    decode_features(encoder, images, coefficients, np.ones(10, int), batch_size=3, progress=False,
                    sampled_units=kept)
    assert set(kept) == {"conv1", "fc"}
    for layer, (layer_indices, features) in kept.items():
        np.testing.assert_array_equal(layer_indices, indices[layer])
        np.testing.assert_array_equal(features, sampled[layer])
