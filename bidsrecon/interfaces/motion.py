"""Nipype interface of head-motion correction (with optional slice-timing correction) of a raw run."""
import nibabel as nib
import numpy as np
import pandas as pd
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from bidsrecon.errors import EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.interfaces.threads import limited_threads
from bidsrecon.preproc.inputs import check_slice_timing, load_bold
from bidsrecon.preproc.motion import (
    MOTION_COLUMNS,
    estimate_motion,
    framewise_displacement,
    reference_volume_problem,
    resample_volume,
)
from bidsrecon.preproc.motion_checks import contaminated_voxels, reference_error, zero_nonfinite_voxels
from bidsrecon.preproc.slice_timing import slice_time_correct

_AXES = {"i": 0, "j": 1, "k": 2}


class _RealignInputSpec(BaseInterfaceInputSpec):
    bold_file = File(exists=True, mandatory=True, desc="a raw 4-D BOLD run")
    tr = traits.Float(mandatory=True, desc="repetition time (s), the sidecar's RepetitionTime")
    slice_timing = traits.List(traits.Float, desc="the sidecar's SliceTiming (s), one time per slice")
    slice_timing_enabled = traits.Bool(False, usedefault=True,
                                       desc="correct slice timing (--slice-timing); needs slice_timing")
    slice_encoding_direction = traits.Enum("k", "k-", "i", "i-", "j", "j-", usedefault=True,
                                           desc="the sidecar's SliceEncodingDirection (BIDS; default k)")


    reference_file = File(exists=True, desc="volume (3-D, or 4-D: its mean) on the run's grid to register "
                          "every volume to; default the run's middle volume")


class _RealignOutputSpec(TraitedSpec):
    realigned_file = File(exists=True, desc="4-D NIfTI, every volume resampled to the reference position")
    motion_file = File(exists=True, desc="TSV, one row per volume: trans_x trans_y trans_z (mm), "
                                         "rot_x rot_y rot_z (rad), framewise_displacement (mm, n/a first)")


class Realign(SimpleInterface):
    """Rigid-body head-motion correction of a raw run, and optionally slice-timing correction.

    Motion is estimated on the uncorrected volumes against the middle volume
    (`bidsrecon.preproc.motion.estimate_motion`: Gauss–Newton on smoothed images, 6 parameters).
    With ``slice_timing_enabled``, each slice's time series is then shifted to the middle of the
    acquisition (`bidsrecon.preproc.slice_timing`), and finally every volume is resampled
    trilinearly to the reference position: fMRIPrep's order, which estimates motion before slice
    timing changes the images. The parameters have fMRIPrep's confounds column names and units;
    their frame and signs are described in `bidsrecon.preproc.motion`.

    Hostile input: a reference volume that motion cannot be measured against (all zero, all NaN,
    constant: `bidsrecon.preproc.motion.reference_volume_problem`) stops the node with an error
    naming the run. Voxels that are NaN or infinite in any volume are set to 0 for the
    realignment (one warning with their count), and the realigned voxels that read them are 0 in
    every volume: constant, so that the brain mask and the samples leave them out. A run with no
    voxel finite throughout is refused.
    """

    input_spec = _RealignInputSpec
    output_spec = _RealignOutputSpec

    def _run_interface(self, runtime):
        bold_path = self.inputs.bold_file
        bold = load_bold(bold_path)
        slice_times, slice_axis = self._slice_times(bold)
        zooms = bold.header.get_zooms()[:3]
        volumes = np.asanyarray(bold.dataobj, dtype=np.float32)
        nonfinite = zero_nonfinite_voxels(volumes, bold_path)  # refuses a run with nothing finite
        with limited_threads(1):  # runs are processed in parallel, one per CPU
            reference = self._reference_volume(volumes, zooms)
            motion = estimate_motion(volumes, zooms, reference_volume=reference)
            if slice_times is not None:
                volumes = slice_time_correct(volumes, slice_times, self.inputs.tr, slice_axis)
            for index in range(volumes.shape[3]):  # in place: a full-size run is 670 MB in float32
                volumes[..., index] = resample_volume(volumes[..., index], motion[index], zooms)
            if nonfinite.any():
                volumes[contaminated_voxels(nonfinite, motion, zooms)] = 0
        self._results["realigned_file"] = f"{runtime.cwd}/realigned_bold.nii.gz"
        self._results["motion_file"] = f"{runtime.cwd}/motion.tsv"
        _save_like(volumes, bold, self._results["realigned_file"])
        table = pd.DataFrame(motion, columns=list(MOTION_COLUMNS))
        table["framewise_displacement"] = framewise_displacement(motion)
        table.to_csv(self._results["motion_file"], sep="\t", index=False, na_rep="n/a",
                     float_format="%.6g", lineterminator="\n")
        return runtime

    def _reference_volume(self, volumes, zooms):
        """The volume to register to: reference_file's (checked), or None for the run's middle volume (checked)."""
        shape, bold_path = volumes.shape[:3], self.inputs.bold_file
        if not isdefined(self.inputs.reference_file):
            index = volumes.shape[3] // 2
            problem = reference_volume_problem(volumes[..., index], zooms)
            if problem:
                raise reference_error(bold_path, f"its middle volume ({index + 1} of {volumes.shape[3]})", problem)
            return None
        reference_path = self.inputs.reference_file
        reference = np.asanyarray(nib.load(reference_path).dataobj, dtype=np.float32)
        what = "its mean over time" if reference.ndim == 4 else "the volume"
        reference = reference.mean(axis=3) if reference.ndim == 4 else reference
        if reference.shape != shape:
            raise BidsReconError(f"{bold_path}: its grid {shape} differs from the reference run's "
                                 f"{reference.shape}; raw runs must share one grid (or use fMRIPrep input)")
        problem = reference_volume_problem(reference, zooms)
        if problem:
            raise reference_error(bold_path, what, problem, reference=reference_path)
        return np.where(np.isfinite(reference), reference, np.float32(0))

    def _slice_times(self, bold):
        """Slice times in slice-index order and the slice axis, or (None, None) when not asked."""
        if not self.inputs.slice_timing_enabled:
            return None, None
        if not isdefined(self.inputs.slice_timing) or not self.inputs.slice_timing:
            raise BidsReconError(f"{self.inputs.bold_file}: slice-timing correction was asked for but "
                                 "the run has no SliceTiming in its sidecar", EXIT_INPUT_MISSING)
        direction = self.inputs.slice_encoding_direction
        axis = _AXES[direction[0]]
        times = check_slice_timing(self.inputs.slice_timing, bold.shape[axis], self.inputs.tr,
                                   self.inputs.bold_file)
        # BIDS: with a "-" direction the first time belongs to the last slice index.
        return (times[::-1] if direction.endswith("-") else times), axis


def _save_like(volumes, source, path):
    """Save float volumes with the source's header and stored data type (nibabel scales integers)."""
    header = source.header.copy()
    header.set_data_dtype(source.get_data_dtype())
    nib.save(type(source)(volumes, source.affine, header), path)


class _MeanVolumeInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="a 4-D series")


class _MeanVolumeOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="3-D mean over time")


class MeanVolume(SimpleInterface):
    """The mean volume of a series (the common reference of every run's realignment)."""

    input_spec = _MeanVolumeInputSpec
    output_spec = _MeanVolumeOutputSpec

    def _run_interface(self, runtime):
        series = nib.load(self.inputs.in_file)
        mean = np.asanyarray(series.dataobj, dtype=np.float32).mean(axis=3)
        mean[~np.isfinite(mean)] = 0  # the reference of every run's realignment: NaN would spread
        self._results["out_file"] = f"{runtime.cwd}/mean.nii.gz"
        nib.save(nib.Nifti1Image(mean, series.affine), self._results["out_file"])
        return runtime
