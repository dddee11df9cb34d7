"""Nipype interfaces of the preprocessing: the brain mask and one run's samples."""
import warnings

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, isdefined, traits,
)

from bidsrecon.errors import EXIT_BAD_ARGUMENTS, BidsReconError
from bidsrecon.interfaces.threads import limited_threads
from bidsrecon.preproc import block_samples, clean_run
from bidsrecon.preproc.inputs import (
    load_bold, load_mask, masked_time_series, read_confounds, read_trial_timing,
)
from bidsrecon.preproc.lss import lss_betas, trial_regressors
from bidsrecon.preproc.motion import MOTION_COLUMNS
from bidsrecon.preproc.signal import nuisance_design, unusable_voxels


class _EpiMaskInputSpec(BaseInterfaceInputSpec):
    bold_file = File(exists=True, mandatory=True, desc="a BOLD run, or its mean volume")


class _EpiMaskOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc="brain mask on the BOLD grid")


class EpiMask(SimpleInterface):
    """A brain mask computed from the data (nilearn's ``compute_epi_mask`` on the mean volume)."""

    input_spec = _EpiMaskInputSpec
    output_spec = _EpiMaskOutputSpec

    def _run_interface(self, runtime):
        from nilearn.masking import compute_epi_mask

        mask = compute_epi_mask(self.inputs.bold_file)
        self._results["out_mask"] = f"{runtime.cwd}/brain_mask.nii.gz"
        nib.save(mask, self._results["out_mask"])
        return runtime


class _RunSamplesInputSpec(BaseInterfaceInputSpec):
    bold_file = File(exists=True, mandatory=True, desc="a 4-D BOLD run")
    mask_file = File(exists=True, mandatory=True, desc="brain mask on the BOLD grid (shape and affine)")
    trials_file = File(exists=True, mandatory=True,
                       desc="TSV of the run's trials; its onset and duration columns (s) are used")
    tr = traits.Float(mandatory=True, desc="repetition time (s)")
    discard_seconds = traits.Float(8.0, usedefault=True, desc="seconds at the start left out of every estimate")
    delay_seconds = traits.Float(4.0, usedefault=True, desc="haemodynamic delay (s) of the block method")
    clip_sd = traits.Float(3.0, usedefault=True, desc="outliers clipped at this many SD")
    confounds_file = File(exists=True, desc="TSV of confounds, one row per volume (fMRIPrep's "
                                            "desc-confounds_timeseries.tsv, or Realign's motion_file)")
    confound_columns = traits.List(traits.Str, value=list(MOTION_COLUMNS), usedefault=True,
                                   desc="columns of confounds_file regressed out with the trend "
                                        "(names, globs already resolved); n/a counts as 0")
    method = traits.Enum("block", "lss", usedefault=True,
                         desc="block: average of each block's delayed volumes (the paper's); "
                              "lss: a least-squares-separate GLM beta per trial")


class _RunSamplesOutputSpec(TraitedSpec):
    out_samples = File(exists=True, desc="float32 .npy, one row per trial, one column per mask voxel")
    n_zeroed_voxels = traits.Int(desc="mask voxels that were NaN or constant in this run, set to 0")


class RunSamples(SimpleInterface):
    """One sample per trial of one run: mask, clean, then block averages or LSS betas.

    Cleaning (`bidsrecon.preproc.signal.clean_run`): the first ``discard_seconds`` are left out,
    a constant, a linear trend and the chosen confounds are regressed out, each voxel is
    z-scored and clipped at ``±clip_sd``. Then, per trial,

    - ``block``: the average of the volumes in ``[onset + delay, onset + duration + delay)``,
      volumes weighted by the fraction of that window they cover
      (`bidsrecon.preproc.samples.block_weights`);
    - ``lss``: the trial's beta in a GLM with the trial, all the other trials of the file
      together and the nuisance regressors, Glover HRF through nilearn's design tools
      (Mumford et al. 2012; `bidsrecon.preproc.lss`). ``delay_seconds`` is not used: the HRF
      models the delay. Events not listed in ``trials_file`` are not modelled.

    Voxels that are NaN or constant in a run become 0 in its samples, with a warning, so that
    columns stay aligned across runs; the output never holds NaN.
    """

    input_spec = _RunSamplesInputSpec
    output_spec = _RunSamplesOutputSpec

    def _run_interface(self, runtime):
        bold_path = self.inputs.bold_file
        bold = load_bold(bold_path)
        mask = load_mask(self.inputs.mask_file, bold, bold_path)
        onsets, durations = read_trial_timing(self.inputs.trials_file)
        n_volumes, tr = bold.shape[3], self.inputs.tr
        confounds = (read_confounds(self.inputs.confounds_file, self.inputs.confound_columns, n_volumes)
                     if isdefined(self.inputs.confounds_file) else None)
        n_discard = int(round(self.inputs.discard_seconds / tr))
        if not 0 <= n_discard < n_volumes - 2:
            raise BidsReconError(f"{bold_path}: discarding {self.inputs.discard_seconds:g} s "
                                 f"({n_discard} volumes) leaves too little of its {n_volumes} volumes",
                                 EXIT_BAD_ARGUMENTS)
        data = masked_time_series(bold, mask)
        unusable = int(unusable_voxels(data, n_discard).sum())
        if unusable:
            warnings.warn(f"{bold_path}: {unusable} of {data.shape[1]} mask voxels are NaN or constant "
                          "in this run; their samples are set to 0", RuntimeWarning, stacklevel=2)
        with limited_threads(1):  # runs are processed in parallel, one per CPU
            cleaned = clean_run(data, confounds, n_discard=n_discard, clip_sd=self.inputs.clip_sd)
            del data
            try:
                samples = self._samples(cleaned, tr, onsets, durations, confounds, n_discard)
            except ValueError as error:  # a trial the run cannot cover
                raise BidsReconError(f"{self.inputs.trials_file} (run {bold_path}): {error}",
                                     EXIT_BAD_ARGUMENTS) from error
        self._results["out_samples"] = f"{runtime.cwd}/samples.npy"
        self._results["n_zeroed_voxels"] = unusable
        np.save(self._results["out_samples"], samples, allow_pickle=False)
        return runtime

    def _samples(self, cleaned, tr, onsets, durations, confounds, n_discard):
        if self.inputs.method == "block":
            return block_samples(cleaned, tr, onsets, durations, self.inputs.delay_seconds)
        kept = slice(n_discard, None)
        regressors = trial_regressors(cleaned.shape[0], tr, onsets, durations)
        return lss_betas(cleaned[kept], regressors[kept], nuisance_design(cleaned.shape[0], confounds)[kept])
