"""Slice-timing correction: resample every slice's time series to one reference time."""
import numpy as np
from scipy.interpolate import CubicSpline


def reference_time(slice_times):
    """The time slices are aligned to: the middle of the acquisition range (fMRIPrep's default)."""
    return (float(np.min(slice_times)) + float(np.max(slice_times))) / 2.0


def slice_time_correct(volumes, slice_times, tr, slice_axis=2):
    """Shift each slice's time series to `reference_time` by cubic-spline interpolation in time.

    Slice ``k`` of volume ``v`` was acquired at ``v * tr + slice_times[k]``; after correction it
    holds the value at ``v * tr + reference_time(slice_times)``. Times before the first or after
    the last acquisition take the nearest acquired value (no extrapolation).

    Parameters
    ----------
    volumes : ndarray, shape (x, y, z, t)
        Corrected in place when it is a float32 array (a run can take gigabytes).
    slice_times : sequence of float, length ``volumes.shape[slice_axis]``
        Seconds from the start of each volume, in slice-index order.
    tr : float
        Repetition time (s).
    slice_axis : int
        Spatial axis (0, 1 or 2) along which slices were acquired.

    Returns
    -------
    ndarray, shape (x, y, z, t), float32
    """
    volumes = np.asarray(volumes, dtype=np.float32)
    slice_times = np.asarray(slice_times, dtype=np.float64)
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2; got {slice_axis}")
    if slice_times.shape != (volumes.shape[slice_axis],):
        raise ValueError(f"{volumes.shape[slice_axis]} slice times expected; got {slice_times.shape}")
    n_volumes = volumes.shape[3]
    target = reference_time(slice_times)
    for index, offset in enumerate(slice_times):
        times = np.arange(n_volumes) * tr + offset
        wanted = np.clip(np.arange(n_volumes) * tr + target, times[0], times[-1])
        selector = [slice(None)] * 3
        selector[slice_axis] = index
        slab = volumes[tuple(selector)]  # a view: (.., .., t)
        slab[...] = CubicSpline(times, slab, axis=-1)(wanted)
    return volumes
