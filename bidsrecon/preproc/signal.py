"""Clean one run's voxel time series before samples are taken from it."""
import numpy as np

from bidsrecon.paper import CLIP_SD

# Voxels cleaned at a time: bounds the float64 working copies (a full-size run has ~10^5
# voxels x 239 volumes) while keeping each matrix product large enough to be efficient.
_VOXELS_PER_CHUNK = 8192


def nuisance_design(n_volumes, confounds=None):
    """The regressors `clean_run` removes: a constant, a linear trend and the confounds.

    Parameters
    ----------
    n_volumes : int
    confounds : ndarray, shape (n_volumes, n_confounds), optional

    Returns
    -------
    ndarray, shape (n_volumes, 2 + n_confounds)
    """
    columns = [np.ones(n_volumes), np.linspace(-1.0, 1.0, n_volumes)]
    if confounds is not None:
        columns.extend(np.asarray(confounds, dtype=np.float64).reshape(n_volumes, -1).T)
    return np.column_stack(columns)


def unusable_voxels(data, n_discard=0):
    """Voxels that carry nothing: a non-finite value or no variation over the kept volumes.

    Parameters
    ----------
    data : ndarray, shape (n_volumes, n_voxels)
    n_discard : int
        Leading volumes left out (as in `clean_run`).

    Returns
    -------
    ndarray of bool, shape (n_voxels,)
    """
    kept = np.asarray(data)[n_discard:]
    finite = np.isfinite(kept).all(axis=0)
    constant = np.zeros(kept.shape[1], dtype=bool)
    constant[finite] = kept[:, finite].min(axis=0) == kept[:, finite].max(axis=0)
    return ~finite | constant


def clean_run(data, confounds=None, n_discard=0, clip_sd=CLIP_SD):
    """Remove trend and confounds from one run, z-score each voxel and clip outliers.

    The order of operations (the paper's, REFERENCE.md §2, with z-scoring in place of the
    percent change from the initial rest that `normalise_run` does; ``--normalise zscore``):

    1. the first ``n_discard`` volumes are left out of every estimate below and returned as NaN
       (the scanner has not reached a steady state);
    2. a constant, a linear trend and the ``confounds`` are regressed out by least squares over
       the kept volumes;
    3. each voxel is z-scored over the kept volumes;
    4. values beyond ``±clip_sd`` are clipped.

    Voxels with a non-finite value or no variation in the kept volumes (see `unusable_voxels`)
    become 0: they carry nothing, and they must keep their column so that voxels stay aligned
    across runs.

    Parameters
    ----------
    data : ndarray, shape (n_volumes, n_voxels)
    confounds : ndarray, shape (n_volumes, n_confounds), optional
        Must be finite in the kept volumes.
    n_discard : int
    clip_sd : float or None
        None disables clipping.

    Returns
    -------
    ndarray, shape (n_volumes, n_voxels), float32
    """
    data = np.asarray(data)
    n_volumes, n_voxels = data.shape
    if not 0 <= n_discard < n_volumes - 2:
        raise ValueError(f"n_discard must be in [0, {n_volumes - 3}] for a run of {n_volumes} volumes; got {n_discard}")
    return _by_voxel_chunks(data, confounds, n_discard, lambda chunk, design, projector: _clean_chunk(
        chunk, design, projector, n_discard, clip_sd))


def _by_voxel_chunks(data, confounds, n_discard, process):
    """``process(chunk, design, projector)`` over chunks of voxels, as float32; the discarded
    volumes NaN. ``design`` is :func:`nuisance_design`'s, ``projector`` its pseudo-inverse over
    the kept volumes: one small pseudo-inverse serves every voxel (betas = projector @ data[kept])."""
    n_volumes, n_voxels = data.shape
    design = nuisance_design(n_volumes, confounds)
    if not np.all(np.isfinite(design[n_discard:])):
        raise ValueError("confounds contain NaN or infinite values in the kept volumes")
    projector = np.linalg.pinv(design[n_discard:])
    result = np.empty((n_volumes, n_voxels), dtype=np.float32)
    for start in range(0, n_voxels, _VOXELS_PER_CHUNK):
        columns = slice(start, start + _VOXELS_PER_CHUNK)
        result[:, columns] = process(data[:, columns], design, projector)
    result[:n_discard] = np.nan
    return result


def _clean_chunk(chunk, design, projector, n_discard, clip_sd):
    chunk = np.array(chunk, dtype=np.float64)
    chunk[:, ~np.isfinite(chunk[n_discard:]).all(axis=0)] = 0.0
    residuals = chunk - design @ (projector @ chunk[n_discard:])
    kept = residuals[n_discard:]
    sd = kept.std(axis=0, ddof=1)
    # Constant voxels (a residual at rounding level) carry nothing: they become 0, not NaN or noise.
    sd[sd <= 1e-9 * np.maximum(np.abs(chunk[n_discard:]).max(axis=0), 1.0)] = np.inf
    residuals = (residuals - kept.mean(axis=0)) / sd
    if clip_sd is not None:
        np.clip(residuals, -clip_sd, clip_sd, out=residuals)
    return residuals


# Passes of the outlier reduction: BrainDecoderToolbox2's and bdpy's `reduce_outlier` default.
OUTLIER_PASSES = 10


def baseline_volumes(onsets, durations, n_volumes, tr, n_discard=0):
    """Volumes acquired entirely inside the baseline (rest) events, after the discarded ones.

    Volume ``i`` is acquired over ``[i * tr, (i + 1) * tr)``; it belongs to the baseline when that
    interval lies inside one event ``[onset, onset + duration)``. No haemodynamic shift is applied:
    the volumes of a rest period are rest. Volumes before ``n_discard`` are left out.

    Parameters
    ----------
    onsets, durations : array_like of float
        The baseline events (s).
    n_volumes : int
    tr : float
        Repetition time (s).
    n_discard : int
        Leading volumes left out (as in `normalise_run`).

    Returns
    -------
    ndarray of int
        Indices of the baseline volumes, ascending (empty when none qualifies).
    """
    starts = np.arange(n_volumes) * float(tr)
    inside = np.zeros(n_volumes, dtype=bool)
    tolerance = 1e-6 * float(tr)  # onsets written with rounding (31.999999) still hold their volumes
    for onset, duration in zip(np.atleast_1d(onsets), np.atleast_1d(durations)):
        inside |= (starts >= onset - tolerance) & (starts + tr <= onset + duration + tolerance)
    inside[:n_discard] = False
    return np.flatnonzero(inside)


def normalise_run(data, baseline, confounds=None, n_discard=0, clip_sd=CLIP_SD, n_passes=OUTLIER_PASSES):
    """Express one run in percent signal change from its rest baseline, then reduce outliers.

    The Kamitani lab's normalisation (Shen et al. 2019, REFERENCE.md §2; bdpy's ``regressout``
    with ``remove_dc=False``, ``normalize_sample`` in ``PercentSignalChange`` mode with a baseline,
    then ``reduce_outlier``), per voxel, in this order:

    1. the first ``n_discard`` volumes are left out of every estimate below and returned as NaN
       (the scanner has not reached a steady state);
    2. a constant, a linear trend and the ``confounds`` are regressed out by least squares over
       the kept volumes, and the voxel's mean over the kept volumes is added back;
    3. the signal is expressed in percent change from its mean over the ``baseline`` volumes:
       ``100 * (x - b) / b``;
    4. outliers are reduced ``n_passes`` times: values beyond the voxel's mean ``± clip_sd``
       standard deviations (ddof 1) over the kept volumes are clipped to that bound, and the
       mean and SD are taken again from the clipped values at the next pass.

    Unlike `clean_run`'s z-score over the whole run, the reference level is the rest, so that
    runs with more or less stimulation per minute (ds001506's letter runs against its training
    runs) are not shifted against each other.

    Voxels with a non-finite value or no variation in the kept volumes (see `unusable_voxels`),
    and voxels whose baseline mean is not above their SD over the kept volumes after step 2 (a
    level of 0 or below, as in data already centred: a percent of it means nothing), become 0:
    they carry nothing, and they must keep their column so that voxels stay aligned across runs.

    Parameters
    ----------
    data : ndarray, shape (n_volumes, n_voxels)
        The run's signal in scanner units (a positive level, not already centred).
    baseline : array_like of int or bool
        The baseline volumes: indices, or a mask of length ``n_volumes`` (see `baseline_volumes`).
        At least 2, all at or after ``n_discard``.
    confounds : ndarray, shape (n_volumes, n_confounds), optional
        Must be finite in the kept volumes.
    n_discard : int
    clip_sd : float or None
        None disables the outlier reduction.
    n_passes : int
        Passes of the outlier reduction.

    Returns
    -------
    ndarray, shape (n_volumes, n_voxels), float32
        Percent signal change from the baseline.

    Raises
    ------
    ValueError
        For ``n_discard`` out of range, non-finite confounds, or fewer than 2 baseline volumes
        after the discarded ones.
    """
    data = np.asarray(data)
    n_volumes, n_voxels = data.shape
    if not 0 <= n_discard < n_volumes - 2:
        raise ValueError(f"n_discard must be in [0, {n_volumes - 3}] for a run of {n_volumes} volumes; got {n_discard}")
    baseline = np.asarray(baseline)
    baseline = np.flatnonzero(baseline) if baseline.dtype == bool else np.unique(baseline.astype(int))
    if baseline.size and (baseline[0] < n_discard or baseline[-1] >= n_volumes):
        raise ValueError(f"baseline volumes must lie in [{n_discard}, {n_volumes - 1}] (the kept volumes); "
                         f"got {baseline[0]}..{baseline[-1]}")
    if baseline.size < 2:
        raise ValueError(f"the baseline holds {baseline.size} volume(s) after the first {n_discard} are "
                         "discarded; percent signal change needs at least 2")
    if n_passes < 1:
        raise ValueError(f"n_passes must be at least 1; got {n_passes}")
    return _by_voxel_chunks(data, confounds, n_discard, lambda chunk, design, projector: _normalise_chunk(
        chunk, design, projector, n_discard, baseline, clip_sd, n_passes))


def reduce_outliers(data, clip_sd=CLIP_SD, n_passes=OUTLIER_PASSES):
    """Clip each column at its mean ± ``clip_sd`` SD (ddof 1), ``n_passes`` times.

    The lab's ``reduce_outlier`` along time: each pass takes the mean and SD of the values the
    previous pass left, so a large spike, which inflates the first SD, is brought in further by
    the later passes.

    Parameters
    ----------
    data : ndarray, shape (n_samples, n_columns)
        Finite values; clipped in place when float64.
    clip_sd : float
    n_passes : int

    Returns
    -------
    ndarray, shape (n_samples, n_columns)
    """
    data = np.asarray(data, dtype=np.float64)
    for _ in range(n_passes):
        mean = data.mean(axis=0)
        spread = clip_sd * data.std(axis=0, ddof=1)
        np.clip(data, mean - spread, mean + spread, out=data)
    return data


def _normalise_chunk(chunk, design, projector, n_discard, baseline, clip_sd, n_passes):
    chunk = np.array(chunk, dtype=np.float64)
    kept = chunk[n_discard:]
    unusable = ~np.isfinite(kept).all(axis=0)
    chunk[:, unusable] = 0.0
    kept = chunk[n_discard:]
    unusable |= kept.min(axis=0) == kept.max(axis=0)
    # Trend and confounds out, the level kept (bdpy's Regressout with remove_dc=False): the
    # regression is done first because its constant would otherwise re-centre every voxel on its
    # run mean after the percent change, which is the offset the rest baseline is there to avoid;
    # and the baseline mean must be taken from the detrended signal, since the lead rest sits at
    # the start of the run where a drift is largest.
    cleaned = chunk - design @ (projector @ kept) + kept.mean(axis=0)
    level = cleaned[baseline].mean(axis=0)
    # A level not above the voxel's own fluctuation (data already centred, a voxel outside the
    # head) turns noise into hundreds of percent: as unusable as a negative level.
    unusable |= ~(level > cleaned[n_discard:].std(axis=0, ddof=1))
    level[unusable] = 1.0
    percent = 100.0 * (cleaned - level) / level
    if clip_sd is not None:
        percent[n_discard:] = reduce_outliers(percent[n_discard:], clip_sd, n_passes)
    percent[:, unusable] = 0.0
    return percent
