"""Nipype interface that writes one participant's derivatives (the workflow's only sink)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from bidsrecon.bids.derivatives import (
    DECODING_METRICS,
    DEVICES_FILE,
    ITEM_METRICS,
    SET_METRICS,
    atomic_write_bytes,
    atomic_write_text,
    item_files,
    item_stem,
    write_json,
)
from bidsrecon.preproc.motion import MOTION_COLUMNS

OPTIMISERS = {
    "lbfgs": "L-BFGS (a curvature history and an Armijo backtracking line search per item) over the pixels of "
             "an image parameterised through a sigmoid (values stay in [0, 1]), started from a flat image of the "
             "encoder's mean colour (Shen et al. 2019)",
    "gd": "Gradient descent with momentum over pixels: gradients divided by their mean magnitude, learning rate "
          "decaying linearly, pixel decay towards the mean colour and a Gaussian blur after each step (the "
          "Kamitani lab's icnn defaults)",
    "generator": "Gradient descent with momentum over the 4096-d latent of a DGN generator (Dosovitskiy & Brox "
                 "2016), with latent decay and bounds; the generated image is centre-cropped to 224 px "
                 "(Shen et al. 2019, Fig 2)",
}
LOSS = ("Sum over layers of w_l * ||features_l(image) - decoded_l||^2, features before the activation, w_l "
        "proportional to 1/||decoded_l||^2 and summing to 1; decoded features rescaled to the training features' "
        "spread first (Shen et al. 2019); plus pixel_weight * ||pool(image) - decoded_pixels||^2 / "
        "||decoded_pixels - mean||^2 for the decoded 32-px image (bidsrecon's pixels pseudo-layer)")

ITEM_COLUMNS = {
    "set": "Test set of the item.",
    "stimulus": "Stimulus name (events column named by the specification).",
    "n_trials": "Trials averaged before decoding.",
    "pixel_correlation": "Pearson correlation of reconstruction and stimulus pixels (RGB, reconstruction size).",
    "ssim": "Structural similarity of reconstruction and stimulus (grayscale, Gaussian window sigma 1.5; "
    "Wang et al. 2004).",
    "identification_pixel": "Pairwise identification accuracy by pixel correlation against the other items "
    "of the set (chance 0.5); n/a for an item dropped as constant.",
    "identification_shape": "Pairwise identification by pixel correlation against the items of the set drawn in "
    "the same colour only (shapes and letters; n/a for natural images): what is left when colour cannot help.",
}
ACCURACY_COLUMNS = {
    "set": "Test set.",
    "layer": "Encoder layer.",
    "n_items": "Items of the set.",
    "n_units": "Units scored (a random sample of the layer's units, the same for every set).",
    "profile_correlation": "Mean over units of the correlation of decoded and true features across items.",
    "profile_units_scored": "Units that vary across items (the others have no correlation).",
    "pattern_correlation": "Mean over items of the correlation of decoded and true features across units.",
    "pattern_items_scored": "Items with a defined pattern correlation.",
}
# Sidecar of the motion traces in qc/: the six parameters of preproc.motion, then FD.
MOTION_SIDECAR = {
    **{name: {"Description": f"{'Translation along' if name.startswith('trans') else 'Rotation about'} "
                             f"{name[-1]}.", "Units": "mm" if name.startswith("trans") else "rad"}
       for name in MOTION_COLUMNS},
    "framewise_displacement": {"Description": "Framewise displacement (Power et al. 2012, 50-mm head; "
                               "0 for the first volume).", "Units": "mm"},
}
# Sidecar of the reference run's per-volume quality in qc/ (the run whose tSNR map is there too).
QUALITY_SIDECAR = {
    "global_signal": {"Description": "Mean of the run inside the brain mask, per volume."},
    "dvars": {"Description": "DVARS (Power et al. 2012) after scaling the run to a mode of 1000, as Nipype's "
              "compute_dvars gives it; n/a for the first volume."},
    "std_dvars": {"Description": "Standardised DVARS (Nichols 2017): about 1 without artefacts; n/a for the first "
                  "volume."},
}
SET_COLUMNS = {
    "set": "Test set.",
    "n_items": "Items reconstructed.",
    "n_trials": "Trials used.",
    "identification_pixel": "Mean pairwise identification accuracy by pixel correlation (chance 0.5).",
    "identification_pixel_p": "Permutation p-value of identification_pixel: the share of 1000 random "
    "assignments of stimuli to reconstructions scoring at least as high (plus one, over 1001).",
    "identification_shape": "Mean identification_shape of the items (n/a for sets without shapes or letters).",
    "n_items_dropped": "Items left out of identification because their reconstruction or stimulus is "
    "constant (no correlation is defined).",
    "pixel_correlation": "Mean pixel correlation (PixCorr).",
    "ssim": "Mean structural similarity (SSIM, grayscale, Gaussian window).",
    "noise_ceiling_identification": "For a dataset made by bidsrecon's simulator: pairwise identification of "
    "the measured test samples against the noise-free responses in voxel space, the accuracy the noise allows "
    "(n/a for real data).",
    "encoder": "Encoder whose features were decoded and inverted.",
}


class _WriteInputSpec(BaseInterfaceInputSpec):
    output_dir = Directory(mandatory=True, desc="where sub-<label>/ is written: the output's staging folder")
    subject = traits.Str(mandatory=True)
    images_file = File(exists=True, mandatory=True)
    truths_file = File(exists=True, mandatory=True)
    items_metrics = File(exists=True, mandatory=True)
    set_metrics = File(exists=True, mandatory=True)
    decoder_file = File(exists=True, mandatory=True, desc="the decoder's JSON sidecar")
    decoder_arrays = File(exists=True, mandatory=True, desc="the decoder's safetensors")
    accuracy_file = File(exists=True, mandatory=True, desc="TSV of decoding accuracy per set and layer")
    save_decoded_features = traits.Enum("", "h5", "bdpy", mandatory=True,
                                        desc="also write the decoded features: h5 (our HDF5 file) or bdpy (the "
                                        "Kamitani lab's layout); empty for neither")
    rois = traits.List(traits.Str, mandatory=True,
                       desc="the ROIs of the voxel mask as --roi names them (none: the brain mask); recorded in a "
                       "fitted decoder's sidecar and naming the <roi> folder of the bdpy layout")
    features_file = File(exists=True, desc="decoded features (DecodeFeatures.out_features)")
    items_file = File(exists=True, desc="TSV of the decoded items")
    trials_files = InputMultiObject(File(exists=True), mandatory=True)
    seed = traits.Int(mandatory=True)
    recon_settings_file = File(exists=True, mandatory=True, desc="Reconstruct.out_settings")
    mask_file = File(exists=True, mandatory=True, desc="the voxel mask the decoder was trained in")
    mask_name = traits.Str(mandatory=True, desc="its BIDS name in func/ (derivatives.decoder_mask_name)")
    mask_source = traits.Str(mandatory=True, desc="BIDS URI of the bold run whose grid the mask is in")
    reference_file = File(exists=True, desc="raw input: the mean volume every run was realigned to, kept "
                          "with the decoder so that later sessions can be realigned to it")
    copy_decoder = traits.Bool(mandatory=True,
                               desc="the decoder was applied (--decoders-dir), not fitted: copy its files, "
                               "sidecar included, byte for byte")
    snapshots_file = traits.Str("", usedefault=True, desc="Reconstruct.out_snapshots")
    set_columns_file = File(exists=True, mandatory=True, desc="Evaluate.out_columns")
    # Quality of the runs read: none with --bdata-dir (the lab's samples), whose outputs have no qc/.
    run_labels = traits.List(traits.Str, desc="each run's label, e.g. ses-x_task-y_run-01")
    confounds_files = InputMultiObject(File(exists=True),
                                       desc="each run's motion parameters (our realignment's or fMRIPrep's)")
    tsnr_file = File(exists=True, desc="tSNR map of the reference training run")
    quality_file = File(exists=True, desc="global signal and DVARS of that run (TSV)")
    carpet_file = File(exists=True, desc="its carpet plot (PNG)")
    ceiling_file = File(exists=True, desc="NoiseCeiling.out_ceiling (simulated datasets only)")
    # Where each step ran, as the node that ran it resolved --device (for the provenance).
    decode_device = traits.Str(mandatory=True)
    reconstruct_device = traits.Str(mandatory=True)
    evaluate_device = traits.Str(mandatory=True)


class _WriteOutputSpec(TraitedSpec):
    out_files = traits.List(traits.Str, desc="files written")


class WriteDerivatives(SimpleInterface):
    """Write reconstructions (PNG + JSON), metrics (TSV + JSON) and the decoder description."""

    input_spec = _WriteInputSpec
    output_spec = _WriteOutputSpec

    def _run_interface(self, runtime):
        subject = self.inputs.subject
        subject_dir = Path(self.inputs.output_dir) / f"sub-{subject}"
        # A folder left by a run that failed while writing: this run's outputs replace it whole.
        shutil.rmtree(subject_dir, ignore_errors=True)
        items = pd.read_csv(self.inputs.items_metrics, sep="\t")
        decoder = json.loads(Path(self.inputs.decoder_file).read_text())
        written = self._write_items(subject_dir, subject, items, decoder, runtime)
        written += self._write_tables(subject_dir, subject, items, decoder)
        # Read and removed by the provenance writer (bidsrecon.run_record.write_provenance).
        write_json(subject_dir / "log" / DEVICES_FILE.format(subject=subject), {
            step: getattr(self.inputs, f"{step}_device") for step in ("decode", "reconstruct", "evaluate")})
        written += self._write_decoder(subject_dir, subject, decoder)
        written += self._write_mask(subject_dir)
        if isdefined(self.inputs.tsnr_file):
            written += self._write_quality(subject_dir, subject)
        if self.inputs.save_decoded_features == "h5":
            written.append(self._write_decoded_features(subject_dir, subject, decoder, runtime))
        elif self.inputs.save_decoded_features == "bdpy":
            written += self._write_bdpy_decoded_features(subject_dir, subject, decoder)
        self._results["out_files"] = written
        return runtime

    def _write_items(self, subject_dir, subject, items, decoder, runtime):
        """Per item: the reconstruction and the stimulus at its size (PNG), the sidecar, the snapshots."""
        from bidsrecon.images import save_png

        images = np.load(self.inputs.images_file, allow_pickle=False)
        truths = np.load(self.inputs.truths_file, allow_pickle=False)
        trials = pd.concat([pd.read_csv(f, sep="\t") for f in self.inputs.trials_files], ignore_index=True)
        settings = json.loads(Path(self.inputs.recon_settings_file).read_text())
        snapshots = np.load(self.inputs.snapshots_file) if self.inputs.snapshots_file else {}
        scratch = Path(runtime.cwd) / "image.png"
        written = []
        files = [item_files(subject_dir, subject, row.set, row.stimulus) for row in items.itertuples()]
        if len({str(paths["recon"]) for paths in files}) != len(files):
            raise ValueError("two stimuli map to the same output name; rename the stimuli")
        for index, (row, paths) in enumerate(zip(items.itertuples(), files)):
            sources = trials[(trials["set"] == row.set) & (trials["stimulus"] == row.stimulus)]
            for kind, image in (("recon", images[index]), ("stimulus", truths[index])):
                save_png(image, scratch)
                atomic_write_bytes(paths[kind], scratch.read_bytes())
                written.append(str(paths[kind]))
            write_json(paths["sidecar"], self._recon_sidecar(subject, row, sources, decoder, settings,
                                                             int(images.shape[1])))
            written.append(str(paths["sidecar"]))
            for iteration in sorted(snapshots):  # "iter-NNNN"
                stem = item_stem(subject, row.set, row.stimulus, iteration=int(iteration.removeprefix("iter-")))
                path = subject_dir / "recon" / "snapshots" / f"{stem}_recon.png"
                save_png(snapshots[iteration][index] / np.float32(255), scratch)
                atomic_write_bytes(path, scratch.read_bytes())
                written.append(str(path))
        return written

    def _recon_sidecar(self, subject, row, sources, decoder, settings, image_size):
        from bidsrecon.decoding.lab_tree import SIDECAR_FORMAT

        lab = decoder.get("Format") == SIDECAR_FORMAT
        return {
            "Description": f"Image reconstructed from sub-{subject}'s brain activity for stimulus "
            f"{row.stimulus} ({row.set}); the matching _stimulus.png is the stimulus at this size.",
            "Stimulus": row.stimulus,
            "TestSet": row.set,
            "Sources": sorted(set(sources["source"])),
            **self._source_trials(sources),
            "Encoder": decoder["Encoder"],
            "EncoderDescription": decoder["EncoderDescription"],
            "Layers": decoder["Layers"],
            "Optimizer": OPTIMISERS[settings["optimiser"]],
            "OptimizerSettings": settings,
            "Loss": LOSS,
            "Iterations": settings["n_iter"],
            "Seed": self.inputs.seed,
            "ImageSize": image_size,
            # Which decoder made it: the arrays' hash identifies it across output datasets.
            "Decoder": {"File": f"bids::sub-{subject}/decoder/{Path(self.inputs.decoder_file).name}",
                        "ArraysSHA256": decoder["ArraysSHA256"],
                        "FittedInThisRun": not self.inputs.copy_decoder and not lab,
                        # --bdata-dir --decoders-dir: the Kamitani lab's trained decoders, applied as they are.
                        **({"KamitaniLabDecoders": decoder["Tree"], "Description": decoder["Description"]}
                           if lab else {})},
        }

    @staticmethod
    def _source_trials(sources):
        """The trials an item averages: their onsets in runs, or (BData input) their rows in the files."""
        if "onset" in sources.columns:
            return {"SourceTrials": [{"Source": t.source, "Onset": float(t.onset), "Duration": float(t.duration)}
                                     for t in sources.itertuples()]}
        return {"SourceSamples": [{"Source": t.source, "Sample": int(t.sample), "Run": int(t.run)}
                                  for t in sources.itertuples()]}

    def _write_tables(self, subject_dir, subject, items, decoder):
        """The set, item and decoding metrics (TSV and their column descriptions)."""
        sets = pd.read_csv(self.inputs.set_metrics, sep="\t")
        ceiling = json.loads(Path(self.inputs.ceiling_file).read_text()) if isdefined(self.inputs.ceiling_file) else {}
        sets["noise_ceiling_identification"] = [ceiling.get(name, np.nan) for name in sets["set"]]
        sets["encoder"] = decoder["Encoder"]
        accuracy = pd.read_csv(self.inputs.accuracy_file, sep="\t")
        set_columns = {**SET_COLUMNS, **json.loads(Path(self.inputs.set_columns_file).read_text())}
        written = []
        for stem, table, columns in (
            (SET_METRICS.format(subject=subject), sets, set_columns),
            (ITEM_METRICS.format(subject=subject), items, ITEM_COLUMNS),
            (DECODING_METRICS.format(subject=subject), accuracy, ACCURACY_COLUMNS),
        ):
            path = subject_dir / f"{stem}.tsv"
            atomic_write_text(path, table.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.6g"))
            write_json(subject_dir / f"{stem}.json", {column: text if isinstance(text, dict) else {"Description": text}
                                                      for column, text in columns.items() if column in table})
            written.append(str(path))
        return written

    def _write_decoder(self, subject_dir, subject, decoder):
        """The decoder folder: arrays, sidecar, voxel mask and (raw input) motion reference volume.

        Everything is copied byte for byte (the sidecar records the hashes). A fitted decoder's
        sidecar is completed with the names of the mask and reference written next to it; an
        applied one (``copy_decoder``) is copied unchanged, so that the output says exactly which
        decoder made it and can itself serve as ``--decoders-dir``.
        """
        from bidsrecon.encoders.base import file_sha256

        folder = subject_dir / "decoder"
        # The sidecar names its arrays file, so the arrays keep the name the decode node gave them.
        arrays = folder / Path(self.inputs.decoder_arrays).name
        atomic_write_bytes(arrays, Path(self.inputs.decoder_arrays).read_bytes())
        # The voxel mask goes with the decoder (byte for byte: its hash is in the sidecar), so that
        # the decoder can be applied to data sampled in the same voxels later. The same voxels as BIDS
        # names them are in func/ (`_write_mask`); here the decoder's suffix keeps pybids from taking
        # the two for one file.
        # An applied decoder's file names come from its sidecar: plain names, checked when it was read.
        mask = folder / (decoder["VoxelMask"]["File"] if self.inputs.copy_decoder
                         else f"sub-{subject}_desc-voxelmask_decoder.nii.gz")
        atomic_write_bytes(mask, Path(self.inputs.mask_file).read_bytes())
        written = [str(arrays), str(mask)]
        # The volume the raw runs were realigned to: later sessions are realigned to it too.
        if isdefined(self.inputs.reference_file):
            reference = folder / (decoder["MotionReference"]["File"] if self.inputs.copy_decoder
                                  else f"sub-{subject}_desc-reference_boldref.nii.gz")
            atomic_write_bytes(reference, Path(self.inputs.reference_file).read_bytes())
            written.append(str(reference))
        sidecar = folder / Path(self.inputs.decoder_file).name
        if self.inputs.copy_decoder:
            atomic_write_bytes(sidecar, Path(self.inputs.decoder_file).read_bytes())
        else:
            decoder["VoxelMask"]["File"] = mask.name
            decoder["VoxelMask"]["Rois"] = list(self.inputs.rois)  # none: the brain mask
            if isdefined(self.inputs.reference_file):
                decoder["MotionReference"] = {
                    "File": reference.name, "SHA256": file_sha256(reference),
                    "Description": "Mean of the first training run after realignment; every raw run was "
                    "realigned to it."}
            write_json(sidecar, decoder)
        written += self._write_fastl2lir_folders(folder, mask.name)
        return [*written, str(sidecar)]

    def _write_fastl2lir_folders(self, folder, mask_name):
        """A per-unit decoder's copy in the Kamitani lab's layout (``fastl2lir/``, beside its arrays), if any.

        Its description names the mask written next to the decoder and its ROIs; an applied decoder's is copied
        unchanged.
        """
        from bidsrecon.decoding.fastl2lir_folders import DESCRIPTION_FILE, FOLDERS_NAME

        source = Path(self.inputs.decoder_arrays).parent / FOLDERS_NAME
        if not (source / DESCRIPTION_FILE).is_file():
            return []
        written = []
        for path in sorted(source.rglob("*")):
            if path.is_file() and path.name != DESCRIPTION_FILE:
                target = folder / FOLDERS_NAME / path.relative_to(source)
                atomic_write_bytes(target, path.read_bytes())
                written.append(str(target))
        description = json.loads((source / DESCRIPTION_FILE).read_text())
        if not self.inputs.copy_decoder and description.get("VoxelMask"):
            # The same mask record as the sidecar's: its file beside the decoder, and its ROIs.
            description["VoxelMask"]["File"] = mask_name
            description["VoxelMask"]["Rois"] = list(self.inputs.rois)
        target = folder / FOLDERS_NAME / DESCRIPTION_FILE
        write_json(target, description)
        return [*written, str(target)]

    def _write_mask(self, subject_dir):
        """The decoder's voxel mask as BIDS names it (``func/``, with ``space-`` for fMRIPrep input)."""
        path = subject_dir / "func" / self.inputs.mask_name
        atomic_write_bytes(path, Path(self.inputs.mask_file).read_bytes())
        sidecar = path.with_name(path.name.removesuffix(".nii.gz") + ".json")
        write_json(sidecar, {
            "Description": "Voxels the decoder reads: the regions of interest (or the brain mask) in the grid of "
                           "the run named in Sources; the same file as the decoder folder's mask.",
            "Type": "ROI",
            "Sources": [self.inputs.mask_source],
            "SpatialReference": self.inputs.mask_source,
        })
        return [str(path), str(sidecar)]

    def _write_quality(self, subject_dir, subject):
        """Motion traces per run and the tSNR map, for the participant report (``qc/``)."""
        from bidsrecon.preproc.qc import motion_table

        written = []
        for label, confounds in zip(self.inputs.run_labels, self.inputs.confounds_files):
            path = subject_dir / "qc" / f"sub-{subject}_{label}_desc-motion_timeseries.tsv"
            atomic_write_text(path, motion_table(confounds).to_csv(sep="\t", index=False, float_format="%.6g"))
            written.append(str(path))
        write_json(subject_dir / "qc" / f"sub-{subject}_desc-motion_timeseries.json", MOTION_SIDECAR)
        # The reference run's map, in its grid: named like the decoder's mask.
        path = subject_dir / "qc" / self.inputs.mask_name.replace("_desc-decoder_mask", "_desc-tsnr_boldmap")
        atomic_write_bytes(path, Path(self.inputs.tsnr_file).read_bytes())
        quality = subject_dir / "qc" / f"sub-{subject}_desc-quality_timeseries.tsv"
        atomic_write_bytes(quality, Path(self.inputs.quality_file).read_bytes())
        write_json(quality.with_suffix(".json"), QUALITY_SIDECAR)
        carpet = subject_dir / "qc" / f"sub-{subject}_desc-carpet_bold.png"
        atomic_write_bytes(carpet, Path(self.inputs.carpet_file).read_bytes())
        written += [str(quality), str(carpet)]
        return [*written, str(path)]

    def _write_decoded_features(self, subject_dir, subject, decoder, runtime):
        """Decoded features of every test item, for other reconstruction methods to take."""
        from bidsrecon.arrays import load_arrays
        from bidsrecon.decoding.decoded_features import save_decoded_features

        decoded = load_arrays(self.inputs.features_file)["decoded"]
        scratch = Path(runtime.cwd) / "decoded_features.h5"
        # The network's layers, then the pixels pseudo-layer (decoded from its two parts) when present.
        layers = [layer for layer in decoder["Layers"] if layer in decoded] + [
            layer for layer in decoded if layer not in decoder["Layers"]]
        save_decoded_features(scratch, {layer: decoded[layer] for layer in layers},
                              pd.read_csv(self.inputs.items_file, sep="\t"),
                              metadata={"Encoder": decoder["Encoder"], "ImageSize": decoder["ImageSize"],
                                        "Description": "decoded before the spread correction"})
        path = subject_dir / "decoder" / f"sub-{subject}_desc-decoded_features.h5"
        atomic_write_bytes(path, scratch.read_bytes())
        return str(path)

    def _write_bdpy_decoded_features(self, subject_dir, subject, decoder):
        """The network layers' decoded features in the Kamitani lab's layout (``decoder/bdpy/<set>/``).

        No pixels pseudo-layer: it is ours, the lab has none. The ``<roi>`` folder is named from
        the ROIs of the voxel mask; an applied decoder's from its sidecar (``unknown`` for a
        decoder saved before sidecars recorded them).
        """
        from bidsrecon.arrays import load_arrays
        from bidsrecon.decoding.pixels import PIXEL_LAYER, PIXEL_PARTS
        from bidsrecon.labformats.decoded_features import roi_label, write_decoded_feature_sets

        decoded = load_arrays(self.inputs.features_file)["decoded"]
        items = pd.read_csv(self.inputs.items_file, sep="\t", dtype={"set": str, "stimulus": str},
                            keep_default_na=False)
        rois = decoder["VoxelMask"].get("Rois") if self.inputs.copy_decoder else list(self.inputs.rois)
        if not (isinstance(rois, list) and all(isinstance(name, str) for name in rois)):
            rois = None  # absent, or not what bidsrecon writes
        written = write_decoded_feature_sets(
            subject_dir / "decoder" / "bdpy", {layer: decoded[layer] for layer in decoder["Layers"]
                                                if layer in decoded and layer not in (PIXEL_LAYER, *PIXEL_PARTS)},
            items["set"], items["stimulus"], subject=f"sub-{subject}",
            roi="unknown" if rois is None else roi_label(rois))
        return [str(path) for paths in written.values() for path in paths]
