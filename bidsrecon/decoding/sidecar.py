"""A saved decoder's two files and its JSON sidecar: where they are, reading the sidecar, and
checking it against a run.

A decoder saved under a stem is the pair ``<stem>.safetensors`` (the arrays) and ``<stem>.json``
(the sidecar, :func:`decoder_paths`); :mod:`bidsrecon.decoding.artifact` writes and loads them.
:func:`read_decoder_description` reads the sidecar and refuses one of another format, of a newer
format version, or without its required fields; it reads both the kernel ridge decoder's and
the per-unit decoders' (``--decoder fastl2lir``), which :func:`is_per_unit` tells apart. The
``_check_*`` functions compare what the sidecar records (encoder, weights, image size, voxel mask,
training stimuli) with what a run gives, each raising a :class:`~bidsrecon.errors.BidsReconError` that says what differs and what
to do. :func:`mask_voxel_set_sha256` is the hash of a mask's voxel set that the sidecar records.
"""
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from bidsrecon.encoders.base import file_sha256
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.grid import same_affine
from bidsrecon.names import check_file_name

#: Version of the artifact's layout; a loader refuses layouts newer than its own.
ARTIFACT_FORMAT = 1
_FORMAT_NAME = "bidsrecon-kernel-ridge-decoder"
_PER_UNIT_FORMAT_NAME = "bidsrecon-per-unit-decoder"
#: Names listed in an error message before "and N more".
_NAMES_SHOWN = 5


def decoder_paths(path_stem):
    """The two files of the decoder saved under ``path_stem``.

    Parameters
    ----------
    path_stem : str or Path
        Path without extension, e.g. ``.../sub-01/decoder/sub-01_desc-kernelridge_decoder``.

    Returns
    -------
    arrays_path, sidecar_path : Path
        ``<stem>.safetensors`` and ``<stem>.json``.
    """
    path_stem = Path(path_stem)
    return (path_stem.with_name(path_stem.name + ".safetensors"),
            path_stem.with_name(path_stem.name + ".json"))


def read_decoder_description(path_stem):
    """The JSON sidecar of a saved decoder, checked for format and version.

    Parameters
    ----------
    path_stem : str or Path

    Returns
    -------
    dict
        Keys include ``Format`` (a kernel ridge or a per-unit decoder, :func:`is_per_unit`),
        ``Encoder``, ``EncoderWeightsSHA256``, ``ImageSize``, ``Layers``, ``Alpha``,
        ``TrainingStimuli`` (coefficient-column order for a kernel decoder), ``TrainingStimulusSHA256``,
        ``VoxelMask`` and ``SoftwareVersion``.

    Raises
    ------
    BidsReconError
        Missing file (exit 66), or not a decoder sidecar this version can read (exit 64).
    """
    arrays_path, sidecar_path = decoder_paths(path_stem)
    for path in (arrays_path, sidecar_path):
        if not path.is_file():
            raise BidsReconError(
                f"Saved decoder file {path} not found. A decoder is the pair <stem>.safetensors "
                "and <stem>.json written by bidsrecon; check the decoders directory.",
                EXIT_INPUT_MISSING)
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except (ValueError, RecursionError) as error:
        raise BidsReconError(f"{sidecar_path} is not valid JSON ({error}); it is not a "
                             "decoder sidecar written by bidsrecon.", EXIT_BAD_ARGUMENTS) from None
    if not isinstance(sidecar, dict) or sidecar.get("Format") not in (_FORMAT_NAME, _PER_UNIT_FORMAT_NAME):
        raise BidsReconError(f"{sidecar_path} is not a decoder sidecar written by bidsrecon "
                             f"(its \"Format\" is neither {_FORMAT_NAME!r} nor {_PER_UNIT_FORMAT_NAME!r}).",
                             EXIT_BAD_ARGUMENTS)
    if sidecar.get("FormatVersion", 0) > ARTIFACT_FORMAT:
        raise BidsReconError(
            f"{sidecar_path} was written by bidsrecon {sidecar.get('SoftwareVersion')} in decoder "
            f"format {sidecar.get('FormatVersion')}; this version reads format {ARTIFACT_FORMAT} "
            "only. Use a newer bidsrecon, or retrain the decoder.", EXIT_BAD_ARGUMENTS)
    _check_sidecar_fields(sidecar, sidecar_path)
    return sidecar


def is_per_unit(description):
    """True for the sidecar of per-unit decoders (``--decoder fastl2lir``), False for a kernel ridge decoder's."""
    return description.get("Format") == _PER_UNIT_FORMAT_NAME


# The fields a decoder's sidecar must hold (kernel ridge and per-unit alike), with their JSON types; checked when it is read
# so that a damaged or hand-edited sidecar is one clear error, not a KeyError hours later.
_REQUIRED_FIELDS = {
    "Encoder": (str,), "EncoderWeightsSHA256": (str, type(None)), "ImageSize": (int,), "Layers": (list,),
    "TrainingStimuli": (list,), "TrainingStimulusSHA256": (list,), "VoxelMask": (dict,), "Voxels": (int,),
    "ArraysSHA256": (str,),
}


def _check_sidecar_fields(sidecar, sidecar_path):
    """Every required field present with its type; the files it names are plain names in its folder."""
    for key, types in _REQUIRED_FIELDS.items():
        if not isinstance(sidecar.get(key), types) or isinstance(sidecar.get(key), bool):
            problem = "lacks" if key not in sidecar else f"has a {type(sidecar[key]).__name__} in"
            raise BidsReconError(f"{sidecar_path} {problem} the field \"{key}\" ({' or '.join(t.__name__ for t in types)} "
                                 "expected): it is not a complete decoder sidecar written by bidsrecon. Restore "
                                 "the file from the decoder's folder, or retrain.", EXIT_BAD_ARGUMENTS)
    check_file_name(sidecar["VoxelMask"].get("File"), f"{sidecar_path}: VoxelMask.File")
    reference = sidecar.get("MotionReference")
    if reference is not None:
        if not isinstance(reference, dict):
            raise BidsReconError(f"{sidecar_path}: \"MotionReference\" must be an object with \"File\" and "
                                 "\"SHA256\"; restore the file, or retrain.", EXIT_BAD_ARGUMENTS)
        check_file_name(reference.get("File"), f"{sidecar_path}: MotionReference.File")


def mask_voxel_set_sha256(mask_data):
    """sha256 of a mask's voxel set: its non-zero voxels as packed bits, C order.

    Two files with the same voxels on the same grid share this hash whatever their data type or
    compression, unlike the files' own hashes.

    Parameters
    ----------
    mask_data : ndarray

    Returns
    -------
    str
    """
    inside = np.ascontiguousarray(np.asarray(mask_data) != 0)
    digest = hashlib.sha256(np.array(inside.shape, dtype=np.int64).tobytes())
    digest.update(np.packbits(inside, axis=None).tobytes())
    return digest.hexdigest()


def _mask_summary(mask_file):
    """What the sidecar records of a mask: file hash, grid, voxel count and voxel-set hash."""
    mask_file = Path(mask_file)
    if not mask_file.is_file():
        raise BidsReconError(f"Voxel mask {mask_file} not found.", EXIT_INPUT_MISSING)
    image = nib.load(mask_file)
    data = np.asanyarray(image.dataobj)
    return {
        "File": mask_file.name,
        "SHA256": file_sha256(mask_file),
        "Shape": [int(n) for n in image.shape],
        "Affine": np.asarray(image.affine, dtype=np.float64).tolist(),
        "Voxels": int(np.count_nonzero(data)),
        "VoxelSetSHA256": mask_voxel_set_sha256(data),
    }


def _check_mask(where, saved, given, given_file):
    remedy = ("The new data must be sampled in the decoder's voxel mask: use that mask (or the "
              "same ROIs on the same functional grid), or retrain the decoder.")
    if saved["SHA256"] == given["SHA256"]:
        return
    if saved["Shape"] != given["Shape"]:
        raise BidsReconError(
            f"{where} was trained in a voxel mask of shape {saved['Shape']}; the mask "
            f"{given_file} has shape {given['Shape']}. {remedy}", EXIT_BAD_ARGUMENTS)
    if not same_affine(saved["Affine"], given["Affine"]):
        raise BidsReconError(
            f"{where} was trained in a voxel mask with affine {saved['Affine']}; the mask "
            f"{given_file} has affine {given['Affine']}. {remedy}", EXIT_BAD_ARGUMENTS)
    if saved["VoxelSetSHA256"] != given["VoxelSetSHA256"]:
        raise BidsReconError(
            f"{where} was trained in a voxel mask of {saved['Voxels']} voxels; the mask "
            f"{given_file} is on the same grid but holds a different set of {given['Voxels']} "
            f"voxels. {remedy}", EXIT_BAD_ARGUMENTS)


def _check_expected(where, what, saved, given, remedy):
    if given is not None and given != saved:
        raise BidsReconError(
            f"{where} was trained with {what} {saved!r}; this run uses {given!r}. {remedy}",
            EXIT_BAD_ARGUMENTS)


def _check_stimulus_files(where, names, saved_hashes, stimulus_files):
    missing, changed = [], []
    for name, saved_hash in zip(names, saved_hashes):
        path = stimulus_files.get(name)
        if path is None or not Path(path).is_file():
            missing.append(name if path is None else f"{name} ({path})")
        elif file_sha256(path) != saved_hash:
            changed.append(f"{name} ({path})")
    # Decoded features are built from the training images' features: every one is needed.
    if missing:
        raise BidsReconError(
            f"{where} needs its {len(names)} training images; {len(missing)} are missing: "
            f"{_some(missing)}. Give the stimulus files it was trained with.",
            EXIT_INPUT_MISSING)
    if changed:
        raise BidsReconError(
            f"{where}: {len(changed)} training image files differ from those it was trained "
            f"with (sha256): {_some(changed)}. Give the original stimulus files, or retrain the "
            "decoder.", EXIT_BAD_ARGUMENTS)


def _some(names):
    shown = ", ".join(names[:_NAMES_SHOWN])
    rest = len(names) - _NAMES_SHOWN
    return shown + (f" and {rest} more" if rest > 0 else "")
