"""Decoded features in the Kamitani lab's layout, the one bdpy's ``DecodedFeatures`` reads.

The lab keeps one MATLAB file per decoded item::

    <root>/<layer>/<subject>/<roi>/<label>.mat      key "feat", shape (1, *layer_shape), float32

where ``<label>`` is the stimulus name. That layout has no level for the test set, so an
output holds one root per test set (:func:`write_decoded_feature_sets`): the same image seen and
imagined are two items with one stimulus name. The files are MATLAB v5 (``scipy.io.savemat``),
which bdpy reads with ``scipy.io.loadmat``; v5 holds up to 2 GB per variable, far more than one
item of one layer.

Names become folder and file names, so each is checked to be one plain name
(:func:`check_name`): stimulus names come from events files and set names from the
specification, and neither may lead out of the root.
"""
import re
from pathlib import Path

import numpy as np
import scipy.io

from bidsrecon.errors import EXIT_BAD_ARGUMENTS, BidsReconError
from bidsrecon.names import check_path_name
from bidsrecon.spec import TRAINING

#: The key of the array in each file, the one bdpy's reader looks up.
FEATURE_KEY = "feat"
#: ROI label when no ``--roi`` was given: the decoder reads the whole brain mask.
BRAIN_ROI = "brain"


def check_bdpy_names(sets):
    """Every test set and stimulus name can be a folder or file name of ``--save-decoded-features bdpy``:
    checked when the participant is planned, since the files are written at the very end.

    Parameters
    ----------
    sets : iterable of (str, iterable of str, str)
        A set's name, its stimulus names, and where they are written (named in the fix: an events
        file, a BData file's value map). The training set is skipped: nothing is written per
        training image.
    """
    for set_name, stimuli, where in sets:
        if set_name == TRAINING:
            continue
        check_path_name(set_name, "test set name", "rename the set in the decoding specification (--spec)")
        for stimulus in dict.fromkeys(stimuli):
            check_path_name(stimulus, "stimulus name", f"rename the stimulus in {where} (and its image), or drop "
                            "--save-decoded-features bdpy")


def roi_label(names):
    """The ``<roi>`` folder name of the voxels the decoder read.

    Parameters
    ----------
    names : sequence of str
        The ROIs joined into the voxel mask, as ``--roi`` names them (``V1``, ``LH_hV4``, the
        ``NAME`` of ``NAME=PATH``); empty for the whole brain mask.

    Returns
    -------
    str
        The names joined by ``+`` (``V1+V2+V3``; ``VC`` for ``--roi VC``, the lab's visual cortex),
        each reduced to letters, digits, ``_`` and ``-``; ``brain`` for none.
    """
    parts = [re.sub(r"[^A-Za-z0-9_-]", "", str(name)) for name in names]
    return "+".join(part for part in parts if part) or BRAIN_ROI


def write_decoded_features(root, decoded, labels, *, subject, roi):
    """Write one test set's decoded features as ``<root>/<layer>/<subject>/<roi>/<label>.mat``.

    Parameters
    ----------
    root : str or Path
        The set's folder; created.
    decoded : dict of str to array, shape (n_items, ...)
        Decoded features per layer, rows in the order of ``labels``.
    labels : sequence of str
        The items' stimulus names, each once.
    subject : str
        The ``<subject>`` folder name, e.g. ``sub-01``.
    roi : str
        The ``<roi>`` folder name (:func:`roi_label`).

    Returns
    -------
    list of Path
        The files written, layer by layer.

    Raises
    ------
    BidsReconError
        Exit 64 for a name that cannot be a file or folder name, a stimulus named twice, or a layer
        without one row per label.
    """
    labels = [check_path_name(label, "stimulus name", "rename the stimulus in the events files (and its image)")
              for label in labels]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise BidsReconError(f"cannot write the decoded features in bdpy's layout: the stimuli {repeated} appear "
                             "twice in one test set, and each item is one file named after its stimulus",
                             EXIT_BAD_ARGUMENTS)
    subject = check_path_name(subject, "subject", "use a subject label of letters and digits")
    roi = check_path_name(roi, "ROI label", "give the --roi names without slashes")
    written = []
    for layer, values in decoded.items():
        layer = check_path_name(layer, "layer name", "choose --layers among the encoder's layer names")
        values = np.asarray(values, dtype=np.float32)
        if values.ndim < 1 or len(values) != len(labels):
            raise BidsReconError(f"cannot write the decoded features of layer {layer}: {len(labels)} items but "
                                 f"an array of shape {values.shape}", EXIT_BAD_ARGUMENTS)
        folder = Path(root) / layer / subject / roi
        folder.mkdir(parents=True, exist_ok=True)
        for label, row in zip(labels, values):
            path = folder / f"{label}.mat"
            scipy.io.savemat(path, {FEATURE_KEY: row[np.newaxis]}, format="5", do_compression=False)
            written.append(path)
    return written


def write_decoded_feature_sets(folder, decoded, sets, labels, *, subject, roi):
    """Write each test set's items under ``<folder>/<set>/``, a root bdpy's reader loads.

    Parameters
    ----------
    folder : str or Path
        Where the sets' roots go.
    decoded : dict of str to array, shape (n_items, ...)
        Decoded features per layer, one row per item.
    sets, labels : sequence of str
        Each item's test set and stimulus name.
    subject, roi : str
        As in :func:`write_decoded_features`.

    Returns
    -------
    dict of str to list of Path
        Per set, the files written.
    """
    sets, labels = [str(name) for name in sets], [str(label) for label in labels]
    if len(sets) != len(labels):
        raise ValueError(f"one set per label expected; got {len(sets)} sets and {len(labels)} labels")
    written = {}
    for name in dict.fromkeys(sets):  # the sets in the items' order
        check_path_name(name, "test set name", "rename the set in the decoding specification (--spec)")
        rows = [index for index, item_set in enumerate(sets) if item_set == name]
        written[name] = write_decoded_features(Path(folder) / name,
                                               {layer: np.asarray(values)[rows] for layer, values in decoded.items()},
                                               [labels[index] for index in rows], subject=subject, roi=roi)
    return written
