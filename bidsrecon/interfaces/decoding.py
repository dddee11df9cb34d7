"""Nipype interface of the decoding: fit the kernel-ridge decoder (or load a saved one) and decode every test item."""
import json

import numpy as np
import pandas as pd
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from bidsrecon import __version__
from bidsrecon.arrays import save_arrays
from bidsrecon.interfaces.threads import limited_threads


def _saved_decoder(sidecar_file):
    """Stem, sidecar content and voxel selection of the saved decoder whose sidecar is ``sidecar_file``."""
    from pathlib import Path

    from bidsrecon.decoding.artifact import load_voxel_indices, read_decoder_description

    stem = str(Path(sidecar_file).with_suffix(""))
    return {"stem": stem, "description": read_decoder_description(stem), "voxel_indices": load_voxel_indices(stem)}


class _DecodeInputSpec(BaseInterfaceInputSpec):
    samples_files = InputMultiObject(File(exists=True), mandatory=True, desc="per run: samples .npy")
    trials_files = InputMultiObject(File(exists=True), mandatory=True, desc="per run: trials TSV (same order)")
    stimuli_file = File(exists=True, mandatory=True, desc="TSV: stimulus name -> image path")
    encoder = traits.Str(mandatory=True)
    encoder_weights = traits.Str("", usedefault=True, desc="weights file ('' = the encoder's own)")
    layers = traits.List(traits.Str, desc="layers to decode (empty = the encoder's default)")
    image_size = traits.Int(mandatory=True)
    cv_units = traits.Int(1000, usedefault=True, desc="units per layer sampled to choose alpha")
    n_voxels = traits.Int(0, usedefault=True, desc="keep the K voxels ranked best on the training trials (0: all)")
    mask_file = File(exists=True, mandatory=True, desc="the voxel mask the samples were taken in (kept with the decoder)")
    decoder_name = traits.Str("decoder", usedefault=True, desc="file stem of the saved decoder")
    accuracy_units = traits.Int(10000, usedefault=True, desc="units per layer sampled to score decoding accuracy")
    seed = traits.Int(0, usedefault=True)
    n_threads = traits.Int(1, usedefault=True, nohash=True,
                           desc="threads (the results do not depend on them: not part of the cache key)")
    feature_cache = traits.Str("", usedefault=True, desc="folder of the feature cache ('' = no cache)")
    feature_cache_dtype = traits.Enum("float32", "float16", usedefault=True)
    memory_gb = traits.Float(0.0, usedefault=True, desc="peak memory of this node in GB (0: no limit)")
    device = traits.Str("cpu", usedefault=True, desc="where the encoder runs: auto, cpu, cuda or mps")
    method = traits.Enum("kernel", "fastl2lir", usedefault=True,
                         desc="kernel ridge (every unit, streamed) or the lab's per-unit ridge on 500 voxels")
    feature_std = traits.Bool(False, usedefault=True, desc="also keep each channel's SD within a training image, "
                              "averaged over the images (the lab's feat_std0; for --feature-correction lab2019 "
                              "and cookbook*)")
    decoder_file = File(exists=True, desc="JSON sidecar of a saved kernel ridge decoder (--decoders-dir): applied "
                        "instead of fitting one; its layers, voxel selection and training images are used")


class _DecodeOutputSpec(TraitedSpec):
    out_features = File(exists=True, desc="safetensors: decoded features, training mean and spread per layer")
    out_items = File(exists=True, desc="TSV of the decoded items: set, stimulus, n_trials")
    out_decoder = File(exists=True, desc="JSON sidecar of the saved decoder")
    out_decoder_arrays = File(exists=True, desc="safetensors of the saved decoder")
    out_accuracy = File(exists=True, desc="TSV: decoding accuracy per test set and layer")


class DecodeFeatures(SimpleInterface):
    """Fit the decoder on the training trials and decode the features of each test item.

    Trials of the same test item are averaged before decoding (the paper's choice). With
    ``decoder_file`` nothing is fitted: the saved decoder is loaded (checked against the mask,
    encoder, image size and training images; never unpickled) and applied, and its files are
    passed on as ``out_decoder`` and ``out_decoder_arrays``.
    """

    input_spec = _DecodeInputSpec
    output_spec = _DecodeOutputSpec

    def _run_interface(self, runtime):
        with limited_threads(self.inputs.n_threads):
            self._decode(runtime)
        return runtime

    def _decode(self, runtime):
        from bidsrecon.decoding import KernelRidgeDecoder, sample_unit_features
        from bidsrecon.decoding.artifact import save_decoder, save_per_unit_decoder
        from bidsrecon.decoding.cache import FeatureCache
        from bidsrecon.decoding.pixels import PIXEL_PARTS, pixel_parts, pixel_targets
        from bidsrecon.decoding.stream import budget_within
        from bidsrecon.decoding.voxel_selection import select_voxels, selection_method
        from bidsrecon.encoders import get_encoder, resolve_device
        from bidsrecon.encoders.base import file_sha256
        from bidsrecon.images import load_images

        samples = np.concatenate([np.load(f, allow_pickle=False) for f in self.inputs.samples_files])
        trials = pd.concat([pd.read_csv(f, sep="\t") for f in self.inputs.trials_files], ignore_index=True)
        stimuli = pd.read_csv(self.inputs.stimuli_file, sep="\t").set_index("stimulus")["path"]

        training = (trials["set"] == "training").to_numpy()
        train_names, image_index = np.unique(trials.loc[training, "stimulus"], return_inverse=True)
        counts = np.bincount(image_index, minlength=len(train_names))
        selection, kept = {"Method": "none", "Voxels": int(samples.shape[1])}, None
        saved = None
        if isdefined(self.inputs.decoder_file):
            saved = _saved_decoder(self.inputs.decoder_file)
            kept = saved["voxel_indices"]
            if kept is not None:
                samples = samples[:, kept]
        elif self.inputs.n_voxels and self.inputs.n_voxels < samples.shape[1]:
            # Ranked on training trials only, so no test data steers the choice.
            kept = select_voxels(samples[training], image_index, self.inputs.n_voxels)
            selection = {"Method": selection_method(image_index), "Voxels": len(kept), "Of": int(samples.shape[1])}
            samples = samples[:, kept]
        items = (
            trials[~training].groupby(["set", "stimulus"], sort=False).size().rename("n_trials").reset_index()
        )
        item_samples = np.stack([
            samples[(~training) & (trials["set"] == row.set).to_numpy() & (trials["stimulus"] == row.stimulus).to_numpy()].mean(axis=0)
            for row in items.itertuples()
        ])

        encoder = get_encoder(self.inputs.encoder, weights_file=self.inputs.encoder_weights or None, seed=self.inputs.seed,
                              device=resolve_device(self.inputs.device))
        if saved:
            self._apply_saved(saved, encoder, samples, items, item_samples, stimuli, runtime)
            return
        layers = list(self.inputs.layers) or list(encoder.default_layers)
        # uint8: 1,200 stimuli at 224 px take 180 MB instead of 720 MB while the features stream.
        images = load_images([stimuli[name] for name in train_names], self.inputs.image_size, dtype=np.uint8)

        cache = None
        if self.inputs.feature_cache:
            cache = FeatureCache.for_encoder(self.inputs.feature_cache, encoder, dtype=self.inputs.feature_cache_dtype)
        description = dict(
            encoder_name=encoder.name, encoder_weights_sha256=encoder.weights_sha256, image_size=self.inputs.image_size,
            training_stimuli=list(train_names), training_stimulus_hashes=[file_sha256(stimuli[name]) for name in train_names],
            voxel_mask_file=self.inputs.mask_file, software_version=__version__, voxel_indices=kept)
        extra = {"EncoderDescription": encoder.description, "TrainingImages": int(len(train_names)),
                 "VoxelSelection": selection}
        stem = f"{runtime.cwd}/{self.inputs.decoder_name}"
        if self.inputs.method == "fastl2lir":
            decoded, train_mean, train_spread, feature_std, decoders = _decode_per_unit(
                encoder, images, layers, samples[training], image_index, item_samples, counts, cache)
            paths = save_per_unit_decoder(stem, decoders, **description, extra_fields=extra)
        else:
            cv_targets, _ = sample_unit_features(encoder, images, layers, n_units=self.inputs.cv_units,
                                                 seed=self.inputs.seed, cache=cache)
            # The pixels pseudo-layer's two parts are two more targets, every value of them
            # (bidsrecon.decoding.pixels).
            pixels = pixel_targets(images, self.inputs.image_size)
            cv_targets.update({part: values.reshape(len(values), -1) for part, values in pixel_parts(pixels).items()})
            # Alpha is chosen for each count of trials the test items average (REFERENCE.md §8).
            test_trials = items["n_trials"].to_numpy()
            decoder = KernelRidgeDecoder(random_state=self.inputs.seed).fit(
                samples[training], image_index, cv_targets, test_trials=test_trials)
            coefficients = decoder.coefficients(item_samples, test_trials)
            budget = budget_within(self.inputs.memory_gb * 1e9) if self.inputs.memory_gb else None
            decoded, train_mean, train_spread, feature_std = _decode_with_pixels(
                encoder, images, coefficients, counts, cache, budget, pixels, self.inputs.feature_std)
            extra.update({
                "CrossValidationAlphas": [float(a) for a in decoder.alphas_],
                "CrossValidationScores": {layer: [float(v) for v in decoder.cv_scores_[layer]]
                                          for layer in [*layers, *PIXEL_PARTS]},
            })
            paths = save_decoder(stem, decoder, layers=[*layers, *PIXEL_PARTS], **description, extra_fields=extra)
        self._results["out_decoder_arrays"], self._results["out_decoder"] = (str(path) for path in paths)
        self._write_outputs(encoder, layers, decoded, train_mean, train_spread, feature_std, items, stimuli,
                            runtime)

    def _apply_saved(self, saved, encoder, samples, items, item_samples, stimuli, runtime):
        """Decode with the saved decoder: ``A_u F + (1 - sum_j A_u[:, j]) ybar``, ``F`` its training images'."""
        from bidsrecon.decoding.artifact import decoder_paths, load_decoder
        from bidsrecon.decoding.cache import FeatureCache
        from bidsrecon.decoding.pixels import PIXEL_PARTS, pixel_targets
        from bidsrecon.decoding.stream import budget_within
        from bidsrecon.images import load_images

        stem = saved["stem"]
        # The plan checked all this already; checked again here, where the decoder is used.
        decoder = load_decoder(stem, expected_mask_file=self.inputs.mask_file, expected_encoder=encoder.name,
                               expected_weights_sha256=encoder.weights_sha256,
                               expected_image_size=self.inputs.image_size, stimulus_files=stimuli.to_dict())
        layers = list(saved["description"]["Layers"])
        if samples.shape[1] != decoder.X_.shape[1]:
            raise ValueError(f"{self.inputs.mask_file} gives {samples.shape[1]} voxels; the saved decoder "
                             f"{stem} has {decoder.X_.shape[1]}")
        train_names = saved["description"]["TrainingStimuli"]
        images = load_images([stimuli[name] for name in train_names], self.inputs.image_size, dtype=np.uint8)
        # The training mean is weighted by each image's training trials, as when the decoder was fitted.
        counts = np.bincount(decoder.image_index_, minlength=len(train_names))
        cache = None
        if self.inputs.feature_cache:
            cache = FeatureCache.for_encoder(self.inputs.feature_cache, encoder, dtype=self.inputs.feature_cache_dtype)
        budget = budget_within(self.inputs.memory_gb * 1e9) if self.inputs.memory_gb else None
        # Each item with the alpha chosen for its count of trials (the nearest the decoder has).
        coefficients = decoder.coefficients(item_samples, items["n_trials"].to_numpy())
        # A decoder saved with the pixels pseudo-layer decodes it too (bidsrecon.decoding.pixels).
        pixels = pixel_targets(images, self.inputs.image_size) if PIXEL_PARTS[0] in coefficients else None
        decoded, train_mean, train_spread, feature_std = _decode_with_pixels(
            encoder, images, coefficients, counts, cache, budget, pixels, self.inputs.feature_std)
        layers = [layer for layer in layers if layer not in PIXEL_PARTS]
        arrays_path, sidecar_path = decoder_paths(stem)
        self._results["out_decoder_arrays"], self._results["out_decoder"] = str(arrays_path), str(sidecar_path)
        self._write_outputs(encoder, layers, decoded, train_mean, train_spread, feature_std, items, stimuli,
                            runtime)

    def _write_outputs(self, encoder, layers, decoded, train_mean, train_spread, feature_std, items, stimuli,
                       runtime):
        """Decoded features, the items table and the decoding accuracy per test set and layer."""
        self._results["out_features"] = f"{runtime.cwd}/decoded_features.safetensors"
        save_arrays(
            self._results["out_features"],
            {
                "decoded": decoded,
                "train_mean": train_mean,
                "train_spread": {layer: np.float64(value).reshape(1) for layer, value in train_spread.items()},
                **({"feature_std": feature_std} if feature_std else {}),
            },
            metadata={"layers": json.dumps(layers)},
        )
        self._results["out_items"] = f"{runtime.cwd}/items.tsv"
        items.to_csv(self._results["out_items"], sep="\t", index=False)
        self._results["out_accuracy"] = f"{runtime.cwd}/decoding_accuracy.tsv"
        accuracy = _decoding_accuracy(encoder, layers, decoded, train_mean, items, stimuli, self.inputs.image_size,
                                      self.inputs.accuracy_units, self.inputs.seed)
        accuracy.to_csv(self._results["out_accuracy"], sep="\t", index=False, na_rep="n/a", float_format="%.6g")


def _decode_with_pixels(encoder, images, coefficients, counts, cache, budget, pixels, with_feature_std):
    """:func:`decode_features` for the encoder's layers, plus the ``pixels`` pseudo-layer when its
    coefficients are among ``coefficients`` (``pixels``: its training targets).

    Returns decoded, train_mean, train_spread and, ``with_feature_std``, the lab's per-channel
    SD within an image averaged over the training images for the encoder's layers (else None).
    """
    from bidsrecon.decoding import decode_features
    from bidsrecon.decoding.pixels import PIXEL_LAYER, PIXEL_PARTS, decode_pixel_parts

    coefficients = dict(coefficients)
    pixel_coefficients = {part: coefficients.pop(part) for part in PIXEL_PARTS if part in coefficients} or None
    feature_std = {} if with_feature_std else None
    decoded, train_mean, train_spread = decode_features(encoder, images, coefficients, counts, cache=cache,
                                                        memory_budget=budget, feature_std=feature_std)
    if pixel_coefficients is not None:
        decoded[PIXEL_LAYER], train_mean[PIXEL_LAYER], train_spread[PIXEL_LAYER] = decode_pixel_parts(
            pixel_coefficients, pixels, counts)
    return decoded, train_mean, train_spread, feature_std


def _decode_per_unit(encoder, images, layers, train_samples, image_index, item_samples, counts, cache):
    """The lab's per-unit mode: every unit of ``layers`` decoded by its own ridge on its own voxels.

    All training features of the layers are held in memory (and each unit fitted on its own),
    so this mode is meant for layer subsets; the kernel ridge decoder streams every unit.

    Returns
    -------
    decoded, train_mean, train_spread : as :func:`bidsrecon.decoding.decode_features`
    feature_std : dict of str to ndarray, each channel's SD within an image, averaged over images
    decoders : dict of str to PerUnitDecoder
    """
    from bidsrecon.decoding.per_unit import PerUnitDecoder
    from bidsrecon.decoding.pixels import PIXEL_LAYER, pixel_statistics, pixel_targets
    from bidsrecon.decoding.stream import iter_feature_batches
    from bidsrecon.features.spread import channel_sd, spread_from_moments

    batches = [features for _, features in iter_feature_batches(encoder, images, layers, progress=True, cache=cache)]
    weights = counts / counts.sum()
    decoded, train_mean, train_spread, feature_std, decoders = {}, {}, {}, {}, {}
    for layer in layers:
        features = np.concatenate([batch[layer] for batch in batches])
        shape = features.shape[1:]
        feature_std[layer] = weights @ channel_sd(features, ddof=1)
        features = features.reshape(len(features), -1)
        mean, mean_square = weights @ features, weights @ features.astype(np.float64) ** 2
        train_mean[layer] = mean.reshape(shape).astype(np.float32)
        train_spread[layer] = spread_from_moments(mean.reshape(shape), mean_square.reshape(shape))
        decoders[layer] = PerUnitDecoder().fit(train_samples, features[image_index])
        decoded[layer] = decoders[layer].predict(item_samples).reshape((-1,) + shape).astype(np.float32)
    # The pixels pseudo-layer, each value by its own ridge too (bidsrecon.decoding.pixels).
    pixels = pixel_targets(images, images.shape[1])
    decoders[PIXEL_LAYER] = PerUnitDecoder().fit(train_samples, pixels.reshape(len(pixels), -1)[image_index])
    decoded[PIXEL_LAYER] = decoders[PIXEL_LAYER].predict(item_samples).reshape((-1,) + pixels.shape[1:])
    train_mean[PIXEL_LAYER], train_spread[PIXEL_LAYER] = pixel_statistics(pixels, counts)
    return decoded, train_mean, train_spread, feature_std, decoders


def _decoding_accuracy(encoder, layers, decoded, train_mean, items, stimuli, image_size, n_units, seed):
    """Profile and pattern correlation of decoded and true features, per test set and layer.

    Scored on a random sample of each layer's units (the same units for every set), so that the
    true features of the test images never have to be held whole. Patterns are centred on the
    training features' mean first (the lab also divides by each unit's training SD, which the
    streamed decoder does not keep yet).
    """
    from bidsrecon.decoding import sample_unit_features
    from bidsrecon.decoding.pixels import PIXEL_LAYER, pixel_targets
    from bidsrecon.evaluation.decoding_accuracy import decoding_accuracy
    from bidsrecon.images import load_images

    images = load_images([stimuli[name] for name in items["stimulus"]], image_size)
    true, units = sample_unit_features(encoder, images, layers, n_units=n_units, seed=seed)
    if PIXEL_LAYER in decoded:  # every value of the pseudo-layer is scored
        pixels = pixel_targets(images, image_size)
        true[PIXEL_LAYER], units[PIXEL_LAYER] = pixels.reshape(len(pixels), -1), np.arange(pixels[0].size)
        layers = [*layers, PIXEL_LAYER]
    tables = []
    for set_name, rows in items.groupby("set", sort=False):
        index = rows.index.to_numpy()
        sampled = {layer: decoded[layer].reshape(len(items), -1)[index][:, units[layer]] for layer in layers}
        centre = {layer: train_mean[layer].reshape(-1)[units[layer]] for layer in layers}
        table = decoding_accuracy(sampled, {layer: true[layer][index] for layer in layers}, train_mean=centre)
        tables.append(table.assign(set=set_name))
    table = pd.concat(tables, ignore_index=True)
    return table[["set", *[c for c in table.columns if c != "set"]]]
