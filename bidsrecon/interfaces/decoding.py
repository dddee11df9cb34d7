"""Nipype interface of the decoding stage (:mod:`bidsrecon.decoding.stage`): files in, files out."""
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

from bidsrecon.arrays import save_arrays
from bidsrecon.interfaces.threads import limited_threads


class _DecodeInputSpec(BaseInterfaceInputSpec):
    samples_files = InputMultiObject(File(exists=True), mandatory=True, desc="per run: samples .npy")
    trials_files = InputMultiObject(File(exists=True), mandatory=True, desc="per run: trials TSV (same order)")
    stimuli_file = File(exists=True, mandatory=True, desc="TSV: stimulus name -> image path")
    encoder = traits.Str(mandatory=True)
    encoder_weights = traits.Str(mandatory=True, desc="weights file ('' = the encoder's own)")
    layers = traits.List(traits.Str, desc="layers to decode (empty = the encoder's default)")
    image_size = traits.Int(mandatory=True)
    cv_units = traits.Int(mandatory=True, desc="units per layer sampled to choose alpha")
    penalty_image_size = traits.Int(0, usedefault=True, desc="side of the images of the penalty's pass (0: image_size)")
    pixel_decoder = traits.Enum("prf", "ridge", "inversion", "both", usedefault=True,
                                desc="how the pixels pseudo-layer is decoded")
    n_voxels = traits.Int(mandatory=True, desc="keep the K voxels ranked best on the training trials (0: all)")
    mask_file = File(exists=True, mandatory=True, desc="the voxel mask the samples were taken in (kept with the decoder)")
    decoder_name = traits.Str(mandatory=True, desc="file stem of the saved decoder")
    accuracy_units = traits.Int(10000, usedefault=True, desc="units per layer sampled to score decoding accuracy")
    seed = traits.Int(mandatory=True)
    n_threads = traits.Int(mandatory=True, nohash=True,
                           desc="threads (the results do not depend on them: not part of the cache key)")
    feature_cache = traits.Str(mandatory=True, desc="folder of the feature cache ('' = no cache)")
    feature_cache_dtype = traits.Enum("float32", "float16", mandatory=True)
    memory_gb = traits.Float(mandatory=True, desc="peak memory of this node in GB (0: no limit)")
    device = traits.Str(mandatory=True, desc="where the encoder runs: auto, cpu, cuda or mps")
    method = traits.Enum("kernel", "fastl2lir", mandatory=True,
                         desc="kernel ridge (every unit, streamed) or the lab's per-unit ridge on 500 voxels")
    feature_std = traits.Bool(mandatory=True, desc="also keep each channel's SD within a training image, "
                              "averaged over the images (the lab's feat_std0; for --feature-correction lab2019 "
                              "and cookbook*)")
    features_dir = traits.Str("", usedefault=True,
                              desc="folder of the training images' precomputed features, bdpy's layout (--features-dir; "
                              "'' = the encoder's): the decoder is trained on them, the encoder does not run on "
                              "those images (its path, not its files, is part of the cache key)")
    decoder_file = File(exists=True, desc="JSON sidecar of a saved decoder (--decoders-dir), kernel ridge or per-unit "
                        "(read from its fastl2lir/ folders): applied instead of fitting one; its layers, voxel "
                        "selection and (kernel) training images are used")
    lab_decoders_file = File(exists=True, desc="with --bdata-dir: the Kamitani lab's decoder tree as the participant's "
                             "plan described it (bidsrecon.decoding.lab_tree), applied instead of fitting one")


class _DecodeOutputSpec(TraitedSpec):
    out_features = File(exists=True, desc="safetensors: decoded features, training mean and spread per layer")
    out_items = File(exists=True, desc="TSV of the decoded items: set, stimulus, n_trials")
    out_decoder = File(exists=True, desc="JSON sidecar of the saved decoder")
    out_decoder_arrays = File(exists=True, desc="safetensors of the saved decoder")
    out_accuracy = File(exists=True, desc="TSV: decoding accuracy per test set and layer")
    out_device = traits.Str(desc="where the encoder ran: cpu, cuda or mps")


class DecodeFeatures(SimpleInterface):
    """Fit the decoder on the training trials (or apply a saved one) and decode each test item.

    Reads the samples, trials and stimuli, calls :func:`bidsrecon.decoding.stage.fit_and_decode`
    or, with ``decoder_file``, :func:`~bidsrecon.decoding.stage.apply_saved` (a kernel ridge
    decoder) or :func:`~bidsrecon.decoding.folders_stage.apply_saved_per_unit`, or, with
    ``lab_decoders_file``, :func:`~bidsrecon.decoding.folders_stage.apply_lab_tree`, and writes the
    decoded features, the items table and the decoding accuracy. ``out_device`` is where the
    encoder ran (``device auto`` resolved on the machine that runs this node).
    """

    input_spec = _DecodeInputSpec
    output_spec = _DecodeOutputSpec

    def _run_interface(self, runtime):
        with limited_threads(self.inputs.n_threads):
            self._decode(runtime)
        return runtime

    def _decode(self, runtime):
        from pathlib import Path

        from bidsrecon.decoding.folders_stage import apply_lab_tree, apply_saved_per_unit
        from bidsrecon.decoding.memory import budget_within
        from bidsrecon.decoding.sidecar import is_per_unit, read_decoder_description
        from bidsrecon.decoding.stage import apply_saved, decoding_accuracy_table, fit_and_decode
        from bidsrecon.encoders import get_encoder, resolve_device
        from bidsrecon.features.cache import FeatureCache

        inputs = self.inputs
        samples = np.concatenate([np.load(f, allow_pickle=False) for f in inputs.samples_files])
        trials = pd.concat([pd.read_csv(f, sep="\t") for f in inputs.trials_files], ignore_index=True)
        stimuli = pd.read_csv(inputs.stimuli_file, sep="\t").set_index("stimulus")["path"]
        device = resolve_device(inputs.device)
        encoder = get_encoder(inputs.encoder, weights_file=inputs.encoder_weights or None, seed=inputs.seed,
                              device=device)
        cache = None
        if inputs.feature_cache:
            cache = FeatureCache.for_encoder(inputs.feature_cache, encoder, dtype=inputs.feature_cache_dtype)
        options = dict(image_size=inputs.image_size, cache=cache, with_feature_std=inputs.feature_std,
                       memory_budget=budget_within(inputs.memory_gb * 1e9) if inputs.memory_gb else None)
        if isdefined(inputs.lab_decoders_file):
            result = apply_lab_tree(samples, trials, json.loads(Path(inputs.lab_decoders_file).read_text()),
                                    stem=f"{runtime.cwd}/{inputs.decoder_name}", mask_file=inputs.mask_file,
                                    encoder=encoder, image_size=inputs.image_size)
        elif isdefined(inputs.decoder_file):
            stem = str(Path(inputs.decoder_file).with_suffix(""))
            if is_per_unit(read_decoder_description(stem)):
                result = apply_saved_per_unit(samples, trials, stem)
            else:
                result = apply_saved(samples, trials, stimuli, encoder, stem, **options)
        else:
            result = fit_and_decode(samples, trials, stimuli, encoder, layers=inputs.layers,
                                    stem=f"{runtime.cwd}/{inputs.decoder_name}", mask_file=inputs.mask_file,
                                    method=inputs.method, cv_units=inputs.cv_units, n_voxels=inputs.n_voxels,
                                    seed=inputs.seed, features_dir=inputs.features_dir or None,
                                    penalty_size=inputs.penalty_image_size or None,
                                    pixel_decoder=inputs.pixel_decoder, **options)
        self._results["out_decoder_arrays"], self._results["out_decoder"] = result.decoder_arrays, result.decoder_sidecar
        self._results["out_device"] = device.type
        self._results["out_features"] = f"{runtime.cwd}/decoded_features.safetensors"
        save_arrays(
            self._results["out_features"],
            {
                "decoded": result.decoded,
                "train_mean": result.train_mean,
                "train_spread": {layer: np.float64(value).reshape(1) for layer, value in result.train_spread.items()},
                **({"feature_std": result.feature_std} if result.feature_std else {}),
            },
            metadata={"layers": json.dumps(result.layers)},
        )
        self._results["out_items"] = f"{runtime.cwd}/items.tsv"
        result.items.to_csv(self._results["out_items"], sep="\t", index=False)
        self._results["out_accuracy"] = f"{runtime.cwd}/decoding_accuracy.tsv"
        accuracy = decoding_accuracy_table(result, encoder, stimuli, inputs.image_size, inputs.accuracy_units,
                                           inputs.seed)
        accuracy.to_csv(self._results["out_accuracy"], sep="\t", index=False, na_rep="n/a", float_format="%.6g")
