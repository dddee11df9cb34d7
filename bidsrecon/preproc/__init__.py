"""Preprocessing of one run: motion and slice-timing correction, cleaning, samples per trial.

The numeric functions take plain arrays; `bidsrecon.preproc.inputs` reads and checks the files.
"""
from bidsrecon.preproc.lss import lss_betas, trial_regressors
from bidsrecon.preproc.motion import MOTION_COLUMNS, estimate_motion, framewise_displacement, resample_volume
from bidsrecon.preproc.samples import block_samples, block_weights
from bidsrecon.preproc.signal import (
    baseline_volumes,
    clean_run,
    normalise_run,
    nuisance_design,
    reduce_outliers,
    unusable_voxels,
)
from bidsrecon.preproc.slice_timing import slice_time_correct

__all__ = [
    "MOTION_COLUMNS", "baseline_volumes", "block_samples", "block_weights", "clean_run", "estimate_motion",
    "framewise_displacement", "lss_betas", "normalise_run", "nuisance_design", "reduce_outliers",
    "resample_volume", "slice_time_correct", "trial_regressors", "unusable_voxels",
]
