"""Nipype interfaces of the reconstruction and its evaluation."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits

from bidsrecon.arrays import load_arrays
from bidsrecon.interfaces.threads import limited_threads


class _ReconstructInputSpec(BaseInterfaceInputSpec):
    features_file = File(exists=True, mandatory=True, desc="decoded features (DecodeFeatures.out_features)")
    encoder = traits.Str(mandatory=True)
    encoder_weights = traits.Str(mandatory=True)
    image_size = traits.Int(mandatory=True)
    iterations = traits.Int(mandatory=True)
    seed = traits.Int(mandatory=True)
    n_threads = traits.Int(mandatory=True, nohash=True,
                           desc="threads (the results do not depend on them: not part of the cache key)")
    optimiser = traits.Enum("lbfgs", "gd", "generator", mandatory=True)
    generator_weights = traits.Str(mandatory=True)
    generator_latent_max = traits.Str(mandatory=True, desc="a number or a file; empty: unbounded")
    jitter = traits.Int(mandatory=True)
    device = traits.Str(mandatory=True)
    mixed_precision = traits.Bool(mandatory=True)
    batch_size = traits.Int(mandatory=True)
    snapshot_every = traits.Int(mandatory=True)
    correction = traits.Enum("spread", "none", "lab2019", "cookbook", "cookbook-trainmean", mandatory=True,
                             desc="correction of the decoded features before inversion (bidsrecon.recon.correction)")
    pixel_weight = traits.Float(mandatory=True, desc="weight of the decoded pixels' term in the loss "
                                "(0: none; needs features decoded with the pixels pseudo-layer)")
    tv_weight = traits.Float(mandatory=True, desc="weight of a total-variation term, in the pixel term's "
                             "units (needs the pixels pseudo-layer)")
    coarse_factor = traits.Int(mandatory=True, desc="lbfgs: optimise an image this many times smaller, "
                               "upsampled (bilinear) before the encoder")
    start = traits.Enum("pixels", "flat", "noise", mandatory=True,
                        desc="start image: the decoded pixels, the paper's flat mean colour, or uniform noise")
    clamp = traits.Bool(mandatory=True, desc="gd: keep pixels in [0, 1] after each step")


class _ReconstructOutputSpec(TraitedSpec):
    out_images = File(exists=True, desc="float32 .npy (n_items, size, size, 3) in [0, 1]")
    out_settings = File(exists=True, desc="JSON: optimiser, its settings, generator, device")
    out_snapshots = traits.Str(desc="uint8 .npz, one (n_items, size, size, 3) array per snapshot "
                                    "iteration named iter-NNNN; empty without snapshots")
    out_device = traits.Str(desc="where the reconstruction ran: cpu, cuda or mps")


class Reconstruct(SimpleInterface):
    """The reconstruction stage (:func:`bidsrecon.recon.stage.reconstruct_decoded`): files in, files out.

    ``--device auto`` is resolved here, on the machine that runs the node, and recorded in
    ``out_settings`` and ``out_device``.
    """

    input_spec = _ReconstructInputSpec
    output_spec = _ReconstructOutputSpec

    def _run_interface(self, runtime):
        from bidsrecon.encoders import get_encoder, resolve_device
        from bidsrecon.recon.generator import load_generator, read_latent_bound
        from bidsrecon.recon.stage import reconstruct_decoded

        inputs = self.inputs
        device = resolve_device(inputs.device)
        encoder = get_encoder(inputs.encoder, weights_file=inputs.encoder_weights or None, seed=inputs.seed,
                              device=device)
        generator = load_generator(inputs.generator_weights, device=device) if inputs.optimiser == "generator" \
            else None
        latent_max = read_latent_bound(inputs.generator_latent_max) if generator and inputs.generator_latent_max \
            else None
        with limited_threads(inputs.n_threads):
            result = reconstruct_decoded(
                load_arrays(inputs.features_file), encoder, image_size=inputs.image_size, optimiser=inputs.optimiser,
                iterations=inputs.iterations, correction=inputs.correction, pixel_weight=inputs.pixel_weight,
                tv_weight=inputs.tv_weight, start=inputs.start, jitter=inputs.jitter, clamp=inputs.clamp,
                coarse_factor=inputs.coarse_factor, generator=generator, latent_max=latent_max, seed=inputs.seed,
                batch_size=inputs.batch_size, mixed_precision=inputs.mixed_precision,
                snapshot_every=inputs.snapshot_every)
        self._results["out_device"] = device.type
        self._results["out_images"] = f"{runtime.cwd}/reconstructions.npy"
        np.save(self._results["out_images"], result.images, allow_pickle=False)
        self._results["out_settings"] = f"{runtime.cwd}/reconstruction.json"
        Path(self._results["out_settings"]).write_text(json.dumps(result.description, indent=2))
        self._results["out_snapshots"] = ""
        if result.snapshots:
            self._results["out_snapshots"] = f"{runtime.cwd}/snapshots.npz"
            np.savez(self._results["out_snapshots"], **result.snapshots)
        return runtime


class _EvaluateInputSpec(BaseInterfaceInputSpec):
    images_file = File(exists=True, mandatory=True, desc="reconstructions .npy")
    items_file = File(exists=True, mandatory=True, desc="TSV of the items: set, stimulus, n_trials")
    stimuli_file = File(exists=True, mandatory=True, desc="TSV: stimulus name -> image path")
    n_permutations = traits.Int(1000, usedefault=True, desc="permutations of the identification test")
    seed = traits.Int(mandatory=True, desc="seed of the permutations")
    n_threads = traits.Int(mandatory=True, nohash=True,
                           desc="threads of the evaluation networks, one batch each (the results do not "
                           "depend on them: not part of the cache key)")
    device = traits.Str(mandatory=True, desc="where the evaluation networks run")


class _EvaluateOutputSpec(TraitedSpec):
    out_items = File(exists=True, desc="TSV: per item pixel correlation, SSIM and pairwise identification")
    out_sets = File(exists=True, desc="TSV: per test set means, p-values, feature identification")
    out_columns = File(exists=True, desc="JSON: descriptions of the set table's network columns")
    out_truths = File(exists=True, desc="float32 .npy: the stimuli at the reconstructions' size")
    out_device = traits.Str(desc="where the evaluation networks ran: cpu, cuda or mps")


class Evaluate(SimpleInterface):
    """Score each test set (:func:`bidsrecon.evaluation.scoring.score_sets`): files in, files out."""

    input_spec = _EvaluateInputSpec
    output_spec = _EvaluateOutputSpec

    def _run_interface(self, runtime):
        from bidsrecon.encoders import resolve_device
        from bidsrecon.evaluation.scoring import score_sets
        from bidsrecon.images import load_images

        images = np.load(self.inputs.images_file, allow_pickle=False)
        items = pd.read_csv(self.inputs.items_file, sep="\t")
        stimuli = pd.read_csv(self.inputs.stimuli_file, sep="\t").set_index("stimulus")["path"]
        truths = load_images([stimuli[name] for name in items["stimulus"]], images.shape[1])
        device = resolve_device(self.inputs.device)
        with limited_threads(self.inputs.n_threads):
            items, sets, columns = score_sets(images, truths, items, n_permutations=self.inputs.n_permutations,
                                              seed=self.inputs.seed, device=device)
        self._results["out_device"] = device.type
        self._results["out_items"] = f"{runtime.cwd}/item_metrics.tsv"
        items.to_csv(self._results["out_items"], sep="\t", index=False, na_rep="n/a", float_format="%.6g")
        self._results["out_sets"] = f"{runtime.cwd}/set_metrics.tsv"
        sets.to_csv(self._results["out_sets"], sep="\t", index=False, na_rep="n/a", float_format="%.6g")
        self._results["out_columns"] = f"{runtime.cwd}/set_columns.json"
        Path(self._results["out_columns"]).write_text(json.dumps(columns, indent=2))
        self._results["out_truths"] = f"{runtime.cwd}/truths.npy"
        np.save(self._results["out_truths"], truths.astype(np.float32), allow_pickle=False)
        return runtime


class _NoiseCeilingInputSpec(BaseInterfaceInputSpec):
    bids_dir = traits.Str(mandatory=True, desc="the input dataset, made by bidsrecon's simulator")
    subject = traits.Str(mandatory=True, desc="participant label, without sub-")
    spec = traits.Str(mandatory=True, desc="decoding specification (names the test sets)")


class _NoiseCeilingOutputSpec(TraitedSpec):
    out_ceiling = File(exists=True, desc="JSON: per test set, the identification the simulated noise allows")


class NoiseCeiling(SimpleInterface):
    """A simulated dataset's noise ceiling per test set (:mod:`bidsrecon.simulate.ceiling`).

    Only datasets made by bidsrecon's simulator get this node; real data never enters the
    simulator's code.
    """

    input_spec = _NoiseCeilingInputSpec
    output_spec = _NoiseCeilingOutputSpec

    def _run_interface(self, runtime):
        from bidsrecon.simulate.ceiling import simulated_noise_ceiling

        ceiling = simulated_noise_ceiling(self.inputs.bids_dir, self.inputs.subject, spec=self.inputs.spec)
        self._results["out_ceiling"] = f"{runtime.cwd}/noise_ceiling.json"
        Path(self._results["out_ceiling"]).write_text(json.dumps(ceiling or {}, indent=2))
        return runtime
