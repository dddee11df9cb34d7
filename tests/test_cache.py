"""Tests of the feature cache and of the passes through the encoder that use it."""
import numpy as np
import pytest
import torch
import torch.nn.functional as functional
from safetensors.numpy import load_file

from bidsrecon.decoding import decode_features, iter_feature_batches, sample_unit_features
from bidsrecon.decoding.memory import decoding_memory, plan_layer_groups
from bidsrecon.features.cache import FeatureCache, image_sha256

torch.set_num_threads(1)


class CountingEncoder:
    """A small deterministic network that records which images and layers it was run on."""

    layers = ("conv1", "conv2", "fc")
    device = torch.device("cpu")
    name = "counting"
    description = "a test network (seed=0)"
    weights_sha256 = None

    def __init__(self, seed=0, scale=1.0):
        generator = torch.Generator().manual_seed(seed)
        self.conv1_weight = scale * torch.randn(4, 3, 3, 3, generator=generator)
        self.conv1_bias = torch.full((4,), 20.0)  # features far from zero, as pre-ReLU layers
        self.conv2_weight = 0.3 * torch.randn(6, 4, 3, 3, generator=generator)
        self.fc_weight = 0.1 * torch.randn(5, 6 * 4 * 4, generator=generator)
        self.calls = []  # (number of images, layers) of each forward

    def features(self, images, layers):
        self.calls.append((len(images), tuple(layers)))
        conv1 = functional.conv2d(images, self.conv1_weight, self.conv1_bias, padding=1)
        conv2 = functional.conv2d(functional.relu(conv1), self.conv2_weight, padding=1, stride=2)
        fc = functional.relu(conv2).flatten(1) @ self.fc_weight.T
        every_layer = {"conv1": conv1, "conv2": conv2, "fc": fc}
        return {layer: every_layer[layer] for layer in layers}

    def images_run(self):
        return sum(n_images for n_images, _ in self.calls)


def _images(n_images, seed=0, size=8):
    return np.random.default_rng(seed).random((n_images, size, size, 3), dtype=np.float32)


def _all_batches(encoder, images, layers, cache, batch_size=3):
    batches = list(iter_feature_batches(encoder, images, layers, batch_size, cache=cache))
    return {layer: np.concatenate([batch[layer] for _, batch in batches]) for layer in layers}


def _entries(directory):
    return sorted(path for path in directory.rglob("*") if path.is_file())


def test_second_pass_reads_the_cache_and_runs_no_forward(tmp_path):
    encoder = CountingEncoder()
    images = _images(7)
    cache = FeatureCache.for_encoder(tmp_path, encoder)
    first = _all_batches(encoder, images, ["conv1", "fc"], cache)
    assert encoder.images_run() == 7
    assert len(_entries(tmp_path)) == 7 * 2  # one file per image and layer, no temporaries
    assert all(path.suffix == ".safetensors" for path in _entries(tmp_path))

    encoder.calls.clear()
    second = _all_batches(encoder, images, ["conv1", "fc"], cache, batch_size=4)
    assert encoder.calls == []
    uncached = _all_batches(encoder, images, ["conv1", "fc"], None)
    for layer in ("conv1", "fc"):
        np.testing.assert_array_equal(second[layer], first[layer])
        np.testing.assert_array_equal(first[layer], uncached[layer])  # float32: exact


def test_a_layer_not_yet_cached_runs_the_encoder_for_that_layer_only(tmp_path):
    encoder = CountingEncoder()
    images = _images(4)
    cache = FeatureCache.for_encoder(tmp_path, encoder)
    _all_batches(encoder, images, ["fc"], cache, batch_size=4)
    encoder.calls.clear()
    _all_batches(encoder, images, ["conv2", "fc"], cache, batch_size=4)
    assert encoder.calls == [(1, ("conv2",))] * 4  # on the CPU, one image per forward


def test_cache_key_changes_with_weights_image_size_layer_and_content(tmp_path):
    cache = FeatureCache(tmp_path, "vgg19", "a" * 64)
    image = _images(1)[0]
    key = image_sha256(image)
    path = cache.entry_path(key, image.shape, "conv1_1")
    assert path != FeatureCache(tmp_path, "vgg19", "b" * 64).entry_path(key, image.shape,
                                                                        "conv1_1")
    assert path != FeatureCache(tmp_path, "vgg16", "a" * 64).entry_path(key, image.shape,
                                                                        "conv1_1")
    assert path != cache.entry_path(key, (16, 16, 3), "conv1_1")
    assert path != cache.entry_path(key, image.shape, "conv1_2")
    changed = image.copy()
    changed[0, 0, 0] = np.nextafter(changed[0, 0, 0], 2, dtype=np.float32)
    assert image_sha256(changed) != key
    assert image_sha256(image.copy()) == key

    # Random encoders are keyed by their description, which names the seed.
    encoder = CountingEncoder()
    reseeded = CountingEncoder(seed=1)
    reseeded.description = "a test network (seed=1)"
    images = _images(3)
    _all_batches(encoder, images, ["fc"], FeatureCache.for_encoder(tmp_path, encoder))
    features = _all_batches(reseeded, images, ["fc"],
                            FeatureCache.for_encoder(tmp_path, reseeded))
    assert reseeded.images_run() == 3  # a miss: another seed's entries are not reused
    uncached = _all_batches(reseeded, images, ["fc"], None)
    np.testing.assert_array_equal(features["fc"], uncached["fc"])


def test_float16_storage_bounds_the_error_of_features_and_decoded_features(tmp_path):
    encoder = CountingEncoder()
    images = _images(9, seed=1)
    layers = ["conv1", "conv2", "fc"]
    cache = FeatureCache.for_encoder(tmp_path, encoder, dtype="float16")
    rounded = _all_batches(encoder, images, layers, cache)
    exact = _all_batches(encoder, images, layers, None)
    for layer in layers:
        assert rounded[layer].dtype == np.float32
        # Stored as float16 and returned rounded the way they are stored, on a miss as on a hit.
        np.testing.assert_array_equal(rounded[layer].astype(np.float16).astype(np.float32),
                                      rounded[layer])
        # Half a unit in the last place: 2^-11 relative, 2^-25 absolute for subnormals.
        assert np.all(np.abs(rounded[layer] - exact[layer])
                      <= np.maximum(2.0**-11 * np.abs(exact[layer]), 2.0**-25))
        assert np.any(rounded[layer] != exact[layer])
    assert {load_file(str(path))["features"].dtype for path in _entries(tmp_path)} == {
        np.dtype(np.float16)}

    rng = np.random.default_rng(2)
    counts = rng.integers(1, 4, size=len(images))
    coefficients = {layer: 0.3 * rng.standard_normal((2, len(images))) for layer in layers}
    decoded_f16, _, _ = decode_features(encoder, images, coefficients, counts, batch_size=4,
                                        progress=False, cache=cache)
    decoded, _, _ = decode_features(encoder, images, coefficients, counts, batch_size=4,
                                    progress=False)
    for layer in layers:
        flat = exact[layer].reshape(len(images), -1).astype(np.float64)
        # Each decoded value is a combination of features with these weights in absolute value.
        weight_sums = (np.abs(coefficients[layer]).sum(axis=1)
                       + np.abs(1 - coefficients[layer].sum(axis=1)))
        bound = 2.0**-11 * weight_sums[:, None] * np.abs(flat).max() + 1e-5 * np.abs(flat).max()
        error = np.abs(decoded_f16[layer] - decoded[layer]).reshape(2, -1)
        assert np.all(error <= bound)


def test_float16_storage_keeps_values_beyond_its_range_in_float32(tmp_path):
    cache = FeatureCache(tmp_path, "net", "w", dtype="float16")
    features = np.array([[1.0, 7e4], [-3.0, 0.5]], dtype=np.float32)
    stored = cache.store("h", (8, 8, 3), "fc", features)
    np.testing.assert_array_equal(stored, features)
    np.testing.assert_array_equal(cache.load("h", (8, 8, 3), "fc"), features)


def test_corrupt_entries_are_recomputed_and_rewritten(tmp_path):
    encoder = CountingEncoder()
    images = _images(5, seed=3)
    cache = FeatureCache.for_encoder(tmp_path, encoder)
    first = _all_batches(encoder, images, ["conv2"], cache, batch_size=5)
    truncated = cache.entry_path(image_sha256(images[1]), images.shape[1:], "conv2")
    truncated.write_bytes(truncated.read_bytes()[:-7])
    garbage = cache.entry_path(image_sha256(images[3]), images.shape[1:], "conv2")
    garbage.write_bytes(b"not a safetensors file")

    encoder.calls.clear()
    second = _all_batches(encoder, images, ["conv2"], cache, batch_size=5)
    assert encoder.calls == [(1, ("conv2",))] * 2  # only the two damaged images
    np.testing.assert_array_equal(second["conv2"], first["conv2"])
    encoder.calls.clear()
    _all_batches(encoder, images, ["conv2"], cache, batch_size=5)
    assert encoder.calls == []  # rewritten whole


def test_a_failed_write_leaves_no_partial_entry(tmp_path, monkeypatch):
    import bidsrecon.features.cache as cache_module

    def failing_save(tensors, filename, metadata=None):
        with open(filename, "wb") as stream:
            stream.write(b"half")
        raise OSError("disk full")

    cache = FeatureCache(tmp_path, "net", "w")
    monkeypatch.setattr(cache_module, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        cache.store("h", (8, 8, 3), "fc", np.ones(3, np.float32))
    assert _entries(tmp_path) == []
    assert cache.load("h", (8, 8, 3), "fc") is None


def test_cache_restricted_to_some_layers_recomputes_the_others(tmp_path):
    encoder = CountingEncoder()
    images = _images(4, seed=4)
    cache = FeatureCache.for_encoder(tmp_path, encoder, layers=["fc"])
    assert cache.holds("fc") and not cache.holds("conv1")
    _all_batches(encoder, images, ["conv1", "fc"], cache, batch_size=4)
    assert {path.parent.parent.name for path in _entries(tmp_path)} == {"fc"}
    encoder.calls.clear()
    again = _all_batches(encoder, images, ["conv1", "fc"], cache, batch_size=4)
    assert encoder.calls == [(1, ("conv1",))] * 4
    np.testing.assert_allclose(again["conv1"],
                               _all_batches(encoder, images, ["conv1"], None)["conv1"], rtol=1e-6)


def test_sampling_then_decoding_runs_the_encoder_once(tmp_path):
    encoder = CountingEncoder()
    images = _images(6, seed=5)
    cache = FeatureCache.for_encoder(tmp_path, encoder, dtype="float16")
    sampled, unit_indices = sample_unit_features(encoder, images, ["conv1", "fc"], n_units=10,
                                                 batch_size=4, cache=cache)
    assert encoder.images_run() == 6
    coefficients = {"conv1": np.full((1, 6), 1 / 6), "fc": np.eye(6)[:2]}
    decoded, train_mean, _ = decode_features(encoder, images, coefficients, np.ones(6, int),
                                             batch_size=4, progress=False, cache=cache)
    assert encoder.images_run() == 6  # the decoding pass read every feature from the cache
    # The decoder sees the same (stored) features the alpha was chosen on.
    np.testing.assert_allclose(decoded["fc"].reshape(2, -1)[:, unit_indices["fc"]],
                               sampled["fc"][:2], rtol=1e-6)
    np.testing.assert_allclose(decoded["conv1"].reshape(-1)[unit_indices["conv1"]],
                               sampled["conv1"].mean(axis=0), rtol=1e-5)


def test_layer_groups_under_a_memory_budget_read_the_cache_after_the_first_pass(tmp_path):
    encoder = CountingEncoder()
    images = _images(6, seed=6)
    cache = FeatureCache.for_encoder(tmp_path, encoder)
    sample_unit_features(encoder, images, list(encoder.layers), n_units=5, cache=cache)
    encoder.calls.clear()
    coefficients = {layer: np.full((2, 6), 1 / 6) for layer in encoder.layers}
    layer_units = {"conv1": 256, "conv2": 96, "fc": 5}
    # conv1 alone fills the budget with the outputs of every layer: two groups.
    budget = decoding_memory(layer_units, {"conv1": 2}, 3, cached=True) + 4 * 2 * (96 + 5)
    groups = plan_layer_groups(layer_units, dict.fromkeys(encoder.layers, 2), 3, budget,
                               cached=True)
    assert groups == [["conv1"], ["conv2", "fc"]]
    decoded, _, _ = decode_features(encoder, images, coefficients, np.ones(6, int),
                                    batch_size=3, progress=False, cache=cache,
                                    memory_budget=budget)
    # One image to learn the layer sizes; every group after that reads the cache.
    assert encoder.calls == [(1, encoder.layers)]
    assert set(decoded) == set(encoder.layers)


def test_cache_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"dtype must be one of \('float32', 'float16'\)"):
        FeatureCache(tmp_path, "net", "w", dtype="float64")
    with pytest.raises(ValueError, match="weights_id must be a non-empty string"):
        FeatureCache(tmp_path, "net", "")
    with pytest.raises(ValueError, match="encoder_name must be a non-empty string"):
        FeatureCache(tmp_path, "a/b", "w")


def test_stopping_a_cached_pass_early_keeps_its_entries_and_gradients(tmp_path):
    encoder = CountingEncoder()
    images = _images(6, seed=7)
    cache = FeatureCache.for_encoder(tmp_path, encoder)
    batches = iter_feature_batches(encoder, images, ["fc"], batch_size=2, cache=cache)
    start, first = next(batches)
    assert torch.is_grad_enabled()
    batches.close()  # waits for the read-ahead batch and the writes in flight
    stored = [cache.load(image_sha256(image), image.shape, "fc") for image in images[:2]]
    np.testing.assert_array_equal(np.stack(stored), first["fc"])
    assert not list(tmp_path.rglob("*.tmp"))
