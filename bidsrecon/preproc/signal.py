"""Clean one run's voxel time series before samples are taken from it."""
import numpy as np


def clean_run(data, confounds=None, n_discard=0, clip_sd=3.0):
    """Remove trend and confounds from one run, z-score each voxel and clip outliers.

    The order of operations (the paper's, REFERENCE.md §2, with z-scoring in place of the
    percent change from the initial rest):

    1. the first ``n_discard`` volumes are left out of every estimate below and returned as NaN
       (the scanner has not reached a steady state);
    2. a constant, a linear trend and the ``confounds`` are regressed out by least squares over
       the kept volumes;
    3. each voxel is z-scored over the kept volumes (a constant voxel becomes 0);
    4. values beyond ``±clip_sd`` are clipped.

    Parameters
    ----------
    data : ndarray, shape (n_volumes, n_voxels)
    confounds : ndarray, shape (n_volumes, n_confounds), optional
    n_discard : int
    clip_sd : float or None
        None disables clipping.

    Returns
    -------
    ndarray, shape (n_volumes, n_voxels), float32
    """
    data = np.asarray(data, dtype=np.float64)
    n_volumes = data.shape[0]
    if not 0 <= n_discard < n_volumes - 2:
        raise ValueError(f"n_discard must be in [0, {n_volumes - 3}] for a run of {n_volumes} volumes; got {n_discard}")
    kept = slice(n_discard, None)

    trend = np.linspace(-1.0, 1.0, n_volumes)
    design = [np.ones(n_volumes), trend]
    if confounds is not None:
        confounds = np.asarray(confounds, dtype=np.float64).reshape(n_volumes, -1)
        if not np.all(np.isfinite(confounds[kept])):
            raise ValueError("confounds contain NaN or infinite values in the kept volumes")
        design.extend(confounds.T)
    design = np.column_stack(design)

    betas, *_ = np.linalg.lstsq(design[kept], data[kept], rcond=None)
    residuals = data - design @ betas

    sd = residuals[kept].std(axis=0, ddof=1)
    sd[sd == 0] = np.inf  # constant voxels carry nothing: they become 0, not NaN
    cleaned = (residuals - residuals[kept].mean(axis=0)) / sd
    if clip_sd is not None:
        np.clip(cleaned, -clip_sd, clip_sd, out=cleaned)
    cleaned[:n_discard] = np.nan
    return cleaned.astype(np.float32)
