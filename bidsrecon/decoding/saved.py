"""A participant's saved decoder in ``--decoders-dir``: found, and checked against the new data.

``--decoders-dir DIR`` names the output dataset of an earlier participant-level run. Its
``sub-<label>/decoder/`` folder holds what applying the decoder needs:

- ``sub-<label>_decoder.json`` and ``.safetensors``, the decoder (:mod:`bidsrecon.decoding.artifact`);
- for per-unit decoders (``--decoder fastl2lir``), ``fastl2lir/``: the same decoders in the Kamitani
  lab's cookbook layout with their description (:mod:`bidsrecon.decoding.fastl2lir_folders`),
  which is what applying them reads;
- ``sub-<label>_desc-voxelmask_decoder.nii.gz``, the voxel mask its samples were taken in;
- ``sub-<label>_desc-reference_boldref.nii.gz`` (raw input only), the mean volume every raw run
  was realigned to: new runs are realigned to it too, so that a voxel of a later session is the
  same voxel the decoder was trained on.

Everything that can be checked without the heavy work is checked here, when the participant is
planned: the files, the encoder, image size and layers, the grid of every run, the mask and
reference against the hashes the sidecar records, and the training images of a kernel decoder
(their features are part of every decoded feature; a per-unit decoder needs none, but its
folders' description must agree with its sidecar).
"""
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from bidsrecon.decoding.artifact import load_decoder
from bidsrecon.decoding.fastl2lir_folders import (
    DESCRIPTION_FILE,
    FOLDERS_NAME,
    model_folder,
    read_folders_description,
)
from bidsrecon.decoding.pixels import PIXEL_LAYER, PIXEL_PARTS
from bidsrecon.decoding.sidecar import (
    _check_expected,
    decoder_paths,
    is_per_unit,
    mask_voxel_set_sha256,
    read_decoder_description,
)
from bidsrecon.encoders.base import file_sha256
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.grid import same_grid


@dataclass(frozen=True)
class SavedDecoder:
    """The files of one participant's saved decoder, and its sidecar's content."""

    stem: str  # path without extension: <stem>.json and <stem>.safetensors
    mask_file: str
    reference_file: str  # None when the decoder was trained on fMRIPrep input
    description: dict

    @property
    def sidecar_file(self):
        return str(decoder_paths(self.stem)[1])

    @property
    def per_unit(self):
        """True for per-unit decoders (``--decoder fastl2lir``), applied from their cookbook folders."""
        return is_per_unit(self.description)

    @property
    def folders_dir(self):
        """The cookbook folders beside a per-unit decoder (``fastl2lir/``); what applying it reads."""
        return str(Path(self.stem).parent / FOLDERS_NAME)

    @property
    def training_stimuli(self):
        """Names of the training images, in the order of the decoder's coefficients."""
        return list(self.description["TrainingStimuli"])

    @property
    def images_needed(self):
        """The training images applying the decoder reads: a kernel decoder's; none for per-unit decoders."""
        return [] if self.per_unit else self.training_stimuli


def decoder_stem(decoders_dir, subject):
    """Where the saved decoder of ``subject`` lies in ``decoders_dir`` (path without extension)."""
    return Path(decoders_dir) / f"sub-{subject}" / "decoder" / f"sub-{subject}_decoder"


def find_saved_decoder(decoders_dir, subject):
    """The saved decoder of ``subject`` in ``decoders_dir``, its files checked to exist.

    Parameters
    ----------
    decoders_dir : str or Path
        A bidsrecon output dataset (``--decoders-dir``).
    subject : str
        Label without ``sub-``.

    Returns
    -------
    SavedDecoder

    Raises
    ------
    BidsReconError
        Exit 66 naming the expected file when the decoder, its mask or its reference volume is
        missing (for a per-unit decoder, its ``fastl2lir/`` folders' description too); exit 64 when
        the sidecar is not a decoder this version can apply, or when the participant's folder holds
        FastL2LiR folders without a sidecar (the lab's trained decoders, applied to runs by nothing;
        to the lab's BData samples by ``--bdata-dir`` with ``--decoders-dir``,
        :mod:`bidsrecon.decoding.lab_tree`).
    """
    stem = decoder_stem(decoders_dir, subject)
    sidecar_file = decoder_paths(stem)[1]
    folders_description = sidecar_file.parent / FOLDERS_NAME / DESCRIPTION_FILE
    if not sidecar_file.is_file() and folders_description.is_file():
        # The lab's trained folders alone: nothing ties them to this run's runs and grid yet.
        raise BidsReconError(
            f"--decoders-dir {decoders_dir}: sub-{subject} holds FastL2LiR folders ({folders_description}) but no "
            f"bidsrecon decoder sidecar ({sidecar_file}); --decoders-dir applies bidsrecon's saved decoders only "
            "(kernel ridge or per-unit, with their sidecar, voxel mask and motion reference). Apply the lab's "
            "folders from Python (bidsrecon.decoding.folders_stage.apply_fastl2lir_folders, on samples in the voxel mask "
            "their description names; see the README), apply a tree the lab trained on its BData files with "
            "--bdata-dir and --decoders-dir TREE, or fit a decoder here (--decoder fastl2lir).",
            EXIT_BAD_ARGUMENTS)
    if not sidecar_file.is_file():
        raise BidsReconError(
            f"--decoders-dir {decoders_dir}: sub-{subject} has no saved decoder ({sidecar_file} not found). "
            f"Fit one first (bidsrecon <bids_dir> {decoders_dir} participant --participant-label {subject}, "
            "with the training sessions), or give the output folder that holds it.", EXIT_INPUT_MISSING)
    description = read_decoder_description(stem)
    folder = sidecar_file.parent
    mask_file = folder / description["VoxelMask"]["File"]  # a plain file name, checked on reading
    if not mask_file.is_file():
        raise BidsReconError(
            f"{sidecar_file}: its voxel mask {mask_file} is missing; copy the whole decoder folder "
            f"{folder} (the mask travels with the decoder), or retrain.", EXIT_INPUT_MISSING)
    reference = description.get("MotionReference")
    reference_file = None
    if reference:
        reference_file = folder / reference["File"]
        if not reference_file.is_file():
            raise BidsReconError(
                f"{sidecar_file}: its motion reference volume {reference_file} is missing; copy the whole "
                f"decoder folder {folder}, or retrain.", EXIT_INPUT_MISSING)
    saved = SavedDecoder(str(stem), str(mask_file), None if reference_file is None else str(reference_file),
                         description)
    if saved.per_unit and not (Path(saved.folders_dir) / DESCRIPTION_FILE).is_file():
        raise BidsReconError(
            f"{sidecar_file} is a per-unit decoder, applied from its FastL2LiR folders {saved.folders_dir}, but "
            f"{Path(saved.folders_dir) / DESCRIPTION_FILE} is missing; copy the whole decoder folder {folder} "
            "(fastl2lir/ included), or retrain.", EXIT_INPUT_MISSING)
    return saved


def check_saved_decoder(saved, *, encoder, encoder_weights_sha256, image_size, layers, bold_files, raw_input,
                        stimulus_files, feature_std_for=None):
    """Check that ``saved`` applies to this run's data and settings; stop with a clear error if not.

    Parameters
    ----------
    saved : SavedDecoder
    encoder : str
        ``--encoder`` of this run.
    encoder_weights_sha256 : str or None
        sha256 of this run's encoder weights (None for random weights).
    image_size : int
        ``--image-size`` of this run.
    layers : sequence of str
        ``--layers`` of this run; empty: the decoder's.
    bold_files : sequence of str
        The runs the samples are taken from (raw, or fMRIPrep's preprocessed bold).
    raw_input : bool
        True when the runs are realigned here (they need the saved reference volume).
    stimulus_files : mapping of str to str
        Stimulus name -> image file; every training image of a kernel decoder must be there,
        unchanged (a per-unit decoder reads none).
    feature_std_for : str, optional
        The ``--feature-correction`` of this run when it needs the lab's per-channel SD of the
        training features (``lab2019``, ``cookbook*``); refused with a per-unit decoder, whose
        files do not hold it. None when the correction does not need it.

    Raises
    ------
    BidsReconError
        Exit 64 for a kernel decoder trained on precomputed features (``--features-dir``); naming both
        values and the option to change for an encoder, image size or
        layers mismatch, a decoder of raw input applied to fMRIPrep input or the reverse, a run
        off the decoder's grid, a mask or reference volume changed since saving, a changed
        training image; exit 66 for a missing training image.
    """
    sidecar_file, description = saved.sidecar_file, saved.description
    if saved.per_unit and feature_std_for:
        raise BidsReconError(
            f"--feature-correction {feature_std_for} needs each channel's SD within the training images' "
            f"features, which the saved per-unit decoder {sidecar_file} does not hold (its files keep each unit's "
            "training mean and SD only). Use --feature-correction spread (the default) or none with it, "
            "or fit the decoder in this run (drop --decoders-dir).", EXIT_BAD_ARGUMENTS)
    if description.get("TrainingFeatures") and not saved.per_unit:
        # Applying a kernel decoder weighs its training images' features; they would be the encoder's here.
        raise BidsReconError(
            f"The saved decoder {sidecar_file} was trained on precomputed features read from "
            f"{description['TrainingFeatures']} (--features-dir), which --decoders-dir does not read: applied here "
            "it would weigh the encoder's features instead. Fit a new decoder with --features-dir on this data "
            "instead of --decoders-dir.", EXIT_BAD_ARGUMENTS)
    for option, saved_value, given in (("--encoder", description["Encoder"], encoder),
                                       ("--image-size", description["ImageSize"], image_size)):
        if saved_value != given:
            raise BidsReconError(
                f"The saved decoder {sidecar_file} was trained with {option} {saved_value}; this run uses "
                f"{option} {given}. Pass {option} {saved_value}, or fit a new decoder without --decoders-dir.",
                EXIT_BAD_ARGUMENTS)
    # The pixels pseudo-layer is the decoder's own business, never named by --layers.
    saved_layers = [layer for layer in description["Layers"] if layer not in (PIXEL_LAYER, *PIXEL_PARTS)]
    if layers and set(layers) != set(saved_layers):
        raise BidsReconError(
            f"The saved decoder {sidecar_file} decodes the layers {' '.join(saved_layers)}; this run "
            f"asks for --layers {' '.join(layers)}. Drop --layers (the decoder's are used), or fit a new "
            "decoder without --decoders-dir.", EXIT_BAD_ARGUMENTS)
    if raw_input and saved.reference_file is None:
        raise BidsReconError(
            f"The saved decoder {sidecar_file} names no motion reference volume: it was trained on fMRIPrep "
            "input (or by an older bidsrecon), so raw runs cannot be registered to its voxels. Apply it to "
            "fMRIPrep input (--derivatives, same --space), or retrain it on the raw data.", EXIT_BAD_ARGUMENTS)
    if not raw_input and saved.reference_file is not None:
        raise BidsReconError(
            f"The saved decoder {sidecar_file} was trained on raw input realigned by bidsrecon (it names a motion "
            "reference volume); fMRIPrep's preprocessed runs are not in those voxels. Apply it to the raw data "
            "(drop --derivatives), or retrain it on fMRIPrep input.", EXIT_BAD_ARGUMENTS)
    reference = description.get("MotionReference") or {}
    if saved.reference_file and file_sha256(saved.reference_file) != reference.get("SHA256"):
        raise BidsReconError(
            f"{saved.reference_file} differs from the motion reference volume recorded in {sidecar_file} "
            "(sha256): it was changed after saving. Restore the decoder folder's original files, or retrain.",
            EXIT_BAD_ARGUMENTS)
    _check_mask_unchanged(saved.mask_file, description.get("VoxelMask", {}), sidecar_file)
    for grid_file in (saved.mask_file, saved.reference_file):
        if grid_file:
            _check_grid(grid_file, bold_files)
    if saved.per_unit:
        _check_per_unit(saved, encoder_weights_sha256)
        return
    # The decoder's own checks: arrays hash, mask voxels, encoder weights, training images.
    load_decoder(saved.stem, expected_mask_file=saved.mask_file, expected_encoder=encoder,
                 expected_weights_sha256=encoder_weights_sha256, expected_image_size=image_size,
                 stimulus_files=stimulus_files)


def _check_per_unit(saved, encoder_weights_sha256):
    """A per-unit decoder: its arrays as saved, its encoder weights, and its folders agreeing with its sidecar.

    The folders' arrays are read when the decoder is applied; here their description, and that
    every layer's model folder is there.
    """
    description = saved.description
    arrays_file, sidecar_file = decoder_paths(saved.stem)
    if file_sha256(arrays_file) != description["ArraysSHA256"]:
        raise BidsReconError(
            f"{arrays_file} does not match the sha256 recorded in {sidecar_file}: the file was changed or replaced "
            "after saving. Copy the decoder folder's files together, or retrain.", EXIT_BAD_ARGUMENTS)
    _check_expected(f"Saved decoder {sidecar_file}", "encoder weights (sha256)",
                    description["EncoderWeightsSHA256"], encoder_weights_sha256,
                    "Run with the weight file it was trained with, or retrain the decoder.")
    folders = read_folders_description(saved.folders_dir)
    description_file = Path(saved.folders_dir) / DESCRIPTION_FILE
    recorded = (folders.get("VoxelMask") or {}).get("VoxelSetSHA256")
    missing = [layer for layer in description["Layers"] if layer not in folders["Layers"]]
    disagree = [what for what, ours, theirs in (
        ("voxel count", description["Voxels"], folders["Voxels"]),
        ("voxel mask", description["VoxelMask"]["VoxelSetSHA256"], recorded),
        ("encoder", description["Encoder"], folders.get("Encoder", description["Encoder"])),
        ("image size", description["ImageSize"], folders.get("ImageSize", description["ImageSize"])),
    ) if ours != theirs]
    if missing or disagree:
        problem = (f"lacks the layers {missing} of" if missing
                   else f"records another {', '.join(disagree)} than")
        raise BidsReconError(
            f"{description_file} {problem} the per-unit decoder {sidecar_file}: the folders are not that "
            "decoder's. Copy the decoder folder whole from the run that fitted it, or retrain.", EXIT_BAD_ARGUMENTS)
    for layer in description["Layers"]:
        folder = model_folder(saved.folders_dir, layer, folders["Subject"], folders["ROI"])
        if not (folder / "x_mean.mat").is_file():
            raise BidsReconError(
                f"{folder / 'x_mean.mat'} not found: the FastL2LiR folders of {sidecar_file} lack layer {layer}'s "
                "decoder. Copy the decoder folder whole, or retrain.", EXIT_INPUT_MISSING)


def _check_mask_unchanged(mask_file, recorded, sidecar_file):
    """The mask next to the decoder must hold the voxels it was trained in (its file may be rewritten)."""
    if file_sha256(mask_file) == recorded.get("SHA256"):
        return
    data = np.asanyarray(nib.load(mask_file).dataobj)
    if mask_voxel_set_sha256(data) != recorded.get("VoxelSetSHA256"):
        raise BidsReconError(
            f"The voxel mask {mask_file} holds {int(np.count_nonzero(data))} voxels (shape {list(data.shape)}), "
            f"not the {recorded.get('Voxels')} voxels (shape {recorded.get('Shape')}) that the saved decoder "
            f"{sidecar_file} was trained in: it was changed after saving. Restore the decoder folder's original "
            "mask, or retrain the decoder.", EXIT_BAD_ARGUMENTS)


def _check_grid(grid_file, bold_files):
    """Every run must lie on the grid of the decoder's mask (and reference volume)."""
    grid = nib.load(grid_file)
    for bold_file in bold_files:
        bold = nib.load(bold_file)  # the header only
        if not same_grid(bold.shape, bold.affine, grid.shape, grid.affine):
            raise BidsReconError(
                f"{bold_file}: its grid (shape {bold.shape[:3]}) differs from the saved decoder's {grid_file} "
                f"(shape {grid.shape[:3]}{', another affine' if bold.shape[:3] == grid.shape[:3] else ''}); "
                "a decoder applies to runs on the grid it was trained on (the same scanner protocol for raw "
                "input, the same --space for fMRIPrep input). Retrain on this grid otherwise.",
                EXIT_BAD_ARGUMENTS)
