"""The decoder artifact: a fitted :class:`KernelRidgeDecoder` on disk, and its checked reloading.

A decoder is written as two files sharing a stem (``<stem>.safetensors`` and ``<stem>.json``):

- the safetensors file holds the fitted arrays — z-scored training samples ``X``, the voxels'
  training mean and SD, the training image of each sample, the alpha grid searched, each layer's
  cross-validation scores and chosen alpha, and optionally the positions of the decoder's voxels
  within the voxel mask;
- the JSON sidecar says what the decoder applies to — encoder and weights hash, image size,
  layers and alphas, the voxel mask (file hash, grid, hash of its voxel set), the training
  stimuli in coefficient-column order with the sha256 of each image file, the software version —
  and the sha256 of the safetensors file, which ties the pair together.

Decoded features are ``A_u F + (1 − Σ_j A_u[:, j]) ȳ`` with ``F`` the features of the training
images (module :mod:`bidsrecon.decoding.kernel_ridge`), so applying a saved decoder needs those
same images and the same encoder: :func:`load_decoder` checks both, and the voxel mask, before
returning the decoder. Loading reads safetensors and JSON only; nothing is unpickled.

Decoded features, the product other reconstruction methods can take, are written to HDF5 by
:func:`save_decoded_features` (one dataset per layer under ``/features``, the items' table under
``/items``) and read back by :func:`load_decoded_features`.
"""
import hashlib
import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd

from bidsrecon.arrays import load_arrays, save_arrays
from bidsrecon.decoding.kernel_ridge import KernelRidgeDecoder
from bidsrecon.encoders.base import file_sha256
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.grid import same_affine
from bidsrecon.names import check_file_name

#: Version of the artifact's layout; a loader refuses layouts newer than its own.
ARTIFACT_FORMAT = 1
_FORMAT_NAME = "bidsrecon-kernel-ridge-decoder"
_PER_UNIT_FORMAT_NAME = "bidsrecon-per-unit-decoder"
_FEATURES_FORMAT_NAME = "bidsrecon-decoded-features"
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


def save_decoder(path_stem, decoder, *, layers, encoder_name, encoder_weights_sha256,
                 image_size, training_stimuli, training_stimulus_hashes, voxel_mask_file,
                 software_version, voxel_indices=None, extra_fields=None):
    """Write a fitted decoder as ``<stem>.safetensors`` plus a JSON sidecar.

    Parameters
    ----------
    path_stem : str or Path
        Path without extension; parent folders are created.
    decoder : KernelRidgeDecoder
        Fitted.
    layers : list of str
        Layers to keep, each fitted (a key of ``decoder.alpha_``), in the order to record.
    encoder_name : str
    encoder_weights_sha256 : str or None
        None for random weights.
    image_size : int
        Side in pixels the stimuli were resized to before the encoder.
    training_stimuli : list of str
        Stimulus names in the order of the coefficients' columns (``n_images_`` of them).
    training_stimulus_hashes : list of str
        sha256 of each training stimulus' image file, same order.
    voxel_mask_file : str or Path
        NIfTI mask the samples were taken from.
    software_version : str
    voxel_indices : array-like of int, optional
        Positions, among the mask's voxels in sample order, of the voxels the decoder uses (after
        a voxel selection); None when it uses every voxel of the mask.
    extra_fields : dict, optional
        More JSON-serialisable sidecar fields (for example how the voxels were selected); they
        may not replace the fields written here.

    Returns
    -------
    arrays_path, sidecar_path : Path
    """
    _check_fitted(decoder)
    layers = _check_layers(layers, decoder.alpha_)
    training_stimuli, training_stimulus_hashes = _check_stimuli(
        training_stimuli, training_stimulus_hashes, decoder.n_images_)
    n_voxels = decoder.X_.shape[1]
    mask = _mask_summary(voxel_mask_file)
    voxel_indices = _check_voxel_indices(voxel_indices, n_voxels, mask["Voxels"])

    arrays_path, sidecar_path = decoder_paths(path_stem)
    sidecar = {
        **_sidecar_head(_FORMAT_NAME, "kernel ridge regression, one penalty per layer chosen by "
                        "grouped cross-validation", encoder_name, encoder_weights_sha256,
                        image_size, layers),
        "Alpha": {layer: float(decoder.alpha_[layer]) for layer in layers},
        "Parameters": _parameters_to_json(decoder),
        "TrainingSamples": int(decoder.X_.shape[0]),
        "TrainingStimuli": training_stimuli,
        "TrainingStimulusSHA256": training_stimulus_hashes,
        "VoxelMask": mask,
        "Voxels": int(n_voxels),
        "SoftwareVersion": str(software_version),
        "ArraysFile": arrays_path.name,
    }
    clashes = sorted(set(extra_fields or {}) & (set(sidecar) | {"ArraysSHA256"}))
    if clashes:
        raise ValueError(f"extra_fields may not replace the sidecar's own fields {clashes}.")
    sidecar.update(extra_fields or {})

    arrays = {
        "fit": {"X": decoder.X_, "voxel_mean": decoder.voxel_mean_,
                "voxel_std": decoder.voxel_std_,
                "image_index": np.asarray(decoder.image_index_, dtype=np.int64),
                "alpha_grid": np.asarray(decoder.alphas_, dtype=np.float64)},
        "alpha": {layer: np.array([decoder.alpha_[layer]], dtype=np.float64) for layer in layers},
        "cv_scores": {layer: np.asarray(decoder.cv_scores_[layer], dtype=np.float64)
                      for layer in layers},
    }
    by_trials = getattr(decoder, "alpha_by_trials_", None)
    if by_trials:
        # Alphas chosen per count of trials a test item averages: rows (count, alpha).
        sidecar["AlphaByTestTrials"] = {layer: {str(count): float(alpha) for count, alpha in by_trials[layer].items()}
                                        for layer in layers}
        arrays["alpha_by_trials"] = {layer: np.array(sorted(by_trials[layer].items()), dtype=np.float64)
                                     for layer in layers}
        arrays["cv_scores_by_trials"] = {
            layer: np.stack([decoder.cv_scores_by_trials_[layer][count] for count in sorted(by_trials[layer])])
            for layer in layers}
    if voxel_indices is not None:
        arrays["fit"]["voxel_indices"] = voxel_indices
    return _write_pair(arrays_path, arrays, sidecar_path, sidecar)


def save_per_unit_decoder(path_stem, decoders, *, encoder_name, encoder_weights_sha256,
                          image_size, training_stimuli, training_stimulus_hashes, voxel_mask_file,
                          software_version, voxel_indices=None, extra_fields=None):
    """Write fitted per-unit decoders (the lab's mode), one per layer, with a JSON sidecar.

    The arrays are each unit's selected voxels (int32), weights and bias (float32, z-scored
    units), and the voxels' and units' training mean and SD, under ``<layer>/...``. The sidecar
    says what they apply to, as :func:`save_decoder`'s does. There is no loader yet: applying
    saved decoders (``--decoders-dir``) is for the kernel ridge decoder only, and
    :func:`read_decoder_description` refuses this format with a message saying so.

    Parameters
    ----------
    path_stem : str or Path
    decoders : dict of str to PerUnitDecoder
        Fitted decoder of each layer, in the order to record.
    Other parameters
        As for :func:`save_decoder`.

    Returns
    -------
    arrays_path, sidecar_path : Path
    """
    layers = list(decoders)
    first = decoders[layers[0]]
    n_voxels = len(first.voxel_mean_)
    mask = _mask_summary(voxel_mask_file)
    voxel_indices = _check_voxel_indices(voxel_indices, n_voxels, mask["Voxels"])
    arrays_path, sidecar_path = decoder_paths(path_stem)
    sidecar = {
        **_sidecar_head(_PER_UNIT_FORMAT_NAME, "ridge regression per unit on the voxels most "
                        "correlated with it on the training data (the Kamitani lab's fastl2lir)",
                        encoder_name, encoder_weights_sha256, image_size, layers),
        "Alpha": {layer: float(decoders[layer].alpha) for layer in layers},
        "VoxelsPerUnit": {layer: int(decoders[layer].selected_voxels_.shape[1]) for layer in layers},
        "TrainingStimuli": [str(name) for name in training_stimuli],
        "TrainingStimulusSHA256": [str(value) for value in training_stimulus_hashes],
        "VoxelMask": mask,
        "Voxels": int(n_voxels),
        "SoftwareVersion": str(software_version),
        "ArraysFile": arrays_path.name,
        **(extra_fields or {}),
    }
    arrays = {layer: {"selected_voxels": model.selected_voxels_.astype(np.int32),
                      "coef": model.coef_.astype(np.float32),
                      "intercept": model.intercept_.astype(np.float32),
                      "feature_mean": model.feature_mean_.astype(np.float32),
                      "feature_std": model.feature_std_.astype(np.float32)}
              for layer, model in decoders.items()}
    arrays["voxels"] = {"mean": first.voxel_mean_, "std": first.voxel_std_}
    if voxel_indices is not None:
        arrays["voxels"]["voxel_indices"] = voxel_indices
    return _write_pair(arrays_path, arrays, sidecar_path, sidecar)


def read_decoder_description(path_stem):
    """The JSON sidecar of a saved decoder, checked for format and version.

    Parameters
    ----------
    path_stem : str or Path

    Returns
    -------
    dict
        Keys include ``Encoder``, ``EncoderWeightsSHA256``, ``ImageSize``, ``Layers``, ``Alpha``,
        ``TrainingStimuli`` (coefficient-column order), ``TrainingStimulusSHA256``,
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
    if isinstance(sidecar, dict) and sidecar.get("Format") == _PER_UNIT_FORMAT_NAME:
        raise BidsReconError(
            f"{sidecar_path} is a per-unit decoder (--decoder fastl2lir); applying saved per-unit "
            "decoders is not supported yet. Retrain with the kernel ridge decoder (--decoder kernel, "
            "the default) to apply it later, or fit again on the training data.", EXIT_BAD_ARGUMENTS)
    if not isinstance(sidecar, dict) or sidecar.get("Format") != _FORMAT_NAME:
        raise BidsReconError(f"{sidecar_path} is not a decoder sidecar written by bidsrecon "
                             f"(its \"Format\" is not {_FORMAT_NAME!r}).", EXIT_BAD_ARGUMENTS)
    if sidecar.get("FormatVersion", 0) > ARTIFACT_FORMAT:
        raise BidsReconError(
            f"{sidecar_path} was written by bidsrecon {sidecar.get('SoftwareVersion')} in decoder "
            f"format {sidecar.get('FormatVersion')}; this version reads format {ARTIFACT_FORMAT} "
            "only. Use a newer bidsrecon, or retrain the decoder.", EXIT_BAD_ARGUMENTS)
    _check_sidecar_fields(sidecar, sidecar_path)
    return sidecar


# The fields a kernel decoder's sidecar must hold, with their JSON types; checked when it is read
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


def load_decoder(path_stem, *, expected_mask_file=None, expected_encoder=None,
                 expected_weights_sha256=None, expected_image_size=None, stimulus_files=None):
    """Read a decoder written by :func:`save_decoder`, after checking it fits the new data.

    Each ``expected_*`` argument left as None skips its check.

    Parameters
    ----------
    path_stem : str or Path
    expected_mask_file : str or Path, optional
        NIfTI mask the new samples are taken from: it must be on the decoder's grid and hold the
        same voxels (its file may differ, for example re-written by a later run).
    expected_encoder : str, optional
        Name of the encoder the decoded features will be computed with.
    expected_weights_sha256 : str, optional
        sha256 of that encoder's weights.
    expected_image_size : int, optional
    stimulus_files : mapping of str to str or Path, optional
        Stimulus name -> image file; every training stimulus of the decoder must be present,
        with the same content (sha256) it had at training time.

    Returns
    -------
    KernelRidgeDecoder
        Fitted, with the recorded layers only; ``coefficients`` equals the saved decoder's.

    Raises
    ------
    BidsReconError
        Saved files missing, or a training stimulus file missing (exit 66); a mismatching mask,
        encoder, weights, image size or stimulus, or damaged files (exit 64). The message names
        what differs and what to do.
    """
    sidecar = read_decoder_description(path_stem)
    arrays_path, sidecar_path = decoder_paths(path_stem)
    if file_sha256(arrays_path) != sidecar.get("ArraysSHA256"):
        raise BidsReconError(
            f"{arrays_path} does not match the sha256 recorded in {sidecar_path}: the file was "
            "changed or replaced after saving. Copy the decoder's two files together, or "
            "retrain.", EXIT_BAD_ARGUMENTS)
    # The sidecar's path, so that the message says which file of which folder to look at.
    where = f"Saved decoder {sidecar_path}"
    _check_expected(where, "encoder", sidecar["Encoder"], expected_encoder,
                    "Run with the decoder's encoder, or retrain the decoder.")
    _check_expected(where, "encoder weights (sha256)", sidecar["EncoderWeightsSHA256"],
                    expected_weights_sha256,
                    "Run with the weight file it was trained with, or retrain the decoder.")
    _check_expected(where, "image size", sidecar["ImageSize"], expected_image_size,
                    "Run with the decoder's image size, or retrain the decoder.")
    if expected_mask_file is not None:
        _check_mask(where, sidecar["VoxelMask"], _mask_summary(expected_mask_file),
                    expected_mask_file)
    if stimulus_files is not None:
        _check_stimulus_files(where, sidecar["TrainingStimuli"],
                              sidecar["TrainingStimulusSHA256"], stimulus_files)
    return _decoder_from_arrays(load_arrays(arrays_path), sidecar, arrays_path)


def load_voxel_indices(path_stem):
    """Positions, among the mask's voxels, of the voxels a saved decoder uses.

    Parameters
    ----------
    path_stem : str or Path

    Returns
    -------
    ndarray of int64, shape (n_voxels,), or None
        None when the decoder uses every voxel of its mask.
    """
    read_decoder_description(path_stem)
    arrays_path, _ = decoder_paths(path_stem)
    return load_arrays(arrays_path)["fit"].get("voxel_indices")


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


def save_decoded_features(path, decoded, items, *, metadata=None):
    """Write decoded features to HDF5: one dataset per layer, plus the table of items.

    Layout: ``/features/<layer>`` float32 ``(n_items, *layer_shape)``; ``/items/<column>`` one
    1-D dataset per column of ``items`` (strings as UTF-8); root attributes ``format``,
    ``layers`` (JSON list, the layers' order), ``item_columns`` (JSON list) and ``metadata``
    (JSON object).

    Parameters
    ----------
    path : str or Path
        Output file (``.h5``); parent folders are created.
    decoded : dict of str to ndarray, shape (n_items, ...)
        Decoded features per layer, rows in the order of ``items``.
    items : pandas.DataFrame
        One row per decoded item, with at least the columns ``set`` and ``stimulus``.
    metadata : dict, optional
        JSON-serialisable description (encoder, layers, software version ...).

    Returns
    -------
    Path
    """
    layers, columns = _check_decoded_features(decoded, items)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as store:
        store.attrs["format"] = _FEATURES_FORMAT_NAME
        store.attrs["layers"] = json.dumps(layers)
        store.attrs["item_columns"] = json.dumps(columns)
        store.attrs["metadata"] = json.dumps(metadata or {})
        for layer in layers:
            store.create_dataset(f"features/{layer}",
                                 data=np.asarray(decoded[layer], dtype=np.float32))
        for column in columns:
            values = items[column]
            if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
                store.create_dataset(f"items/{column}", data=values.to_numpy())
            else:
                store.create_dataset(f"items/{column}", data=values.astype(str).to_list(),
                                     dtype=h5py.string_dtype("utf-8"))
    return path


def load_decoded_features(path, layers=None):
    """Read a file written by :func:`save_decoded_features`.

    Parameters
    ----------
    path : str or Path
    layers : list of str, optional
        Layers to read (all by default).

    Returns
    -------
    decoded : dict of str to ndarray, shape (n_items, ...) float32
        In the file's layer order (or the order of ``layers``).
    items : pandas.DataFrame
    metadata : dict

    Raises
    ------
    BidsReconError
        File missing (exit 66), not a decoded-features file, or without a requested layer
        (exit 64).
    """
    path = Path(path)
    if not path.is_file():
        raise BidsReconError(f"Decoded-features file {path} not found.", EXIT_INPUT_MISSING)
    with h5py.File(path, "r") as store:
        if store.attrs.get("format") != _FEATURES_FORMAT_NAME:
            raise BidsReconError(f"{path} is not a decoded-features file written by bidsrecon.",
                                 EXIT_BAD_ARGUMENTS)
        stored_layers = json.loads(store.attrs["layers"])
        layers = stored_layers if layers is None else list(layers)
        absent = [layer for layer in layers if layer not in stored_layers]
        if absent:
            raise BidsReconError(f"{path} holds no layers {absent}; it has {stored_layers}.",
                                 EXIT_BAD_ARGUMENTS)
        decoded = {layer: store[f"features/{layer}"][()] for layer in layers}
        columns = {}
        for column in json.loads(store.attrs["item_columns"]):
            dataset = store[f"items/{column}"]
            is_text = h5py.check_string_dtype(dataset.dtype) is not None
            columns[column] = dataset.asstr()[()] if is_text else dataset[()]
        metadata = json.loads(store.attrs["metadata"])
    return decoded, pd.DataFrame(columns), metadata


def _check_decoded_features(decoded, items):
    if not isinstance(decoded, dict) or not decoded:
        raise ValueError("decoded must be a non-empty dict of layer name to an array "
                         "(n_items, ...).")
    if not isinstance(items, pd.DataFrame) or not {"set", "stimulus"} <= set(items.columns):
        raise ValueError("items must be a DataFrame with the columns 'set' and 'stimulus'.")
    layers = [str(layer) for layer in decoded]
    columns = [str(column) for column in items.columns]
    # A slash would make a nested HDF5 group rather than a dataset of that name.
    slashed = [name for name in layers + columns if "/" in name]
    if slashed:
        raise ValueError(f"Layer and item column names may not contain '/'; got {slashed}.")
    rows = {layer: np.shape(value)[0] if np.ndim(value) else None
            for layer, value in decoded.items()}
    if any(n_rows != len(items) for n_rows in rows.values()):
        raise ValueError(f"Every layer of decoded needs one row per item ({len(items)} items); "
                         f"got rows {rows}.")
    return layers, columns

def _write_pair(arrays_path, arrays, sidecar_path, sidecar):
    """Write the arrays, then the sidecar with the arrays' hash: a pair interrupted midway never
    loads."""
    arrays_path.parent.mkdir(parents=True, exist_ok=True)
    save_arrays(arrays_path, arrays, metadata={"format": sidecar["Format"],
                                               "layers": json.dumps(sidecar["Layers"])})
    sidecar["ArraysSHA256"] = file_sha256(arrays_path)
    sidecar_path.write_text(json.dumps(sidecar, indent=2))
    return arrays_path, sidecar_path


def _sidecar_head(format_name, method, encoder_name, encoder_weights_sha256, image_size, layers):
    """The sidecar fields every decoder artifact starts with."""
    return {"Format": format_name, "FormatVersion": ARTIFACT_FORMAT, "Method": method,
            "Encoder": encoder_name, "EncoderWeightsSHA256": encoder_weights_sha256,
            "ImageSize": int(image_size), "Layers": layers}


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


def _decoder_from_arrays(arrays, sidecar, arrays_path):
    """Rebuild the fitted estimator; check the arrays agree with each other and the sidecar."""
    fit = arrays.get("fit", {})
    needed = ("X", "voxel_mean", "voxel_std", "image_index", "alpha_grid")
    layers = sidecar["Layers"]
    absent = [f"fit/{name}" for name in needed if name not in fit]
    absent += [f"{group}/{layer}" for group in ("alpha", "cv_scores") for layer in layers
               if layer not in arrays.get(group, {})]
    if absent:
        raise BidsReconError(f"{arrays_path} lacks the arrays {absent}; it was not written by "
                             "bidsrecon's save_decoder.", EXIT_BAD_ARGUMENTS)
    n_samples, n_voxels = fit["X"].shape
    n_images = len(sidecar["TrainingStimuli"])
    image_index = fit["image_index"]
    consistent = (fit["voxel_mean"].shape == (n_voxels,) and fit["voxel_std"].shape == (n_voxels,)
                  and image_index.shape == (n_samples,) and n_voxels == sidecar["Voxels"]
                  and image_index.min() >= 0 and image_index.max() < n_images)
    if not consistent:
        raise BidsReconError(f"The arrays of {arrays_path} disagree with each other or with its "
                             "sidecar; retrain the decoder.", EXIT_BAD_ARGUMENTS)
    parameters = sidecar.get("Parameters", {})
    decoder = KernelRidgeDecoder(alphas=parameters.get("alphas"),
                                 n_folds=parameters.get("n_folds", 5),
                                 random_state=parameters.get("random_state", 0))
    decoder.X_ = fit["X"]
    decoder.voxel_mean_ = fit["voxel_mean"]
    decoder.voxel_std_ = fit["voxel_std"]
    decoder.image_index_ = image_index.astype(np.intp)
    decoder.n_images_ = n_images
    decoder.alphas_ = fit["alpha_grid"]
    decoder.cv_scores_ = {layer: arrays["cv_scores"][layer] for layer in layers}
    decoder.alpha_ = {layer: float(arrays["alpha"][layer][0]) for layer in layers}
    by_trials = arrays.get("alpha_by_trials", {})
    if all(layer in by_trials for layer in layers):
        decoder.alpha_by_trials_ = {layer: {int(count): float(alpha) for count, alpha in by_trials[layer]}
                                    for layer in layers}
        decoder.cv_scores_by_trials_ = {
            layer: dict(zip(decoder.alpha_by_trials_[layer], arrays["cv_scores_by_trials"][layer]))
            for layer in layers}
        decoder.trial_counts_ = tuple(sorted(decoder.alpha_by_trials_[layers[0]]))
    return decoder


def _parameters_to_json(decoder):
    alphas = decoder.alphas
    return {"alphas": None if alphas is None else [float(a) for a in np.ravel(alphas)],
            "n_folds": int(decoder.n_folds),
            "random_state": None if decoder.random_state is None else int(decoder.random_state)}


def _check_fitted(decoder):
    if not isinstance(decoder, KernelRidgeDecoder) or not hasattr(decoder, "alpha_"):
        raise ValueError(f"decoder must be a fitted KernelRidgeDecoder; got {decoder!r}.")


def _check_layers(layers, fitted_alphas):
    layers = [str(layer) for layer in layers]
    unknown = [layer for layer in layers if layer not in fitted_alphas]
    if not layers or unknown or len(set(layers)) != len(layers):
        raise ValueError(f"layers must be distinct fitted layers ({list(fitted_alphas)}); got "
                         f"{layers}.")
    return layers


def _check_stimuli(names, hashes, n_images):
    names, hashes = [str(name) for name in names], [str(value) for value in hashes]
    if len(names) != n_images or len(hashes) != n_images:
        raise ValueError(f"The decoder was fitted on {n_images} training images; got "
                         f"{len(names)} stimulus names and {len(hashes)} hashes.")
    if len(set(names)) != len(names):
        raise ValueError("training_stimuli holds repeated names; one per training image "
                         "expected.")
    return names, hashes


def _check_voxel_indices(voxel_indices, n_voxels, n_mask_voxels):
    if voxel_indices is None:
        if n_voxels != n_mask_voxels:
            raise ValueError(f"The decoder has {n_voxels} voxels but the mask {n_mask_voxels}; "
                             "pass voxel_indices when the decoder uses a selection of them.")
        return None
    voxel_indices = np.asarray(voxel_indices)
    if (voxel_indices.shape != (n_voxels,) or not np.issubdtype(voxel_indices.dtype, np.integer)
            or voxel_indices.min() < 0 or voxel_indices.max() >= n_mask_voxels
            or len(np.unique(voxel_indices)) != n_voxels):
        raise ValueError(f"voxel_indices must hold {n_voxels} distinct integers in "
                         f"[0, {n_mask_voxels}); got shape {voxel_indices.shape}, dtype "
                         f"{voxel_indices.dtype}.")
    return voxel_indices.astype(np.int64)


def _some(names):
    shown = ", ".join(names[:_NAMES_SHOWN])
    rest = len(names) - _NAMES_SHOWN
    return shown + (f" and {rest} more" if rest > 0 else "")
