"""Clean one run's voxel time series before samples are taken from it."""
import numpy as np

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


def clean_run(data, confounds=None, n_discard=0, clip_sd=3.0):
    """Remove trend and confounds from one run, z-score each voxel and clip outliers.

    The order of operations (the paper's, REFERENCE.md §2, with z-scoring in place of the
    percent change from the initial rest):

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
    design = nuisance_design(n_volumes, confounds)
    if not np.all(np.isfinite(design[n_discard:])):
        raise ValueError("confounds contain NaN or infinite values in the kept volumes")
    # One small pseudo-inverse serves every voxel: betas = projector @ data[kept].
    projector = np.linalg.pinv(design[n_discard:])
    cleaned = np.empty((n_volumes, n_voxels), dtype=np.float32)
    for start in range(0, n_voxels, _VOXELS_PER_CHUNK):
        columns = slice(start, start + _VOXELS_PER_CHUNK)
        cleaned[:, columns] = _clean_chunk(data[:, columns], design, projector, n_discard, clip_sd)
    cleaned[:n_discard] = np.nan
    return cleaned


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
