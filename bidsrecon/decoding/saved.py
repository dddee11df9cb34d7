"""A participant's saved decoder in ``--decoders-dir``: found, and checked against the new data.

``--decoders-dir DIR`` names the output dataset of an earlier participant-level run. Its
``sub-<label>/decoder/`` folder holds what applying the decoder needs:

- ``sub-<label>_decoder.json`` and ``.safetensors``, the decoder (:mod:`bidsrecon.decoding.artifact`);
- ``sub-<label>_desc-voxelmask_decoder.nii.gz``, the voxel mask its samples were taken in;
- ``sub-<label>_desc-reference_boldref.nii.gz`` (raw input only), the mean volume every raw run
  was realigned to: new runs are realigned to it too, so that a voxel of a later session is the
  same voxel the decoder was trained on.

Everything that can be checked without the heavy work is checked here, when the participant is
planned: the files, the encoder, image size and layers, the grid of every run, the mask and
reference against the hashes the sidecar records, and the training images (their features are
part of every decoded feature).
"""
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from bidsrecon.decoding.artifact import load_decoder
from bidsrecon.decoding.sidecar import decoder_paths, mask_voxel_set_sha256, read_decoder_description
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
    def training_stimuli(self):
        """Names of the training images, in the order of the decoder's coefficients."""
        return list(self.description["TrainingStimuli"])


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
        missing; exit 64 when the sidecar is not a decoder this version can apply (a per-unit
        decoder, ``--decoder fastl2lir``, among them).
    """
    stem = decoder_stem(decoders_dir, subject)
    sidecar_file = decoder_paths(stem)[1]
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
    return SavedDecoder(str(stem), str(mask_file), None if reference_file is None else str(reference_file),
                        description)


def check_saved_decoder(saved, *, encoder, encoder_weights_sha256, image_size, layers, bold_files, raw_input,
                        stimulus_files):
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
        Stimulus name -> image file; every training image of the decoder must be there, unchanged.

    Raises
    ------
    BidsReconError
        Exit 64 for a decoder trained on precomputed features (``--features-dir``); naming both
        values and the option to change for an encoder, image size or
        layers mismatch, a decoder of raw input applied to fMRIPrep input or the reverse, a run
        off the decoder's grid, a mask or reference volume changed since saving, a changed
        training image; exit 66 for a missing training image.
    """
    sidecar_file, description = saved.sidecar_file, saved.description
    if description.get("TrainingFeatures"):
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
    if layers and set(layers) != set(description["Layers"]):
        raise BidsReconError(
            f"The saved decoder {sidecar_file} decodes the layers {' '.join(description['Layers'])}; this run "
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
    # The decoder's own checks: arrays hash, mask voxels, encoder weights, training images.
    load_decoder(saved.stem, expected_mask_file=saved.mask_file, expected_encoder=encoder,
                 expected_weights_sha256=encoder_weights_sha256, expected_image_size=image_size,
                 stimulus_files=stimulus_files)


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
