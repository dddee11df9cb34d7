"""Quality measures of the preprocessing that the participant report shows: head motion, tSNR, and the
global signal and DVARS of the reference run."""
import numpy as np
import pandas as pd

from bidsrecon.preproc.motion import MOTION_COLUMNS, framewise_displacement

QC_MOTION_COLUMNS = (*MOTION_COLUMNS, "framewise_displacement")


def motion_table(confounds_path):
    """The six motion parameters and framewise displacement of one run.

    Parameters
    ----------
    confounds_path : str
        fMRIPrep's ``desc-confounds_timeseries.tsv`` or the motion TSV of our realignment: both
        name the parameters ``trans_x`` … ``rot_z`` (mm, radians).

    Returns
    -------
    pandas.DataFrame
        Columns ``QC_MOTION_COLUMNS``; framewise displacement (Power et al. 2012, 50-mm head)
        is recomputed from the parameters when the file has none, and its first row is 0
        (no previous volume to move from).
    """
    table = pd.read_csv(confounds_path, sep="\t", na_values="n/a")
    missing = [column for column in MOTION_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(f"{confounds_path}: no motion column(s) {', '.join(missing)}")
    motion = table[list(MOTION_COLUMNS)].fillna(0.0)
    if "framewise_displacement" in table.columns:
        displacement = table["framewise_displacement"].to_numpy(dtype=float)
    else:
        displacement = framewise_displacement(motion.to_numpy(dtype=float))
    return motion.assign(framewise_displacement=np.nan_to_num(displacement, nan=0.0))


def temporal_snr(series, n_discard=0):
    """Temporal signal-to-noise ratio of each voxel: mean over time ÷ standard deviation over time.

    A linear trend is removed before the standard deviation, as is usual for tSNR maps, so that
    slow scanner drift does not count as noise.

    Parameters
    ----------
    series : ndarray, shape (n_volumes, n_voxels)
    n_discard : int
        Volumes at the start left out (not yet at steady state).

    Returns
    -------
    ndarray, shape (n_voxels,), float32
        0 where the voxel is constant.
    """
    data = np.asarray(series, dtype=np.float64)[n_discard:]
    time = np.linspace(-1.0, 1.0, len(data))[:, None]
    mean = data.mean(axis=0)
    slope = (time * (data - mean)).sum(axis=0) / (time ** 2).sum()
    residual_sd = (data - mean - time * slope).std(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(residual_sd > 0, mean / residual_sd, 0.0)
    return snr.astype(np.float32)


def volume_quality(bold_file, mask_file):
    """Global signal and DVARS of each volume of one run, inside ``mask_file``.

    DVARS is Nipype's (``nipype.algorithms.confounds.compute_dvars``, Power et al. 2012; Nichols
    2017's standardisation), as fMRIPrep reports it; the first volume, with no previous one, has
    none (NaN).

    Returns
    -------
    pandas.DataFrame
        ``global_signal`` (mean inside the mask), ``dvars`` (in the intensity-normalised units,
        mode 1000) and ``std_dvars`` (standardised: about 1 without artefacts).
    """
    import nibabel as nib
    from nipype.algorithms.confounds import compute_dvars

    data = np.asanyarray(nib.load(bold_file).dataobj, dtype=np.float32)
    mask = np.asanyarray(nib.load(mask_file).dataobj) > 0
    std_dvars, dvars, _ = compute_dvars(str(bold_file), str(mask_file))
    return pd.DataFrame({"global_signal": data[mask].mean(axis=0),
                         "dvars": np.concatenate([[np.nan], dvars]),
                         "std_dvars": np.concatenate([[np.nan], std_dvars])})
