"""fMRIPrep-style confounds of a simulated run (desc-confounds_timeseries.tsv).

Columns follow fMRIPrep's names: global_signal, csf, white_matter and the six rigid-body
parameters, each followed by its expansions ``_derivative1`` (backward difference, n/a in the
first row), ``_power2`` and ``_derivative1_power2`` as fMRIPrep writes them; std_dvars and dvars
(n/a in the first row); framewise_displacement (Power et al. 2012; n/a in the first row);
a_comp_cor_00..04 (principal components of the high-pass-filtered noise-tissue time series)
and cosineNN (a discrete cosine basis for a 128-s high-pass filter). The expansions, DVARS and
the JSON sidecar are what nilearn's ``load_confounds_strategy`` reads.
"""
import numpy as np
import pandas as pd
from scipy.linalg import eigh
from scipy.ndimage import binary_erosion

from bidsrecon.preproc.motion import MOTION_COLUMNS
from bidsrecon.simulate.bold import HEAD_RADIUS_MM

N_COMPCOR = 5
HIGH_PASS_PERIOD_S = 128.0


def tissue_masks(brain_mask, visual_mask):
    """Stand-ins for fMRIPrep's CSF and white-matter masks.

    Outside visual cortex, brain voxels on the brain's surface play CSF and the
    interior plays white matter; either falls back to all non-visual voxels if empty.

    Returns
    -------
    tuple of ndarray of bool
        (csf, white_matter), shape of ``brain_mask``.
    """
    other = brain_mask & ~visual_mask
    interior = binary_erosion(brain_mask)
    csf, white_matter = other & ~interior, other & interior
    return (csf if csf.any() else other), (white_matter if white_matter.any() else other)


def cosine_basis(n_volumes, tr, period=HIGH_PASS_PERIOD_S):
    """Discrete cosine regressors below 1/period Hz, as fMRIPrep's cosineNN columns.

    Returns
    -------
    ndarray, shape (n_volumes, n_cosines)
    """
    order = int(np.floor(2 * n_volumes * tr / period))
    times = np.arange(n_volumes)
    return np.stack([
        np.sqrt(2.0 / n_volumes) * np.cos(np.pi * (times + 0.5) * k / n_volumes)
        for k in range(1, order + 1)
    ], axis=1) if order else np.zeros((n_volumes, 0))


def framewise_displacement(motion):
    """Power et al. (2012) FD: summed absolute backward differences, rotations at 50 mm."""
    steps = np.abs(np.diff(motion, axis=0))
    displacement = steps[:, :3].sum(axis=1) + HEAD_RADIUS_MM * steps[:, 3:].sum(axis=1)
    return np.concatenate([[np.nan], displacement])


def expansions(name, series):
    """A column and fMRIPrep's expansions of it: ``_derivative1`` (n/a first), ``_power2``,
    ``_derivative1_power2``."""
    derivative = np.concatenate([[np.nan], np.diff(series)])
    return {name: series, f"{name}_derivative1": derivative, f"{name}_power2": series ** 2,
            f"{name}_derivative1_power2": derivative ** 2}


def dvars(series):
    """DVARS and standardised DVARS (Power et al. 2012; Nichols 2017), n/a in the first row.

    Parameters
    ----------
    series : ndarray, shape (n_volumes, n_voxels)
        The brain's voxel time series.

    Returns
    -------
    dvars, std_dvars : ndarray, shape (n_volumes,)
        DVARS is the RMS over voxels of the backward differences; the standardised one divides
        it by its expectation for temporally autocorrelated noise, sqrt(2 (1 - AR1)) times each
        voxel's robust SD (the interquartile range / 1.349), averaged over voxels, as Nipype's
        ``compute_dvars`` that fMRIPrep uses.
    """
    series = np.asarray(series, dtype=np.float64)
    differences = np.diff(series, axis=0)
    value = np.sqrt((differences ** 2).mean(axis=1))
    quartiles = np.percentile(series, [25, 75], axis=0)
    robust_sd = (quartiles[1] - quartiles[0]) / 1.349
    centred = series - series.mean(axis=0)
    variance = (centred ** 2).sum(axis=0)
    ar1 = np.divide((centred[1:] * centred[:-1]).sum(axis=0), variance, out=np.zeros_like(variance),
                    where=variance > 0)
    expected = (np.sqrt(np.clip(2 * (1 - ar1), 0, None)) * robust_sd).mean()
    standardised = value / expected if expected > 0 else np.zeros_like(value)
    return np.concatenate([[np.nan], value]), np.concatenate([[np.nan], standardised])


def _acompcor(series, cosines):
    """Leading principal components of high-pass-filtered, variance-normalised series.

    As in nipype's CompCor, each voxel is filtered then scaled to unit variance. The
    cosines are orthonormal and orthogonal to the mean, so filtering is a projection;
    the components are the top eigenvectors of the small time-by-time Gram matrix (an
    SVD of the wide voxel matrix, or a full eigendecomposition of this rank-deficient
    one, took seconds per run on two busy cores).
    """
    residual = series - series.mean(axis=0)
    residual = residual - cosines @ (cosines.T @ residual)
    residual = residual / np.maximum(residual.std(axis=0), 1e-12)
    gram = residual @ residual.T
    count = min(N_COMPCOR, len(gram))
    eigenvalues, eigenvectors = eigh(gram, subset_by_index=[len(gram) - count, len(gram) - 1])
    eigenvalues, eigenvectors = np.clip(eigenvalues[::-1], 0, None), eigenvectors[:, ::-1]
    # Fix each component's arbitrary sign so outputs match across LAPACK builds.
    largest = np.abs(eigenvectors).argmax(axis=0)
    eigenvectors = eigenvectors * np.sign(eigenvectors[largest, np.arange(count)])
    return eigenvectors, np.sqrt(eigenvalues), eigenvalues / np.trace(gram)


def confounds(volumes, motion, brain_mask, visual_mask, tr):
    """The confounds table of one run and its JSON sidecar.

    Parameters
    ----------
    volumes : ndarray, shape (x, y, z, t)
        Motion-free volumes (what fMRIPrep would output).
    motion : ndarray, shape (t, 6)
        True head motion, as fMRIPrep's realignment would estimate it.
    brain_mask, visual_mask : ndarray of bool, shape (x, y, z)
    tr : float

    Returns
    -------
    table : pandas.DataFrame
        NaN where the value is n/a.
    sidecar : dict
    """
    csf, white_matter = tissue_masks(brain_mask, visual_mask)
    cosines = cosine_basis(volumes.shape[3], tr)
    components, singular, explained = _acompcor(volumes[csf | white_matter].T, cosines)
    dvars_values, std_dvars = dvars(volumes[brain_mask].T)
    columns = {
        **expansions("global_signal", volumes[brain_mask].mean(axis=0)),
        **expansions("csf", volumes[csf].mean(axis=0)),
        **expansions("white_matter", volumes[white_matter].mean(axis=0)),
        **{column: values for index, name in enumerate(MOTION_COLUMNS)
           for column, values in expansions(name, motion[:, index]).items()},
        "std_dvars": std_dvars,
        "dvars": dvars_values,
        "framewise_displacement": framewise_displacement(motion),
        **{f"a_comp_cor_{index:02d}": components[:, index] for index in range(components.shape[1])},
        **{f"cosine{index:02d}": cosines[:, index] for index in range(cosines.shape[1])},
    }
    sidecar = {
        "global_signal": {"Description": "Mean of the brain mask's voxels."},
        "csf": {"Description": "Mean of the simulated CSF mask (non-visual brain surface)."},
        "white_matter": {"Description": "Mean of the simulated white-matter mask."},
        "framewise_displacement": {
            "Description": "Framewise displacement (Power et al. 2012), rotations at 50 mm.",
            "Units": "mm"},
        "dvars": {"Description": "RMS over brain voxels of the backward differences (Power et al. 2012)."},
        "std_dvars": {"Description": "DVARS over its expectation for autocorrelated noise (Nichols 2017)."},
        **{name: {"Description": f"True simulated head motion ({name}).",
                  "Units": "mm" if name.startswith("trans") else "rad"} for name in MOTION_COLUMNS},
        **{f"a_comp_cor_{index:02d}": {
            "Method": "aCompCor", "Mask": "combined", "Retained": True,
            "SingularValue": float(singular[index]),
            "VarianceExplained": float(explained[index]),
            "CumulativeVarianceExplained": float(explained[:index + 1].sum())}
           for index in range(components.shape[1])},
        **{f"cosine{index:02d}": {"Description": "Discrete cosine basis, 128-s high-pass filter."}
           for index in range(cosines.shape[1])},
    }
    return pd.DataFrame(columns), sidecar
