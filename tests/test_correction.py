"""Tests of the decoded-feature corrections (REFERENCE.md §1) and of the statistics they read."""
import numpy as np
import pytest
import torch
import torch.nn.functional as functional

from bidsrecon.decoding import decode_features
from bidsrecon.features.spread import channel_sd, item_spread, lab_feature_std, positions_per_channel
from bidsrecon.recon.correction import (
    CORRECTION_METHODS,
    correct_features,
    correct_spread,
    correction_statistics,
)

torch.set_num_threads(1)

LAB_METHODS = ("lab2019", "cookbook", "cookbook-trainmean")


# ---------------------------------------------------------------- direct formulas (the lab's)

def _estimate_cnn_feat_std(item):
    """icnn's estimate_cnn_feat_std of one item, written out: ddof 0, per channel, averaged."""
    if item.ndim == 1:
        return np.std(item)
    return np.mean([np.std(item[channel]) for channel in range(item.shape[0])])


def _normalize_feature_self_shift(item, scale):
    """bdpy's normalize_feature(item, channel_wise_mean=False, channel_wise_std=False,
    channel_axis=0, shift='self', scale=scale, std_ddof=1), written out."""
    mean = np.mean(item)
    if item.ndim == 1:
        sd = np.std(item, ddof=1)
    else:
        sd = np.mean(np.std(item, axis=tuple(range(1, item.ndim)), ddof=1))
    return (item - mean) / sd * scale + mean


def _stats(item_shape, seed=0):
    rng = np.random.default_rng(seed)
    n_channels = item_shape[0] if len(item_shape) > 1 else 1
    return {
        "train_mean": rng.normal(size=item_shape),
        "train_spread": 1.7,
        "feature_std": rng.uniform(0.5, 2.0, size=n_channels),
    }


def _decoded(item_shape, n_items=3, seed=1):
    rng = np.random.default_rng(seed)
    # Channel means and scales differ, as in a real layer, so that per-channel SDs matter.
    scales = rng.uniform(0.2, 3.0, size=(1, item_shape[0]) + (1,) * (len(item_shape) - 1))
    offsets = rng.normal(scale=5.0, size=scales.shape)
    if len(item_shape) == 1:
        scales, offsets = scales.ravel()[None, :1], offsets.ravel()[None, :1]
    return rng.normal(size=(n_items, *item_shape)) * scales + offsets


# ---------------------------------------------------------------- hand-computed values

def test_lab2019_on_a_hand_made_vector():
    # x = [1, 3]: SD (ddof 0) 1. feature_std 2 with ddof 1 over 2 units is 2·sqrt(1/2) with ddof 0.
    decoded = {"fc": np.array([[1.0, 3.0]])}
    corrected = correct_features(decoded, {"feature_std": {"fc": np.array([2.0])}}, "lab2019")
    np.testing.assert_allclose(corrected["fc"], [[np.sqrt(2.0), 3 * np.sqrt(2.0)]], rtol=1e-6)


def test_cookbook_on_a_hand_made_vector():
    # x = [0, 2, 4]: mean 2, SD (ddof 1) 2; scale to 1 about the mean: [1, 2, 3].
    decoded = {"fc": np.array([[0.0, 2.0, 4.0]])}
    corrected = correct_features(decoded, {"feature_std": {"fc": np.array([1.0])}}, "cookbook")
    np.testing.assert_allclose(corrected["fc"], [[1.0, 2.0, 3.0]], rtol=1e-6)


def test_cookbook_trainmean_on_a_hand_made_vector():
    # x - m = [0, 4, 2]: mean 2, SD (ddof 1) 2 -> [1, 3, 2]; plus m: [2, 4, 3].
    decoded = {"fc": np.array([[1.0, 5.0, 3.0]])}
    stats = {"feature_std": {"fc": np.array([1.0])}, "train_mean": {"fc": np.ones(3)}}
    corrected = correct_features(decoded, stats, "cookbook-trainmean")
    np.testing.assert_allclose(corrected["fc"], [[2.0, 4.0, 3.0]], rtol=1e-6)


def test_cookbook_on_a_hand_made_conv_item():
    # Channel 0: [0, 2] (SD ddof 1 sqrt(2)), channel 1: [1, 1, ...] -> [[0, 2], [4, 4]], SD 0.
    # Mean SD over channels sqrt(2)/2; item mean 2.5; feature_std mean (1 + 3) / 2 = 2.
    item = np.array([[[0.0, 2.0]], [[4.0, 4.0]]])  # (C=2, H=1, W=2)
    decoded = {"conv": item[None]}
    corrected = correct_features(decoded, {"feature_std": {"conv": np.array([1.0, 3.0])}}, "cookbook")
    scale = 2.0 / (np.sqrt(2.0) / 2)
    np.testing.assert_allclose(corrected["conv"][0], (item - 2.5) * scale + 2.5, rtol=1e-6)


def test_lab2019_on_a_hand_made_conv_item():
    # Channel SDs (ddof 0): [0, 2] -> 1, [3, 3] -> 0; mean 0.5. feature_std 4 (ddof 1, 2 positions)
    # is 4·sqrt(1/2) with ddof 0.
    item = np.array([[[0.0, 2.0]], [[3.0, 3.0]]])
    corrected = correct_features({"conv": item[None]}, {"feature_std": {"conv": np.array([4.0, 4.0])}},
                                 "lab2019")
    np.testing.assert_allclose(corrected["conv"][0], item * 4 * np.sqrt(0.5) / 0.5, rtol=1e-6)


# ---------------------------------------------------------------- against the lab's formulas

@pytest.mark.parametrize("item_shape", [(4, 5, 6), (3, 1, 7), (9,)])
def test_lab2019_is_the_2019_scripts_formula(item_shape):
    decoded, stats = _decoded(item_shape), _stats(item_shape)
    corrected = correct_features({"layer": decoded}, {"feature_std": {"layer": stats["feature_std"]}},
                                 "lab2019")["layer"]
    n_positions = positions_per_channel(item_shape)
    feat_std0 = np.mean(stats["feature_std"]) * np.sqrt((n_positions - 1) / n_positions)
    for item, result in zip(decoded, corrected):
        np.testing.assert_allclose(result, item / _estimate_cnn_feat_std(item) * feat_std0, rtol=1e-5)
        # No centring: the sign of every unit is kept.
        assert np.array_equal(np.sign(result), np.sign(item.astype(np.float32)))
        assert _estimate_cnn_feat_std(result.astype(np.float64)) == pytest.approx(feat_std0, rel=1e-5)


@pytest.mark.parametrize("item_shape", [(4, 5, 6), (3, 1, 7), (9,)])
def test_cookbook_is_normalize_feature_with_self_shift(item_shape):
    decoded, stats = _decoded(item_shape), _stats(item_shape)
    corrected = correct_features({"layer": decoded}, {"feature_std": {"layer": stats["feature_std"]}},
                                 "cookbook")["layer"]
    for item, result in zip(decoded, corrected):
        expected = _normalize_feature_self_shift(item, np.mean(stats["feature_std"]))
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)
        assert result.mean() == pytest.approx(item.mean(), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("item_shape", [(4, 5, 6), (9,)])
def test_cookbook_trainmean_centres_on_the_training_mean_and_adds_it_back(item_shape):
    decoded, stats = _decoded(item_shape), _stats(item_shape)
    corrected = correct_features({"layer": decoded}, {key: {"layer": value} for key, value in stats.items()},
                                 "cookbook-trainmean")["layer"]
    mean = stats["train_mean"]
    for item, result in zip(decoded, corrected):
        expected = _normalize_feature_self_shift(item - mean, np.mean(stats["feature_std"])) + mean
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)
    # Not the same as "cookbook": the SD is taken after the per-unit mean is removed.
    plain = correct_features({"layer": decoded}, {"feature_std": {"layer": stats["feature_std"]}},
                             "cookbook")["layer"]
    assert not np.allclose(plain, corrected)


@pytest.mark.parametrize("item_shape", [(4, 5, 6), (9,)])
def test_spread_is_correct_spread(item_shape):
    decoded, stats = _decoded(item_shape), _stats(item_shape)
    corrected = correct_features({"layer": decoded}, {key: {"layer": value} for key, value in stats.items()},
                                 "spread")
    expected = correct_spread({"layer": decoded}, {"layer": stats["train_mean"]},
                              {"layer": stats["train_spread"]})
    np.testing.assert_array_equal(corrected["layer"], expected["layer"])
    # A stored one-element spread (as decoded_features.safetensors holds it) reads the same.
    stored = correct_features({"layer": decoded}, {"train_mean": {"layer": stats["train_mean"]},
                                                   "train_spread": {"layer": np.array([1.7])}}, "spread")
    np.testing.assert_array_equal(stored["layer"], expected["layer"])
    np.testing.assert_allclose(item_spread(corrected["layer"] - stats["train_mean"]), 1.7, rtol=1e-5)


def test_none_leaves_the_features_as_they_are():
    decoded = {"conv": _decoded((2, 3, 3)).astype(np.float32), "fc": _decoded((5,)).astype(np.float32)}
    corrected = correct_features(decoded, {}, "none")
    for name, features in decoded.items():
        assert corrected[name].dtype == np.float32
        np.testing.assert_array_equal(corrected[name], features)


def test_every_method_keeps_keys_shapes_and_gives_float32():
    item_shapes = {"conv": (4, 5, 6), "fc": (9,)}
    decoded = {name: _decoded(shape) for name, shape in item_shapes.items()}
    stats = {key: {name: _stats(shape)[key] for name, shape in item_shapes.items()}
             for key in ("train_mean", "train_spread", "feature_std")}
    for method in CORRECTION_METHODS:
        corrected = correct_features(decoded, stats, method)
        assert list(corrected) == list(decoded)
        for name in decoded:
            assert corrected[name].shape == decoded[name].shape
            assert corrected[name].dtype == np.float32


def test_a_per_layer_scalar_feature_std_is_accepted():
    decoded = {"conv": _decoded((4, 5, 6))}
    per_channel = correct_features(decoded, {"feature_std": {"conv": np.full(4, 1.5)}}, "cookbook")
    scalar = correct_features(decoded, {"feature_std": {"conv": 1.5}}, "cookbook")
    np.testing.assert_array_equal(per_channel["conv"], scalar["conv"])


# ---------------------------------------------------------------- zero SDs

@pytest.mark.parametrize("method", LAB_METHODS)
@pytest.mark.parametrize("item_shape", [(3, 4, 4), (6,)])
def test_an_item_with_no_sd_is_left_as_it_is(method, item_shape):
    stats = {key: {"layer": value} for key, value in _stats(item_shape).items()}
    if method == "cookbook-trainmean":
        # Centred on the training mean, the zero item is -m: give it a constant mean instead.
        stats["train_mean"]["layer"] = np.full(item_shape, 0.5)
    constant_channels = np.ones(item_shape) * np.arange(1, item_shape[0] + 1).reshape(
        (-1,) + (1,) * (len(item_shape) - 1)) if len(item_shape) > 1 else np.full(item_shape, 2.0)
    normal = _decoded(item_shape, n_items=1)[0]
    decoded = np.stack([np.zeros(item_shape), constant_channels, normal])
    with np.errstate(all="raise"):
        corrected = correct_features({"layer": decoded}, stats, method)["layer"]
    np.testing.assert_array_equal(corrected[0], 0.0)  # an all-zero layer stays all zero
    np.testing.assert_allclose(corrected[1], constant_channels, rtol=1e-6)
    assert np.all(np.isfinite(corrected))
    # The other item of the same array is corrected as on its own.
    alone = correct_features({"layer": normal[None]}, stats, method)["layer"][0]
    np.testing.assert_allclose(corrected[2], alone, rtol=1e-6)


def test_spread_keeps_its_zero_spread_rule():
    mean = np.arange(6.0)
    corrected = correct_features({"fc": np.stack([mean, np.zeros(6)])},
                                 {"train_mean": {"fc": mean}, "train_spread": {"fc": 2.0}}, "spread")
    np.testing.assert_allclose(corrected["fc"][0], mean)  # an item at the mean is returned as the mean


def test_a_zero_training_sd_gives_no_division():
    with np.errstate(all="raise"):
        corrected = correct_features({"fc": np.array([[0.0, 2.0, 4.0]])},
                                     {"feature_std": {"fc": np.array([0.0])}}, "cookbook")
    np.testing.assert_allclose(corrected["fc"], [[2.0, 2.0, 2.0]])


# ---------------------------------------------------------------- errors

def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="Unknown correction 'lab'"):
        correct_features({"fc": np.ones((1, 3))}, {}, "lab")


@pytest.mark.parametrize("method", ["spread", *LAB_METHODS])
def test_missing_statistics_are_named(method):
    with pytest.raises(ValueError, match="needs the training statistic"):
        correct_features({"fc7": np.ones((1, 3))}, {}, method)
    stats = {name: {} for name in correction_statistics(method)}
    with pytest.raises(ValueError, match="fc7"):
        correct_features({"fc7": np.ones((1, 3))}, stats, method)


def test_feature_std_must_match_the_channels():
    with pytest.raises(ValueError, match="3 values; the layer has 4 channel"):
        correct_features({"conv": np.ones((1, 4, 2, 2))}, {"feature_std": {"conv": np.ones(3)}}, "lab2019")


def test_training_mean_must_match_the_items():
    with pytest.raises(ValueError, match="training mean"):
        correct_features({"fc": np.ones((1, 3))}, {"feature_std": {"fc": 1.0}, "train_mean": {"fc": np.ones(4)}},
                         "cookbook-trainmean")


def test_correction_statistics():
    assert correction_statistics("none") == ()
    assert correction_statistics("spread") == ("train_mean", "train_spread")
    assert correction_statistics("lab2019") == ("feature_std",)
    assert correction_statistics("cookbook") == ("feature_std",)
    assert correction_statistics("cookbook-trainmean") == ("train_mean", "feature_std")


# ---------------------------------------------------------------- the statistics

@pytest.mark.parametrize("ddof", [0, 1])
def test_channel_sd_is_numpys_sd_per_channel_over_positions(ddof):
    rng = np.random.default_rng(3)
    conv = (rng.normal(size=(3, 4, 5, 6)) * 10 + 1000).astype(np.float32)  # far from zero
    np.testing.assert_allclose(channel_sd(conv, ddof=ddof),
                               np.std(conv.astype(np.float64), axis=(2, 3), ddof=ddof), rtol=1e-6)
    vector = rng.normal(size=(3, 7))
    np.testing.assert_allclose(channel_sd(vector, ddof=ddof), np.std(vector, axis=1, ddof=ddof)[:, None],
                               rtol=1e-12)


def test_channel_sd_of_one_position_with_ddof_1_is_zero():
    np.testing.assert_array_equal(channel_sd(np.ones((2, 3, 1, 1)), ddof=1), 0.0)


def test_lab_feature_std_converts_the_ddof_exactly():
    rng = np.random.default_rng(4)
    images = rng.normal(size=(5, 3, 4, 4))
    feature_std = channel_sd(images, ddof=1).mean(axis=0)
    assert lab_feature_std(feature_std, (3, 4, 4)) == pytest.approx(np.mean(feature_std))
    # The 2019 file's statistic: estimate_cnn_feat_std (ddof 0) of each image, averaged over images.
    feat_std0_2019 = np.mean([_estimate_cnn_feat_std(image) for image in images])
    assert lab_feature_std(feature_std, (3, 4, 4), ddof=0) == pytest.approx(feat_std0_2019, rel=1e-12)
    vectors = rng.normal(size=(5, 8))
    assert lab_feature_std(channel_sd(vectors).mean(axis=0), (8,), ddof=0) == pytest.approx(
        np.mean([np.std(vector) for vector in vectors]), rel=1e-12)


class TinyEncoder:
    """A deterministic conv-then-fc network following the encoder interface (a test double)."""

    layers = ("conv", "fc")
    device = torch.device("cpu")

    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        self.conv_weight = torch.randn(3, 3, 3, 3, generator=generator)
        self.conv_bias = torch.tensor([20.0, -5.0, 0.0])  # channel means far from zero
        self.fc_weight = 0.1 * torch.randn(5, 3 * 8 * 8, generator=generator)

    def features(self, images, layers):
        conv = functional.conv2d(images, self.conv_weight, self.conv_bias, padding=1)
        every_layer = {"conv": conv, "fc": functional.relu(conv).flatten(1) @ self.fc_weight.T}
        return {layer: every_layer[layer] for layer in layers}


def test_decode_features_accumulates_the_count_weighted_within_image_sd():
    rng = np.random.default_rng(5)
    encoder = TinyEncoder()
    n_images = 9
    images = rng.random((n_images, 8, 8, 3), dtype=np.float32)
    counts = np.array([0, 2, 1, 5, 1, 0, 3, 2, 1])
    coefficients = {"conv": rng.standard_normal((2, n_images)), "fc": rng.standard_normal((2, n_images))}
    with torch.no_grad():
        true = encoder.features(torch.from_numpy(images).permute(0, 3, 1, 2), layers=["conv", "fc"])
    for batch_size in (4, n_images):
        without = decode_features(encoder, images, coefficients, counts, batch_size=batch_size, progress=False)
        feature_std = {}
        outputs = decode_features(encoder, images, coefficients, counts, batch_size=batch_size,
                                  progress=False, feature_std=feature_std)
        assert list(feature_std) == ["conv", "fc"]
        expected_conv = counts @ np.std(true["conv"].numpy().astype(np.float64), axis=(2, 3), ddof=1) / counts.sum()
        expected_fc = counts @ np.std(true["fc"].numpy().astype(np.float64), axis=1, ddof=1) / counts.sum()
        assert feature_std["conv"].shape == (3,) and feature_std["fc"].shape == (1,)
        np.testing.assert_allclose(feature_std["conv"], expected_conv, rtol=1e-5)
        np.testing.assert_allclose(feature_std["fc"], [expected_fc], rtol=1e-5)
        # Asking for it changes nothing else.
        for given, plain in zip(outputs, without):
            for layer in coefficients:
                np.testing.assert_array_equal(given[layer], plain[layer])
