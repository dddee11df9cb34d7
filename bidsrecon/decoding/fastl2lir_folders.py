"""The brain-decoding cookbook's FastL2LiR decoder folders: per-unit decoders written and read.

The Kamitani lab's cookbook (``featdec_fastl2lir_train.py`` / ``_predict.py``) keeps one decoder
per layer, subject and ROI in ``<root>/<layer>/<subject>/<roi>/model/``:

- ``x_mean.mat``, ``x_norm.mat`` (keys ``x_mean``, ``x_norm``; shape ``(1, n_voxels)``): the
  training mean and SD (ddof 1) of each voxel; samples are z-scored with them;
- ``y_mean.mat``, ``y_norm.mat`` (shape ``(1, *unit_shape)``, the layer's shape, e.g. ``(1, C,
  H, W)``): each unit's training mean and SD; predictions are multiplied by ``y_norm`` and
  ``y_mean`` is added;
- ``W.mat`` (key ``W``, shape ``(n_voxels, *unit_shape)``; bdpy writes it as a sparse array: zero
  for the voxels a unit does not use) and ``b.mat`` (key ``b``, ``(1, *unit_shape)``): weights and
  bias on the z-scored data. A layer trained in chunks holds ``W/00000000.mat``, ... and
  ``b/00000000.mat``, ... instead, one chunk of the unit axes each, in order.

A unit of a layer of shape ``(C, H, W)`` is ``[c, h, w]`` in both the lab's arrays and ours (our
decoders flatten the layer in C order), so the unit axes need no reordering.

The files are MATLAB v7.3 (HDF5, what bdpy's ``save_array`` writes, through hdf5storage) or v5;
they are read here with h5py or scipy and written with h5py in the form bdpy's ``load_array``
reads (dense arrays, and bdpy's sparse array for ``W``). Nothing is unpickled.

Which voxels the columns are is not in the folders (the lab's columns are those of an ROI in a
BData file; ours the voxel mask's voxels in C order). :data:`DESCRIPTION_FILE`, a JSON file at
the folders' root, records it: the subject and ROI folder names, each layer's shape, the count of
voxels, the voxel mask (as :mod:`bidsrecon.decoding.sidecar` summarises it) and, when the decoder
uses a selection of the mask's voxels, their positions among them (``VoxelIndices``).
"""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bidsrecon.decoding.per_unit import PerUnitDecoder
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.labformats.matfile import read_mat_array, read_mat_sparse, write_mat_array, write_mat_sparse

#: The folder, beside a participant's decoder, that holds its per-unit decoders in this layout.
FOLDERS_NAME = "fastl2lir"
#: The JSON file at the folders' root that ties the columns to the voxel mask.
DESCRIPTION_FILE = "fastl2lir_folders.json"
FORMAT_NAME = "bidsrecon-fastl2lir-folders"
FORMAT_VERSION = 1
#: The ROI folder our decoders are written under: the decoder's voxel mask.
MASK_ROI = "voxelmask"
NORMALISATION_KEYS = ("x_mean", "x_norm", "y_mean", "y_norm")



@dataclass
class FastL2LiRFolders:
    """Per-unit decoders read from FastL2LiR folders, and what ties them to the voxel mask."""

    decoders: dict  # layer -> PerUnitDecoder (alpha unknown for the lab's: NaN)
    unit_shapes: dict  # layer -> tuple, the layer's shape without the sample axis
    description: dict  # the content of DESCRIPTION_FILE

    @property
    def voxel_indices(self):
        """Positions of the folders' voxels among the mask's voxels (C order); None: all of them."""
        indices = self.description.get("VoxelIndices")
        return None if indices is None else np.asarray(indices, dtype=np.int64)


def model_folder(root, layer, subject, roi):
    """``<root>/<layer>/<subject>/<roi>/model``, where the cookbook keeps one decoder."""
    return Path(root) / layer / subject / roi / "model"


# Writing ---------------------------------------------------------------------------------------

def write_fastl2lir_folders(root, decoders, unit_shapes, *, subject, roi=MASK_ROI, voxel_mask=None,
                            voxel_indices=None, extra_fields=None):
    """Write fitted per-unit decoders as the cookbook's folders, with :data:`DESCRIPTION_FILE`.

    Parameters
    ----------
    root : str or Path
        The folders' root (the cookbook's ``feature decoder dir`` for one network).
    decoders : dict of str to PerUnitDecoder
        Fitted decoder of each layer, all on the same voxels.
    unit_shapes : dict of str to tuple of int
        Each layer's shape without the sample axis (``(C, H, W)`` or ``(U,)``).
    subject : str
        The subject folder name (``sub-01``).
    roi : str
        The ROI folder name.
    voxel_mask : dict, optional
        The mask summary :func:`bidsrecon.decoding.sidecar._mask_summary` gives, recorded as is.
    voxel_indices : array-like of int, optional
        Positions of the decoders' voxels among the mask's voxels; None when they use all.
    extra_fields : dict, optional
        More JSON fields to record.

    Returns
    -------
    Path
        The description file.
    """
    layers = list(decoders)
    n_voxels = {layer: len(decoders[layer].voxel_mean_) for layer in layers}
    if len(set(n_voxels.values())) != 1:
        raise ValueError(f"The decoders must share their voxels; their voxel counts are {n_voxels}.")
    for layer in layers:
        write_model_folder(model_folder(root, layer, subject, roi), decoders[layer], unit_shapes[layer])
    description = {
        "Format": FORMAT_NAME, "FormatVersion": FORMAT_VERSION, "Subject": subject, "ROI": roi,
        "Layers": {layer: [int(n) for n in unit_shapes[layer]] for layer in layers},
        "Voxels": int(n_voxels[layers[0]]),
        "VoxelMask": voxel_mask,
        "VoxelIndices": None if voxel_indices is None else [int(i) for i in np.ravel(voxel_indices)],
        **(extra_fields or {}),
    }
    path = Path(root) / DESCRIPTION_FILE
    path.write_text(json.dumps(description, indent=2))
    return path


def write_model_folder(folder, decoder, unit_shape):
    """One decoder in the cookbook's ``model`` folder: W, b and the four normalisation arrays.

    Parameters
    ----------
    folder : str or Path
        Created if needed.
    decoder : PerUnitDecoder
        Fitted.
    unit_shape : tuple of int
        The layer's shape; the decoder's units are that shape flattened in C order.
    """
    unit_shape = tuple(int(n) for n in unit_shape)
    n_units = len(decoder.coef_)
    if int(np.prod(unit_shape)) != n_units:
        raise ValueError(f"unit_shape {unit_shape} holds {int(np.prod(unit_shape))} units; the decoder "
                         f"has {n_units}.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_voxels = len(decoder.voxel_mean_)
    arrays = {"x_mean": decoder.voxel_mean_.reshape(1, n_voxels),
              "x_norm": decoder.voxel_std_.reshape(1, n_voxels),
              "y_mean": decoder.feature_mean_.reshape((1, *unit_shape)),
              "y_norm": decoder.feature_std_.reshape((1, *unit_shape)),
              "b": decoder.intercept_.reshape((1, *unit_shape))}
    for key, array in arrays.items():
        write_mat_array(folder / f"{key}.mat", key, array)
    # The lab keeps the weights of the voxels each unit uses (a sparse array); zeros are left out.
    units = np.broadcast_to(np.arange(n_units)[:, None], decoder.selected_voxels_.shape)
    used = decoder.coef_ != 0
    index = (decoder.selected_voxels_[used], *np.unravel_index(units[used], unit_shape))
    write_mat_sparse(folder / "W.mat", "W", index, decoder.coef_[used], (n_voxels, *unit_shape))


# Reading ---------------------------------------------------------------------------------------

def read_fastl2lir_folders(root, *, layers=None, description=None):
    """The decoders of FastL2LiR folders, as :data:`DESCRIPTION_FILE` at ``root`` describes them.

    Parameters
    ----------
    root : str or Path
    layers : sequence of str, optional
        Layers to read (default: every layer the description lists).
    description : dict, optional
        The description's fields, given instead of the file: for a tree that has none (the lab's,
        described when the participant was planned, :mod:`bidsrecon.decoding.lab_tree`).

    Returns
    -------
    FastL2LiRFolders

    Raises
    ------
    BidsReconError
        A missing file (exit 66); a description, array or shape that does not agree with the
        others (exit 64). The message names the file.
    """
    root = Path(root)
    if description is None:
        description, path = read_folders_description(root), root / DESCRIPTION_FILE
    else:
        path = f"the description of {root}"
    recorded = description["Layers"]
    layers = list(recorded) if layers is None else list(layers)
    unknown = [layer for layer in layers if layer not in recorded]
    if unknown:
        raise BidsReconError(f"{path} lists the layers {list(recorded)}; {unknown} asked for are not among "
                             "them. Decode the layers it has, or add the missing layers' folders and list "
                             "them.", EXIT_BAD_ARGUMENTS)
    decoders, unit_shapes = {}, {}
    for layer in layers:
        folder = model_folder(root, layer, description["Subject"], description["ROI"])
        decoders[layer], unit_shapes[layer] = read_model_folder(folder)
        if list(unit_shapes[layer]) != list(recorded[layer]):
            raise BidsReconError(f"{folder}: the arrays hold layer {layer} of shape {list(unit_shapes[layer])}; "
                                 f"{path} records {recorded[layer]}. Correct the description, or rewrite the "
                                 "folder.", EXIT_BAD_ARGUMENTS)
        n_voxels = len(decoders[layer].voxel_mean_)
        if n_voxels != description["Voxels"]:
            raise BidsReconError(f"{folder}: its decoder uses {n_voxels} voxels; {path} records "
                                 f"{description['Voxels']}. Every layer's decoder must take the same voxels "
                                 "the description ties to the voxel mask.", EXIT_BAD_ARGUMENTS)
    return FastL2LiRFolders(decoders, unit_shapes, description)


def read_folders_description(root):
    """:data:`DESCRIPTION_FILE` at ``root``, its fields checked."""
    path = Path(root) / DESCRIPTION_FILE
    if not path.is_file():
        raise BidsReconError(
            f"{path} not found. FastL2LiR folders need it beside them: a JSON object with \"Subject\" and "
            "\"ROI\" (the folder names), \"Layers\" (each layer's shape), \"Voxels\" (the decoders' voxel "
            "count) and \"VoxelIndices\" (their positions among the voxel mask's voxels, C order; null for "
            "all of them); see the README.", EXIT_INPUT_MISSING)
    try:
        description = json.loads(path.read_text())
    except ValueError as error:
        raise BidsReconError(f"{path} is not valid JSON ({error}).", EXIT_BAD_ARGUMENTS) from None
    required = {"Subject": str, "ROI": str, "Layers": dict, "Voxels": int}
    problems = [key for key, kind in required.items()
                if not isinstance(description.get(key) if isinstance(description, dict) else None, kind)]
    if not problems and description.get("Format", FORMAT_NAME) != FORMAT_NAME:
        problems.append("Format")
    if not problems and description.get("FormatVersion", FORMAT_VERSION) > FORMAT_VERSION:
        raise BidsReconError(f"{path} is format version {description['FormatVersion']}; this bidsrecon reads "
                             f"{FORMAT_VERSION}. Use a newer bidsrecon.", EXIT_BAD_ARGUMENTS)
    indices = description.get("VoxelIndices") if not problems else None
    if indices is not None and (not isinstance(indices, list) or len(indices) != description["Voxels"]
                                or not all(isinstance(i, int) and i >= 0 for i in indices)
                                or len(set(indices)) != len(indices)):
        problems.append("VoxelIndices")
    if problems:
        raise BidsReconError(
            f"{path}: the fields {problems} are missing or malformed (\"Subject\", \"ROI\": folder names; "
            "\"Layers\": {layer: shape}; \"Voxels\": an integer; \"VoxelIndices\": null or that many distinct "
            "non-negative integers). Correct the file.", EXIT_BAD_ARGUMENTS)
    return description


def read_model_folder(folder):
    """One cookbook ``model`` folder as a :class:`PerUnitDecoder` and the layer's shape.

    Each unit keeps the voxels its weights are non-zero on (a unit with fewer than the most is
    padded with zero weights on voxel 0), so the decoder predicts what the lab's does.

    Parameters
    ----------
    folder : str or Path

    Returns
    -------
    decoder : PerUnitDecoder
        Fitted; ``alpha`` is NaN (the folders do not record it).
    unit_shape : tuple of int
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BidsReconError(f"FastL2LiR model folder {folder} not found.", EXIT_INPUT_MISSING)
    norm = {key: read_mat_array(folder / f"{key}.mat", key) for key in NORMALISATION_KEYS}
    x_mean, x_norm = norm["x_mean"], norm["x_norm"]
    if x_mean.ndim != 2 or x_mean.shape[0] != 1 or x_norm.shape != x_mean.shape:
        raise BidsReconError(f"{folder}: x_mean.mat and x_norm.mat must both have shape (1, n_voxels); they "
                             f"have {x_mean.shape} and {x_norm.shape}.", EXIT_BAD_ARGUMENTS)
    n_voxels = x_mean.shape[1]
    y_shape = norm["y_mean"].shape
    if len(y_shape) < 2 or y_shape[0] != 1 or norm["y_norm"].shape != y_shape:
        raise BidsReconError(f"{folder}: y_mean.mat and y_norm.mat must both have shape (1, *layer shape); "
                             f"they have {y_shape} and {norm['y_norm'].shape}.", EXIT_BAD_ARGUMENTS)
    unit_shape = tuple(int(n) for n in y_shape[1:])
    voxels, units, weights, bias = _read_weights(folder, n_voxels, unit_shape)

    n_units = int(np.prod(unit_shape))
    order = np.lexsort((voxels, units))
    voxels, units, weights = voxels[order], units[order], weights[order]
    counts = np.bincount(units, minlength=n_units)
    width = max(int(counts.max(initial=0)), 1)
    rank = np.arange(len(units)) - np.repeat(np.cumsum(counts) - counts, counts)
    selected = np.zeros((n_units, width), dtype=np.intp)
    coef = np.zeros((n_units, width))
    selected[units, rank] = voxels
    coef[units, rank] = weights

    decoder = PerUnitDecoder(n_voxels=width, alpha=float("nan"))
    decoder.voxel_mean_ = x_mean[0].astype(np.float64)
    # A constant voxel has SD 0 in the lab's files (and no weight): SD 1 keeps the samples finite.
    std = x_norm[0].astype(np.float64)
    decoder.voxel_std_ = np.where(std == 0, 1.0, std)
    decoder.feature_mean_ = norm["y_mean"].reshape(-1).astype(np.float64)
    decoder.feature_std_ = norm["y_norm"].reshape(-1).astype(np.float64)
    decoder.selected_voxels_ = selected
    decoder.coef_ = coef
    decoder.intercept_ = bias.reshape(-1).astype(np.float64)
    return decoder, unit_shape


def _read_weights(folder, n_voxels, unit_shape):
    """Non-zero weights as (voxel, unit, weight) and the bias, from W.mat/b.mat or their chunks."""
    if (folder / "W.mat").is_file():
        w_files, b_files = [folder / "W.mat"], [folder / "b.mat"]
    elif (folder / "W").is_dir():
        w_files = sorted((folder / "W").glob("*.mat"))
        b_files = [folder / "b" / path.name for path in w_files]
    else:
        raise BidsReconError(f"{folder}: neither W.mat nor W/ (chunks) found; it is not a FastL2LiR model "
                             "folder.", EXIT_INPUT_MISSING)
    parts, biases, offset = [], [], 0
    chunked = len(w_files) > 1 or w_files[0].parent.name == "W"
    for w_file, b_file in zip(w_files, b_files):
        index, values, shape = read_mat_sparse(w_file, "W")
        bias = read_mat_array(b_file, "b")
        if len(shape) != len(unit_shape) + 1 or shape[0] != n_voxels or bias.shape != (1, *shape[1:]):
            raise BidsReconError(f"{w_file} (shape {list(shape)}) and {b_file} (shape {list(bias.shape)}) do not "
                                 f"fit x_mean.mat's {n_voxels} voxels and the layer shape {list(unit_shape)} of "
                                 "y_mean.mat.", EXIT_BAD_ARGUMENTS)
        axis = _chunk_axis(shape[1:], unit_shape) if chunked else None
        coords = [np.asarray(i, dtype=np.int64) for i in index[1:]]
        if axis is not None:
            coords[axis] = coords[axis] + offset
            offset += shape[1 + axis]
        elif tuple(shape[1:]) != unit_shape:
            raise BidsReconError(f"{w_file}: shape {list(shape)} does not match the layer shape "
                                 f"{list(unit_shape)} of y_mean.mat.", EXIT_BAD_ARGUMENTS)
        parts.append((np.asarray(index[0], dtype=np.int64), np.ravel_multi_index(coords, unit_shape),
                      np.asarray(values, dtype=np.float64)))
        biases.append(bias)
    if chunked:
        if offset != unit_shape[axis]:
            raise BidsReconError(f"{folder}: the chunks of W/ cover {offset} of the {unit_shape[axis]} positions "
                                 f"of the layer's axis {axis + 1}; some are missing.", EXIT_BAD_ARGUMENTS)
        bias = np.concatenate(biases, axis=1 + axis)
    else:
        bias = biases[0]
    voxels, units, weights = (np.concatenate(arrays) for arrays in zip(*parts))
    return voxels, units, weights, bias


def _chunk_axis(chunk_shape, unit_shape):
    """The axis a chunk of W splits the layer along: the one where the sizes differ (0 if none)."""
    differ = [axis for axis, (a, b) in enumerate(zip(chunk_shape, unit_shape)) if a != b]
    return differ[0] if differ else 0
