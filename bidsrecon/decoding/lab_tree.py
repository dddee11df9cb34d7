"""The Kamitani lab's own trained FastL2LiR decoders (the brain-decoding cookbook's tree), applied
to the lab's BData samples (``--bdata-dir`` with ``--decoders-dir TREE``).

The cookbook's training script writes one decoder per layer, subject and ROI into
``TREE/<layer>/<subject>/<roi>/model/`` (:mod:`bidsrecon.decoding.fastl2lir_folders` reads one
such folder); ``TREE`` is its ``feature decoder dir`` for one network, e.g.
``.../deeprecon_..._alpha100_allunits/caffe/VGG19``. The subject folder is the participant
(``sub-01``, or the bare label ``01``), the ROI folder the BData metadata key without its
``ROI_`` prefix (``VC`` for ``ROI_VC``), as the cookbook's configurations name them.

The tree does not say which voxels its rows are: the cookbook's rows are the ROI's columns in
the BData file's own order (what bdpy's ``select('ROI_VC = 1')`` returns), while bidsrecon
reorders them into the C order of the mask their voxel_x/y/z make
(:func:`bidsrecon.labformats.bdata.bdata_trials`). :func:`check_lab_tree` checks the tree against
the participant's files and the encoder when the participant is planned, and returns the
description (:data:`~bidsrecon.decoding.fastl2lir_folders.DESCRIPTION_FILE`'s fields) that
:func:`bidsrecon.decoding.folders_stage.apply_fastl2lir_folders` applies it with: ``VoxelIndices`` puts
the samples back into the files' column order. Nothing is written into the tree.
"""
import hashlib
from pathlib import Path

import numpy as np

from bidsrecon.decoding.fastl2lir_folders import FORMAT_NAME, FORMAT_VERSION, model_folder
from bidsrecon.encoders.base import file_sha256
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.labformats.matfile import read_mat_array
from bidsrecon.names import check_file_name

#: The ``Format`` of the decoder sidecar that describes a tree applied (written into the output's decoder/).
SIDECAR_FORMAT = "kamitani-lab-fastl2lir-tree"
#: What the description calls the tree's origin (the recon sidecars and decoder/ repeat it).
ORIGIN = "the Kamitani lab's trained FastL2LiR decoders (brain-decoding cookbook layout)"
#: The files of a model folder the lab's prediction reads (W and b may be chunk folders instead).
NORMALISATION_FILES = ("x_mean.mat", "x_norm.mat", "y_mean.mat", "y_norm.mat")
_FIX_ENCODER = ("the lab's trees hold Caffe VGG19's features at 224 px: pass --encoder vgg19-caffe --image-size 224 "
                "(with --encoder-weights), or the --encoder and --image-size the decoders were trained on")


def roi_folder(roi_key):
    """The cookbook's ROI folder of a BData metadata key: ``ROI_VC`` -> ``VC``."""
    return roi_key.removeprefix("ROI_")


def tree_layers(root):
    """The layer folders at the tree's root, sorted."""
    return sorted(path.name for path in Path(root).iterdir() if path.is_dir())


def check_lab_tree(root, subject, roi, n_voxels, encoder_shapes, layers=()):
    """Check the lab's decoder tree for one participant; return what applying it needs.

    Parameters
    ----------
    root : str or Path
        The tree (``--decoders-dir``): one folder per layer.
    subject : str
        Participant label without ``sub-``.
    roi : str
        The ROI folder (:func:`roi_folder` of ``--bdata-roi``).
    n_voxels : int
        The ROI's voxel count in the participant's BData files.
    encoder_shapes : dict of str to tuple of int
        Every layer of the encoder, in network order, and its shape at ``--image-size``.
    layers : sequence of str
        ``--layers``; each must be in the tree. Empty: the tree's layers the encoder has.

    Returns
    -------
    dict
        ``Format``, ``FormatVersion``, ``Subject``, ``ROI`` (folder names), ``Layers`` ({layer:
        shape}, network order), ``Voxels``, ``Tree`` (the root, resolved) and ``Files`` (each
        model file applied, relative to the root, with its size and modification time: a changed
        tree changes the description, so the decoding is not reused).

    Raises
    ------
    BidsReconError
        Naming every problem with its file, one per line: exit 66 when a folder or file is missing,
        else 64 (another voxel count, another unit shape than the encoder's).
    """
    root = Path(root).resolve()
    in_tree = tree_layers(root)
    if layers:
        chosen = [layer for layer in encoder_shapes if layer in layers]  # unknown names: refused by the encoder
        absent = [layer for layer in chosen if layer not in in_tree]
        if absent:
            raise BidsReconError(
                f"--decoders-dir {root} has no folder for the layer(s) {', '.join(absent)} asked for by --layers; "
                f"its layer folders are: {', '.join(in_tree) or 'none'}. Drop --layers (the tree's layers the encoder "
                "has are decoded) or name layers it has.", EXIT_INPUT_MISSING)
    else:
        chosen = [layer for layer in encoder_shapes if layer in in_tree]
    if not chosen:
        raise BidsReconError(
            f"--decoders-dir {root}: none of its folders ({', '.join(in_tree) or 'none'}) is a layer of the encoder "
            f"({', '.join(encoder_shapes)}). With --bdata-dir, --decoders-dir is the Kamitani lab's decoder folder of "
            f"one network (it holds <layer>/<subject>/<roi>/model/), not a bidsrecon output; {_FIX_ENCODER}.",
            EXIT_BAD_ARGUMENTS)
    subject_folder = _subject_folder(root, chosen, subject)
    missing, wrong, files = [], [], {}
    for layer in chosen:
        folder = model_folder(root, layer, subject_folder, roi)
        if not folder.is_dir():
            missing.append(_missing_folder(root, layer, subject_folder, roi))
            continue
        absent = [name for name in NORMALISATION_FILES if not (folder / name).is_file()]
        if not ((folder / "W.mat").is_file() and (folder / "b.mat").is_file()) and not (folder / "W").is_dir():
            absent.append("W.mat and b.mat (or W/ and b/)")
        if absent:
            missing.append(f"{folder}: {', '.join(absent)} missing (the cookbook writes x_mean, x_norm, y_mean, y_norm, "
                           "W and b into each model folder)")
            continue
        x_mean = read_mat_array(folder / "x_mean.mat", "x_mean")
        if x_mean.shape[-1] != n_voxels or x_mean.size != n_voxels:
            wrong.append(f"{folder / 'x_mean.mat'}: the decoder takes {x_mean.size} voxels (shape {list(x_mean.shape)}); "
                         f"the BData files' {roi} holds {n_voxels}: it was trained on another ROI or another "
                         "participant's files (pass the --bdata-roi it was trained on)")
        unit_shape = tuple(int(n) for n in read_mat_array(folder / "y_mean.mat", "y_mean").shape[1:])
        if unit_shape != tuple(encoder_shapes[layer]):
            wrong.append(f"{folder / 'y_mean.mat'}: layer {layer} has shape {list(unit_shape)} in the tree, "
                         f"{list(encoder_shapes[layer])} in the encoder at this --image-size; {_FIX_ENCODER}")
        for path in sorted(folder.rglob("*.mat")):
            stat = path.stat()
            files[path.relative_to(root).as_posix()] = [stat.st_size, stat.st_mtime_ns]
    if missing or wrong:
        raise BidsReconError(f"--decoders-dir {root} (the Kamitani lab's decoders of sub-{subject}, ROI {roi}) does not "
                             "apply:\n  " + "\n  ".join(missing + wrong),
                             EXIT_INPUT_MISSING if missing else EXIT_BAD_ARGUMENTS)
    return {"Format": FORMAT_NAME, "FormatVersion": FORMAT_VERSION, "Subject": subject_folder, "ROI": roi,
            "Layers": {layer: [int(n) for n in encoder_shapes[layer]] for layer in chosen},
            "Voxels": int(n_voxels), "Tree": str(root), "Files": files}


def _subject_folder(root, layers, subject):
    """``sub-<label>`` when a layer has it, else ``<label>`` when one has that (the cookbook's keys)."""
    for name in (f"sub-{subject}", subject):
        check_file_name(name, "the participant label")
        if any((root / layer / name).is_dir() for layer in layers):
            return name
    return f"sub-{subject}"


def _missing_folder(root, layer, subject_folder, roi):
    """Which part of ``<layer>/<subject>/<roi>/model`` is missing, and what is there instead."""
    for folder in (root / layer / subject_folder, root / layer / subject_folder / roi):
        if not folder.is_dir():
            there = sorted(path.name for path in folder.parent.iterdir() if path.is_dir())
            return f"{folder} not found (its folder holds: {', '.join(there) or 'nothing'})"
    return f"{root / layer / subject_folder / roi / 'model'} not found"


def columns_to_files(columns):
    """``VoxelIndices`` of the tree's rows: row ``j`` (the files' ``j``-th ROI column) is sample column
    ``VoxelIndices[j]``, given ``columns`` (sample column ``k`` is the files' ROI column ``columns[k]``)."""
    return [int(i) for i in np.argsort(np.asarray(columns))]


def tree_files_listing(description):
    """Each model file applied and its sha256, as a TSV (``file``, ``sha256``), the files relative to the tree."""
    root = Path(description["Tree"])
    lines = ["file\tsha256"] + [f"{name}\t{file_sha256(root / name)}" for name in sorted(description["Files"])]
    return "\n".join(lines) + "\n"


def listing_sha256(text):
    """sha256 of a listing :func:`tree_files_listing` wrote: one hash for the whole tree applied."""
    return hashlib.sha256(text.encode()).hexdigest()
