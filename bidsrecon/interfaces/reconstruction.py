"""Nipype interfaces of the reconstruction and its evaluation."""
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits

from bidsrecon.arrays import load_arrays
from bidsrecon.images import to_uint8
from bidsrecon.interfaces.threads import limited_threads


class _ReconstructInputSpec(BaseInterfaceInputSpec):
    features_file = File(exists=True, mandatory=True, desc="decoded features (DecodeFeatures.out_features)")
    encoder = traits.Str(mandatory=True)
    encoder_weights = traits.Str("", usedefault=True)
    image_size = traits.Int(mandatory=True)
    iterations = traits.Int(200, usedefault=True)
    seed = traits.Int(0, usedefault=True)
    n_threads = traits.Int(1, usedefault=True, nohash=True,
                           desc="threads (the results do not depend on them: not part of the cache key)")
    optimiser = traits.Enum("lbfgs", "gd", "generator", usedefault=True)
    generator_weights = traits.Str("", usedefault=True)
    generator_latent_max = traits.Str("", usedefault=True, desc="a number or a file; empty: unbounded")
    jitter = traits.Int(0, usedefault=True)
    device = traits.Str("auto", usedefault=True)
    mixed_precision = traits.Bool(False, usedefault=True)
    batch_size = traits.Int(8, usedefault=True)
    snapshot_every = traits.Int(0, usedefault=True)
    correction = traits.Enum("spread", "none", "lab2019", "cookbook", "cookbook-trainmean", usedefault=True,
                             desc="correction of the decoded features before inversion (bidsrecon.recon.correction)")
    pixel_weight = traits.Float(100.0, usedefault=True, desc="weight of the decoded pixels' term in the loss "
                                "(0: none; needs features decoded with the pixels pseudo-layer)")
    tv_weight = traits.Float(3.0, usedefault=True, desc="weight of a total-variation term, in the pixel term's "
                             "units (needs the pixels pseudo-layer)")
    coarse_factor = traits.Int(2, usedefault=True, desc="lbfgs: optimise an image this many times smaller, "
                               "upsampled (bilinear) before the encoder")
    start = traits.Enum("pixels", "flat", "noise", usedefault=True,
                        desc="start image: the decoded pixels, the paper's flat mean colour, or uniform noise")
    clamp = traits.Bool(True, usedefault=True, desc="gd: keep pixels in [0, 1] after each step")


class _ReconstructOutputSpec(TraitedSpec):
    out_images = File(exists=True, desc="float32 .npy (n_items, size, size, 3) in [0, 1]")
    out_settings = File(exists=True, desc="JSON: optimiser, its settings, generator, device")
    out_snapshots = traits.Str(desc="uint8 .npz, one (n_items, size, size, 3) array per snapshot "
                                    "iteration named iter-NNNN; empty without snapshots")


class Reconstruct(SimpleInterface):
    """Correct the decoded features' spread, then invert them through the encoder."""

    input_spec = _ReconstructInputSpec
    output_spec = _ReconstructOutputSpec

    def _run_interface(self, runtime):
        import json

        from bidsrecon.decoding.pixels import PIXEL_LAYER
        from bidsrecon.encoders import get_encoder, resolve_device
        from bidsrecon.recon import reconstruct
        from bidsrecon.recon.correction import correct_features
        from bidsrecon.recon.generator import load_generator, read_latent_bound
        from bidsrecon.recon.invert import SETTINGS, describe_settings

        inputs = self.inputs
        arrays = load_arrays(inputs.features_file)
        stats = {name: arrays[name] for name in ("train_mean", "train_spread", "feature_std") if name in arrays}
        decoded = dict(arrays["decoded"])
        # The decoded pixels are taken as the ridge gives them, not rescaled: their shrinkage towards
        # the mean image is what a least-squares estimate of uncertain pixels should do (rescaled,
        # SSIM fell 0.316 -> 0.298 on natural images and 0.688 -> 0.370 on letters, bench/validity.py).
        # Decoders saved before the pixels pseudo-layer existed decode none: the paper's start then.
        pixels = decoded.pop(PIXEL_LAYER, None)
        targets = correct_features(decoded, stats, inputs.correction)
        use_pixels = pixels is not None and inputs.optimiser != "generator"
        pixel_options = dict(pixel_target=pixels if use_pixels else None,
                             pixel_weight=inputs.pixel_weight if use_pixels else 0.0,
                             tv_weight=inputs.tv_weight if use_pixels else 0.0,
                             start=inputs.start if use_pixels or inputs.start == "noise" else "flat")
        device = resolve_device(inputs.device)
        encoder = get_encoder(inputs.encoder, weights_file=inputs.encoder_weights or None, seed=inputs.seed,
                              device=device)
        settings = {"n_iter": inputs.iterations}
        generator = None
        if inputs.optimiser == "generator":
            generator = load_generator(inputs.generator_weights, device=device)
            if inputs.generator_latent_max:
                settings["latent_max"] = read_latent_bound(inputs.generator_latent_max)
        elif inputs.optimiser == "gd":
            settings.update(jitter=inputs.jitter, clamp=inputs.clamp)
        else:
            settings["scale"] = inputs.coarse_factor
        settings = SETTINGS[inputs.optimiser](**settings)
        snapshots = {}

        def keep_snapshot(iteration, items, images):
            key = f"iter-{iteration:04d}"
            if key not in snapshots:
                snapshots[key] = np.zeros((len(targets[next(iter(targets))]),) + images.shape[1:], np.uint8)
            snapshots[key][items] = to_uint8(images)

        with limited_threads(inputs.n_threads):
            images = reconstruct(encoder, targets, inputs.image_size, optimiser=inputs.optimiser,
                                 settings=settings, generator=generator, seed=inputs.seed,
                                 batch_size=inputs.batch_size, mixed_precision=inputs.mixed_precision,
                                 snapshot_every=inputs.snapshot_every, on_snapshot=keep_snapshot, **pixel_options)
        self._results["out_images"] = f"{runtime.cwd}/reconstructions.npy"
        np.save(self._results["out_images"], images.astype(np.float32), allow_pickle=False)
        description = {**describe_settings(inputs.optimiser, settings), "device": device.type,
                       "mixed_precision": inputs.mixed_precision, "start": pixel_options["start"],
                       "pixel_weight": pixel_options["pixel_weight"], "tv_weight": pixel_options["tv_weight"],
                       "feature_correction": inputs.correction}
        if generator is not None:
            description.update(generator=generator.description, generator_sha256=generator.weights_sha256)
        self._results["out_settings"] = f"{runtime.cwd}/reconstruction.json"
        with open(self._results["out_settings"], "w") as stream:
            json.dump(description, stream, indent=2)
        self._results["out_snapshots"] = ""
        if snapshots:
            self._results["out_snapshots"] = f"{runtime.cwd}/snapshots.npz"
            np.savez(self._results["out_snapshots"], **snapshots)
        return runtime


class _EvaluateInputSpec(BaseInterfaceInputSpec):
    images_file = File(exists=True, mandatory=True, desc="reconstructions .npy")
    items_file = File(exists=True, mandatory=True, desc="TSV of the items: set, stimulus, n_trials")
    stimuli_file = File(exists=True, mandatory=True, desc="TSV: stimulus name -> image path")
    n_permutations = traits.Int(1000, usedefault=True, desc="permutations of the identification test")
    seed = traits.Int(0, usedefault=True, desc="seed of the permutations")
    n_threads = traits.Int(1, usedefault=True, nohash=True,
                           desc="threads of the evaluation networks, one batch each (the results do not "
                           "depend on them: not part of the cache key)")
    device = traits.Str("auto", usedefault=True, desc="where the evaluation networks run")
    bids_dir = traits.Str("", usedefault=True, desc="the input dataset (for a simulated one's noise ceiling)")
    subject = traits.Str("", usedefault=True, desc="participant label, without sub-")
    spec = traits.Str("ds001506", usedefault=True, desc="decoding specification (names the test sets)")


class _EvaluateOutputSpec(TraitedSpec):
    out_items = File(exists=True, desc="TSV: per item pixel correlation, SSIM and pairwise identification")
    out_sets = File(exists=True, desc="TSV: per test set means, p-values, feature identification, ceiling")
    out_columns = File(exists=True, desc="JSON: descriptions of the set table's network and ceiling columns")
    out_truths = File(exists=True, desc="float32 .npy: the stimuli at the reconstructions' size")


class Evaluate(SimpleInterface):
    """Score each test set (REFERENCE.md §4; Shen et al. 2019; Ozcelik & VanRullen 2023).

    Per item: PixCorr, SSIM and pairwise identification by pixel correlation (chance 0.5). Per
    set: their means, a permutation p-value of the identification, two-way identification in the
    features of each network of the field's table whose weights are here (the others "not
    available", never computed with other weights), and, for a dataset made by our simulator,
    the identification its noise allows in voxel space.
    """

    input_spec = _EvaluateInputSpec
    output_spec = _EvaluateOutputSpec

    def _run_interface(self, runtime):
        with limited_threads(self.inputs.n_threads):
            return self._evaluate(runtime)

    def _evaluate(self, runtime):
        from bidsrecon.encoders import resolve_device
        from bidsrecon.evaluation import (
            identification_permutation_test,
            pairwise_identification,
            pixcorr,
            shape_identification,
            ssim,
        )
        from bidsrecon.evaluation.networks import feature_identification_table
        from bidsrecon.images import load_images
        from bidsrecon.simulate.ceiling import simulated_noise_ceiling

        images = np.load(self.inputs.images_file, allow_pickle=False)
        items = pd.read_csv(self.inputs.items_file, sep="\t")
        stimuli = pd.read_csv(self.inputs.stimuli_file, sep="\t").set_index("stimulus")["path"]
        truths = load_images([stimuli[name] for name in items["stimulus"]], images.shape[1])
        device = resolve_device(self.inputs.device)
        ceiling = (simulated_noise_ceiling(self.inputs.bids_dir, self.inputs.subject, spec=self.inputs.spec)
                   if self.inputs.bids_dir else None)

        items["pixel_correlation"] = pixcorr(images, truths)
        items["ssim"] = ssim(images, truths)
        items["identification_pixel"] = np.nan
        items["identification_shape"] = np.nan
        rows, columns = [], {}
        for set_name, group in items.groupby("set", sort=False):
            index = group.index.to_numpy()
            row = {"set": set_name, "n_items": len(group), "n_trials": int(group["n_trials"].sum()),
                   "identification_pixel": np.nan, "identification_pixel_p": np.nan,
                   "pixel_correlation": group["pixel_correlation"].mean(), "ssim": group["ssim"].mean()}
            row["identification_shape"] = np.nan
            if len(group) > 1:
                items.loc[index, "identification_pixel"] = pairwise_identification(images[index], truths[index])
                shapes = shape_identification(images[index], truths[index], list(group["stimulus"]))
                items.loc[index, "identification_shape"] = shapes
                row["identification_shape"] = np.nanmean(shapes) if np.isfinite(shapes).any() else np.nan
                row["n_items_dropped"] = int(np.isnan(items.loc[index, "identification_pixel"]).sum())
                row["identification_pixel"], row["identification_pixel_p"] = identification_permutation_test(
                    images[index], truths[index], n_permutations=self.inputs.n_permutations, seed=self.inputs.seed)
                for network in feature_identification_table(images[index], truths[index], device=device):
                    column = "identification_" + re.sub(r"[^a-z0-9]", "", network["network"].lower())
                    row[column] = network["accuracy"] if network["available"] else np.nan
                    columns[column] = {"Description": f"Mean two-way identification in {network['network']} "
                                       f"features ({network['layer']}); chance 0.5. {network['note']}".strip()}
            row["noise_ceiling_identification"] = (ceiling or {}).get(set_name, np.nan)
            rows.append(row)
        sets = pd.DataFrame(rows)

        self._results["out_items"] = f"{runtime.cwd}/item_metrics.tsv"
        items.to_csv(self._results["out_items"], sep="\t", index=False, na_rep="n/a", float_format="%.6g")
        self._results["out_sets"] = f"{runtime.cwd}/set_metrics.tsv"
        sets.to_csv(self._results["out_sets"], sep="\t", index=False, na_rep="n/a", float_format="%.6g")
        self._results["out_columns"] = f"{runtime.cwd}/set_columns.json"
        Path(self._results["out_columns"]).write_text(json.dumps(columns, indent=2))
        self._results["out_truths"] = f"{runtime.cwd}/truths.npy"
        np.save(self._results["out_truths"], truths.astype(np.float32), allow_pickle=False)
        return runtime
