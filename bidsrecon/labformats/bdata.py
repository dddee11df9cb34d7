"""The Kamitani lab's preprocessed samples: bdpy's BData files, read with h5py or scipy.

A BData file holds one matrix, ``dataset`` (samples x columns), and a metadata table that says
what each column is: ``metadata/key`` (n_keys names), ``metadata/description`` and
``metadata/value`` (n_keys x n_columns). A key such as ``VoxelData`` or ``ROI_VC`` flags its
columns with 1; a key such as ``Run`` or ``stimulus_name`` flags the one column that holds it.
A column of labels holds numbers, and ``vmap/<key>/<number>`` names each number (the lab's
``stimulus_name``). HDF5 (``.h5``, what ``BData.save`` writes) and MATLAB v5 (``.mat``) files
are read; nothing here unpickles.

The lab's figshare release of ds001506 (Shen et al. 2019) has one file per participant and
stimulus set, each sample one stimulus block, already preprocessed (their normalisation, outlier
reduction, block averaging): ``sub-01_perceptionNaturalImageTraining_original_VC.h5``,
``sub-01_perceptionLetterImage_original_VC.h5`` and so on. :func:`bdata_trials` turns one
participant's files into the decoding stage's plain inputs, the samples and their trials table
(:func:`bidsrecon.decoding.stage.fit_and_decode`), the set of each file taken from the
specification's session patterns.
"""
import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import scipy.io

from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.spec import TRAINING

#: The lab's label key and its whole visual cortex (the cookbook's defaults for ds001506).
DEFAULT_LABEL_KEY = "stimulus_name"
DEFAULT_ROI = "ROI_VC"
#: Metadata keys of each voxel column's position in mm, as the lab's files carry them.
COORDINATE_KEYS = ("voxel_x", "voxel_y", "voxel_z")
_MISSING_LABEL = "n/a"


@dataclass(frozen=True)
class BData:
    """One BData file's content.

    ``values`` has one row per key of ``keys`` and one column per column of ``dataset``;
    ``vmap`` maps a key to its ``{number: label}``.
    """

    path: str
    dataset: np.ndarray
    keys: tuple
    values: np.ndarray
    vmap: dict

    def flagged(self, key):
        """Columns flagged by ``key`` (value 1), as a boolean mask."""
        if key not in self.keys:
            raise BidsReconError(
                f"{self.path} has no metadata key {key!r}; its keys are {', '.join(self.keys)}. Pass one of "
                "them (e.g. --bdata-roi ROI_V1).", EXIT_BAD_ARGUMENTS)
        flags = self.values[self.keys.index(key)] == 1
        if not flags.any():
            raise BidsReconError(f"{self.path}: metadata key {key!r} flags no column.", EXIT_BAD_ARGUMENTS)
        return flags

    def column(self, key):
        """The one column ``key`` flags (e.g. ``Run``), one value per sample."""
        flags = self.flagged(key)
        if flags.sum() != 1:
            raise BidsReconError(f"{self.path}: metadata key {key!r} flags {int(flags.sum())} columns; "
                                 "a label or run key flags exactly one.")
        return self.dataset[:, np.flatnonzero(flags)[0]]

    def labels(self, key):
        """The labels of ``key``'s column by its value map (NaN: ``n/a``)."""
        if key not in self.vmap:
            raise BidsReconError(f"{self.path} has no value map for {key!r} (vmap/{key}); its labels "
                                 f"cannot be named. Keys with one: {', '.join(sorted(self.vmap)) or 'none'}.")
        names = self.vmap[key]
        labels = []
        for value in self.column(key):
            if np.isnan(value):
                labels.append(_MISSING_LABEL)
            elif float(value) not in names:
                raise BidsReconError(f"{self.path}: value {value:g} of {key!r} is not in its value map.")
            else:
                labels.append(names[float(value)])
        return labels


    def coordinates(self, columns):
        """The ``voxel_x/y/z`` values (mm) of the given columns, shape (n_columns, 3)."""
        missing = [key for key in COORDINATE_KEYS if key not in self.keys]
        if missing:
            raise BidsReconError(
                f"{self.path} has no {', '.join(missing)} metadata: bidsrecon places each voxel by its "
                "coordinates (the lab's files carry voxel_x, voxel_y and voxel_z); add them with "
                "BData.add_metadata(..., where='VoxelData').", EXIT_BAD_ARGUMENTS)
        return np.stack([self.values[self.keys.index(key), columns] for key in COORDINATE_KEYS], axis=1)


def read_bdata(path):
    """Read a BData file (``.h5`` or MATLAB v5 ``.mat``) without unpickling.

    Raises
    ------
    BidsReconError
        For a missing, unreadable or malformed file, naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise BidsReconError(f"BData file {path} does not exist.", EXIT_INPUT_MISSING)
    try:
        if path.suffix == ".h5":
            content = _read_h5(path)
        elif path.suffix == ".mat":
            content = _read_mat(path)
        else:
            raise BidsReconError(f"{path}: a BData file ends in .h5 or .mat.", EXIT_BAD_ARGUMENTS)
    except (OSError, KeyError, ValueError, TypeError, NotImplementedError) as error:
        raise BidsReconError(f"{path} is not a BData file bidsrecon can read ({error}); it needs "
                             "'dataset' and 'metadata' (key, description, value), as bdpy's BData.save "
                             "writes.", EXIT_BAD_ARGUMENTS) from None
    dataset, keys, values, vmap = content
    if dataset.ndim != 2 or values.shape != (len(keys), dataset.shape[1]):
        raise BidsReconError(f"{path}: metadata values {values.shape} do not match {len(keys)} keys and the "
                             f"dataset's {dataset.shape[1] if dataset.ndim == 2 else '?'} columns.",
                             EXIT_BAD_ARGUMENTS)
    return BData(str(path), dataset, tuple(keys), values, vmap)


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _read_h5(path):
    with h5py.File(path, "r") as store:
        metadata = store["metaData"] if "metaData" in store else store["metadata"]
        keys = [_text(key) for key in metadata["key"][()]]
        values = np.asarray(metadata["value"][()], dtype=float)
        dataset = np.asarray((store["dataSet"] if "dataSet" in store else store["dataset"])[()], dtype=float)
        vmap = {}
        for key, group in (store["vmap"].items() if "vmap" in store else ()):
            vmap[_text(key)] = {float(number): _text(label[()]) for number, label in group.items()}
    return dataset, keys, values, vmap


def _read_mat(path):
    content = scipy.io.loadmat(path)  # MATLAB v5: no pickles
    metadata = content["metaData"] if "metaData" in content else content["metadata"]
    keys = [str(np.asarray(key).ravel()[0]).strip() for key in np.asarray(metadata["key"][0, 0]).ravel()]
    values = np.asarray(metadata["value"][0, 0], dtype=float)
    dataset = np.asarray(content["dataSet"] if "dataSet" in content else content["dataset"], dtype=float)
    return dataset, keys, values, {}


def set_of_file(name, spec):
    """The specification's set whose session pattern starts the file name after ``sub-XX_``.

    ``sub-01_perceptionLetterImage_original_VC.h5`` is ds001506's ``letters``: its session pattern
    ``perceptionLetterImage\\d+`` without the session number matches ``perceptionLetterImage``.
    Returns None for a file of no set.
    """
    parts = name.split("_")
    if len(parts) < 2:
        return None
    token = parts[1].split(".")[0]
    for trial_set in spec.sets:
        pattern = trial_set.entities.get("session")
        if pattern is None:
            continue
        prefix = re.sub(r"(\\d[+*]|\[0-9\][+*])$", "", pattern)
        if re.fullmatch(prefix, token):
            return trial_set.name
    return None


def voxel_grid(coordinates, source):
    """The mask image that holds these voxel positions, and the columns' order in it.

    The grid's spacing on each axis is the smallest gap between the positions (1 mm when an axis
    has one value), its origin their minimum; the lab's files give positions in mm of the
    participant's functional space.

    Parameters
    ----------
    coordinates : ndarray, shape (n_voxels, 3)
    source : str
        Named in errors.

    Returns
    -------
    mask : nibabel.Nifti1Image
        uint8, 1 at each voxel.
    order : ndarray of int, shape (n_voxels,)
        The columns in the mask's C order: ``samples[:, order]`` are the mask's voxels in the order
        every other input mode samples them.
    """
    coordinates = np.asarray(coordinates, dtype=float)
    if not np.isfinite(coordinates).all():
        raise BidsReconError(f"{source}: some voxels have no finite voxel_x/y/z.", EXIT_BAD_ARGUMENTS)
    spacing = np.ones(3)
    for axis in range(3):
        gaps = np.diff(np.unique(coordinates[:, axis]))
        if len(gaps):
            spacing[axis] = gaps.min()
    origin = coordinates.min(axis=0)
    index = np.rint((coordinates - origin) / spacing).astype(np.int64)
    shape = index.max(axis=0) + 1
    off_grid = not np.allclose(index * spacing + origin, coordinates, atol=1e-3 * spacing.min())
    if off_grid or np.prod(shape) > 2 ** 30:
        raise BidsReconError(f"{source}: the voxels' voxel_x/y/z do not lie on a regular grid.", EXIT_BAD_ARGUMENTS)
    linear = np.ravel_multi_index(tuple(index.T), tuple(shape))
    if len(np.unique(linear)) != len(linear):
        raise BidsReconError(f"{source}: two voxel columns have the same voxel_x/y/z.", EXIT_BAD_ARGUMENTS)
    mask = np.zeros(tuple(shape), dtype=np.uint8)
    mask.flat[linear] = 1
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return nib.Nifti1Image(mask, affine), np.argsort(linear, kind="stable")


def bdata_trials(files, spec, *, roi=DEFAULT_ROI, label_key=DEFAULT_LABEL_KEY):
    """One participant's samples and trials from their BData files.

    Parameters
    ----------
    files : sequence of str or Path
        The participant's BData files, one per stimulus set (see :func:`set_of_file`).
    spec : bidsrecon.spec.Spec
        Names the sets; a set's ``stimulus_map`` renames its labels (a label it maps to null is
        left out, as the events are).
    roi : str
        Metadata key of the voxels to take (``ROI_VC``).
    label_key : str
        Metadata key of the stimulus labels (``stimulus_name``).

    Returns
    -------
    samples : ndarray, shape (n_samples, n_voxels), float32
        The ROI's voxels in the C order of ``mask`` (:func:`voxel_grid`).
    trials : DataFrame
        ``set``, ``stimulus``, ``run`` (the file's ``Run`` column when it has one, else 0) and
        ``source`` (the file's name), one row per sample, training first.
    mask : nibabel.Nifti1Image
        The ROI's voxels, placed by the training file's voxel_x/y/z.
    columns : ndarray of int, shape (n_voxels,)
        Where each sample column is among the ROI's columns of the files (:func:`voxel_grid`'s
        ``order``): column ``k`` of ``samples`` is the files' ROI column ``columns[k]``. Decoders
        trained on the files themselves (the lab's) take the ROI's columns in the files' order.

    Raises
    ------
    BidsReconError
        A file of no set, two files of one set, no training file, files whose voxel counts
        differ, or a key the file lacks: each names the file.
    """
    by_set = {}
    for path in map(Path, files):
        name = set_of_file(path.name, spec)
        if name is None:
            raise BidsReconError(f"{path}: its name names no set of the specification '{spec.name}' "
                                 f"({', '.join(trial_set.name for trial_set in spec.sets)}); BData files are named "
                                 "sub-<label>_<session without its number>_..., e.g. "
                                 "sub-01_perceptionNaturalImageTraining_original_VC.h5.", EXIT_BAD_ARGUMENTS)
        if name in by_set:
            raise BidsReconError(f"{path} and {by_set[name]} are both of set '{name}'; keep one.", EXIT_BAD_ARGUMENTS)
        by_set[name] = path
    if TRAINING not in by_set:
        raise BidsReconError(f"No training file among {', '.join(str(path) for path in files) or 'none'} "
                             f"(a name with the session of '{spec.training.name}'s entities).", EXIT_INPUT_MISSING)
    samples, tables, positions, mask, order = [], [], None, None, None
    for trial_set in spec.sets:
        if trial_set.name not in by_set:
            continue
        data = read_bdata(by_set[trial_set.name])
        columns = np.flatnonzero(data.flagged(roi))
        if positions is None:  # the training file, read first
            positions = data.coordinates(columns)
            mask, order = voxel_grid(positions, data.path)
        elif not np.array_equal(data.coordinates(columns), positions):
            raise BidsReconError(f"{data.path} holds other voxels in {roi} (voxel_x/y/z) than the training file "
                                 f"{by_set[TRAINING]}: all of a participant's files must hold the same voxels.",
                                 EXIT_BAD_ARGUMENTS)
        voxels = data.dataset[:, columns[order]]
        labels = pd.Series(data.labels(label_key), dtype=object)
        if trial_set.stimulus_map:
            labels = labels.map(lambda label, mapping=trial_set.stimulus_map: mapping.get(label, label))
        keep = labels.notna() & (labels != _MISSING_LABEL)
        runs = data.column("Run") if "Run" in data.keys else np.zeros(len(labels))
        samples.append(voxels[keep.to_numpy()].astype(np.float32))
        tables.append(pd.DataFrame({"set": trial_set.name, "stimulus": labels[keep].astype(str).to_numpy(),
                                    "run": runs[keep.to_numpy()].astype(int), "source": Path(data.path).name}))
    return np.concatenate(samples), pd.concat(tables, ignore_index=True), mask, order
