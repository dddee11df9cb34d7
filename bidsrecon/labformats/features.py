"""bdpy's ``Features`` layout: a network's features of many images, one ``.mat`` file per layer and image.

::

    <directory>/<layer>/<label>.mat      key "feat", shape (1, *layer_shape)

``<label>`` is the image's name (ds001506's ``n01443537_22563``, our stimulus names) and
``<layer>`` the network's layer (``conv1_1`` ... ``fc8`` for the lab's VGG19). The files are MATLAB
v7.3 (HDF5, what bdpy's ``save_feature`` writes through hdf5storage) or MATLAB v5 (scipy); both
are read with h5py and scipy only (:mod:`bidsrecon.labformats.matfile`, which undoes v7.3's
reversed axes).

Layers and labels are names, never paths: one with ``/``, ``\\``, ``..`` or a leading dot is
refused. A ``statistics.pkl`` that bdpy keeps in such a folder is ignored (it is a pickle, and
loading one runs code).
"""
import logging
from pathlib import Path

import numpy as np

from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.labformats.matfile import mat_shape, read_mat_array
from bidsrecon.names import check_path_name

LOGGER = logging.getLogger("bidsrecon")

#: The variable each file holds.
FEATURE_KEY = "feat"
#: bdpy's cache of feature statistics, a pickle: never read.
STATISTICS_FILE = "statistics.pkl"
#: Problems listed per layer before the rest are counted.
_SHOWN = 5
_FIX = "a features folder names its layers and images by their names, never by paths"


def feature_file(directory, layer, label):
    """The file of one image's features at one layer: ``<directory>/<layer>/<label>.mat``."""
    label = check_path_name(label, "image name", _FIX)
    return Path(directory) / check_path_name(layer, "layer", _FIX) / f"{label}.mat"


def list_layers(directory):
    """The layers of a features folder: its sub-folders (hidden ones left out), sorted."""
    directory = Path(directory)
    if (directory / STATISTICS_FILE).exists():
        LOGGER.info("%s: ignored (a pickle; the statistics are computed from the features)", directory / STATISTICS_FILE)
    return sorted(path.name for path in directory.iterdir() if path.is_dir() and not path.name.startswith("."))


def list_labels(directory, layer):
    """The labels (image names) of one layer: the stems of its ``.mat`` files, sorted."""
    folder = Path(directory) / check_path_name(layer, "layer", _FIX)
    return sorted(path.stem for path in folder.glob("*.mat") if not path.name.startswith("."))


def feature_shape(path):
    """Shape of the ``feat`` array of a ``.mat`` file, read from its header (no data read).

    Raises
    ------
    BidsReconError
        Naming the file when it is not a MATLAB file or holds no ``feat``.
    """
    return mat_shape(path, FEATURE_KEY)


def read_feature(directory, layer, label):
    """One image's features at one layer, as stored: an array of shape (1, *layer_shape).

    Parameters
    ----------
    directory : str or Path
        The features folder.
    layer, label : str

    Returns
    -------
    ndarray
        In the file's own type (float32 for the lab's files).
    """
    path = feature_file(directory, layer, label)
    if not path.is_file():
        raise BidsReconError(f"{path}: no such file; the features folder {directory} has no features of image "
                             f"{label!r} at layer {layer!r}", EXIT_INPUT_MISSING)
    return np.ascontiguousarray(read_mat_array(path, FEATURE_KEY))


def check_features(directory, labels, layer_shapes, fix=""):
    """Problems of a features folder for these images and layers, from the files' headers.

    Every layer must be a folder, every label a file in each, and each file's ``feat`` of shape
    ``(1, *layer_shape)``.

    Parameters
    ----------
    directory : str or Path
    labels : iterable of str
        The images (stimulus names) whose features are needed.
    layer_shapes : dict of str to tuple of int
        The layers needed and each one's shape for one image (what the encoder gives).
    fix : str
        Appended to a wrong shape's message: how to get matching shapes (the options to pass).

    Returns
    -------
    list of BidsReconError
        Empty when every file is there with the right shape. One problem per missing layer,
        per layer with missing files, per layer with files of another shape (the first few
        files named), per unreadable file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return [BidsReconError(f"--features-dir {directory}: no such folder", EXIT_INPUT_MISSING)]
    labels = [check_path_name(label, "image name", _FIX) for label in labels]
    present = list_layers(directory)
    problems = []
    for layer, shape in layer_shapes.items():
        folder = directory / check_path_name(layer, "layer", _FIX)
        if not folder.is_dir():
            problems.append(BidsReconError(
                f"{folder}: no such folder; the features folder has no layer {layer!r} (it has "
                f"{', '.join(present) or 'no layer folder'}): give a folder with every layer decoded, or choose "
                "--layers among those it has", EXIT_INPUT_MISSING))
            continue
        expected = (1, *shape)
        missing, wrong = [], []
        for label in labels:
            path = feature_file(directory, layer, label)
            if not path.is_file():
                missing.append(path)
                continue
            try:
                found = feature_shape(path)
            except BidsReconError as error:
                problems.append(error)
                continue
            if found != expected:
                wrong.append((path, found))
        if missing:
            problems.append(BidsReconError(
                f"{folder}: no features of {len(missing)} of the {len(labels)} training images: "
                f"{', '.join(path.name for path in missing[:_SHOWN])}{' ...' if len(missing) > _SHOWN else ''}; "
                "every training stimulus needs <layer>/<stimulus name>.mat", EXIT_INPUT_MISSING))
        if wrong:
            named = "; ".join(f"{path} has shape {found}" for path, found in wrong[:_SHOWN])
            problems.append(BidsReconError(
                f"{named}{f' (and {len(wrong) - _SHOWN} more)' if len(wrong) > _SHOWN else ''}: the encoder's "
                f"{layer!r} needs {expected}{f'; {fix}' if fix else ''}", EXIT_BAD_ARGUMENTS))
    return problems
