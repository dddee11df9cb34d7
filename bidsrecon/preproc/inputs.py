"""Read one run's files and check them once, with errors that name the file."""
import nibabel as nib
import numpy as np
import pandas as pd

from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.grid import same_affine

# Spellings of a missing value in a TSV (BIDS writes n/a; pandas and numpy write NaN or nan).
_MISSING_VALUES = ("n/a", "NaN", "nan", "")
# Affines of the same grid written by different tools differ at rounding level.


def load_bold(path):
    """Open a 4-D BOLD run (data not read yet).

    Raises
    ------
    BidsReconError
        When the file is not an image nibabel reads, or not 4-D with at least 2 volumes.
    """
    try:
        image = nib.load(path)
    except Exception as error:  # nibabel raises several kinds for unreadable files
        raise BidsReconError(f"{path}: cannot be read as a NIfTI image ({error})", EXIT_INPUT_MISSING) from error
    if len(image.shape) != 4 or image.shape[3] < 2:
        raise BidsReconError(
            f"{path}: a BOLD run must be 4-D (x, y, z, time) with at least 2 volumes; "
            f"got shape {image.shape}",
            EXIT_BAD_ARGUMENTS,
        )
    return image


def load_mask(mask_path, bold_image, bold_path):
    """A brain mask as booleans, checked to lie on the BOLD run's grid.

    Raises
    ------
    BidsReconError
        When the mask's shape or affine differs from the run's, or it selects no voxel.
    """
    mask_image = nib.load(mask_path)
    affine_agrees = same_affine(mask_image.affine, bold_image.affine)
    if mask_image.shape[:3] != bold_image.shape[:3] or len(mask_image.shape) != 3 or not affine_agrees:
        raise BidsReconError(
            f"{bold_path}: its grid (shape {bold_image.shape[:3]}) differs from the mask {mask_path} "
            f"(shape {mask_image.shape}{'' if affine_agrees else ', another affine'}); "
            "resample the mask to the BOLD grid first",
            EXIT_BAD_ARGUMENTS,
        )
    mask = np.asanyarray(mask_image.dataobj) > 0
    if not mask.any():
        raise BidsReconError(f"{mask_path}: the mask selects no voxel", EXIT_BAD_ARGUMENTS)
    return mask


def masked_time_series(bold_image, mask):
    """The run's voxels inside ``mask``, shape (n_volumes, n_voxels), float32.

    The stored integers are masked before they are scaled, so that a full-size run never exists
    as a float array (a 96×96×76×239 run is 670 MB in float32).
    """
    proxy = bold_image.dataobj
    unscaled = np.asanyarray(proxy.get_unscaled())[mask]  # (n_voxels, n_volumes), stored dtype
    slope = 1.0 if proxy.slope is None or not np.isfinite(proxy.slope) else float(proxy.slope)
    intercept = 0.0 if proxy.inter is None or not np.isfinite(proxy.inter) else float(proxy.inter)
    series = unscaled.T.astype(np.float32)
    if slope != 1.0:
        series *= slope
    if intercept != 0.0:
        series += intercept
    return series


def read_trial_timing(path):
    """Onsets and durations (s) of the trials in a TSV with ``onset`` and ``duration`` columns.

    Raises
    ------
    BidsReconError
        For a missing column, a value that is not a number, or a duration that is not positive.
    """
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    timing = {}
    for column in ("onset", "duration"):
        if column not in table.columns:
            raise BidsReconError(f"{path}: no '{column}' column (columns: {', '.join(table.columns)})",
                                 EXIT_BAD_ARGUMENTS)
        values = pd.to_numeric(table[column].str.strip(), errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            shown = ", ".join(f"row {row + 1}: {table[column].iloc[row]!r}" for row in bad[:3])
            raise BidsReconError(f"{path}: '{column}' must hold numbers (seconds); got {shown}",
                                 EXIT_BAD_ARGUMENTS)
        timing[column] = values
    short = np.flatnonzero(timing["duration"] <= 0)
    if short.size:
        raise BidsReconError(f"{path}: durations must be positive; row {short[0] + 1} has "
                             f"{timing['duration'][short[0]]:g}", EXIT_BAD_ARGUMENTS)
    return timing["onset"], timing["duration"]


def read_confounds(path, columns, n_volumes):
    """The chosen confound columns, one row per volume; missing values (n/a) become 0.

    fMRIPrep writes n/a where a value does not exist, e.g. the first row of
    ``framewise_displacement``; 0 there means "no displacement", the value it stands for.

    Parameters
    ----------
    path : str
        TSV with a header row.
    columns : sequence of str
        Names already resolved by the caller (no globs).
    n_volumes : int
        Volumes of the run the confounds belong to.

    Returns
    -------
    ndarray, shape (n_volumes, len(columns)), float64

    Raises
    ------
    BidsReconError
        For a missing column, a row count other than ``n_volumes``, or a value that is not a number.
    """
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise BidsReconError(f"{path}: no confound column(s) {', '.join(missing)} "
                             f"(columns: {', '.join(table.columns)})", EXIT_BAD_ARGUMENTS)
    if len(table) != n_volumes:
        raise BidsReconError(f"{path}: {len(table)} rows of confounds for a run of {n_volumes} volumes",
                             EXIT_BAD_ARGUMENTS)
    chosen = table[list(columns)].apply(lambda column: column.str.strip())
    absent = chosen.isin(_MISSING_VALUES).to_numpy(dtype=bool)  # bool even with no columns
    values = np.array(chosen.apply(pd.to_numeric, errors="coerce"), dtype=np.float64)  # writable copy
    bad = ~absent & ~np.isfinite(values)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise BidsReconError(f"{path}: confound '{columns[column]}' row {row + 1} is "
                             f"{chosen.iat[row, column]!r}, not a number", EXIT_BAD_ARGUMENTS)
    values[absent] = 0.0
    return values


def check_slice_timing(slice_timing, n_slices, tr, bold_path):
    """Check a sidecar's SliceTiming against the run; returns it as an array (s).

    Raises
    ------
    BidsReconError
        When the count differs from the number of slices, or a time is outside ``[0, tr)``.
    """
    times = np.asarray(slice_timing, dtype=np.float64)
    if times.shape != (n_slices,):
        raise BidsReconError(f"{bold_path}: SliceTiming lists {times.size} times for {n_slices} slices",
                             EXIT_BAD_ARGUMENTS)
    outside = np.flatnonzero(~((times >= 0) & (times < tr)))
    if outside.size:
        raise BidsReconError(f"{bold_path}: SliceTiming must lie in [0, RepetitionTime = {tr:g} s); "
                             f"slice {outside[0]} is at {times[outside[0]]:g} s", EXIT_BAD_ARGUMENTS)
    return times
