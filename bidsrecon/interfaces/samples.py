"""Nipype interfaces of the preprocessing: the brain mask and one run's samples."""
import warnings

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from bidsrecon.errors import EXIT_BAD_ARGUMENTS, BidsReconError
from bidsrecon.interfaces.threads import limited_threads
from bidsrecon.preproc import block_samples, clean_run
from bidsrecon.preproc.inputs import (
    load_bold,
    load_mask,
    masked_time_series,
    read_confounds,
    read_trial_timing,
)
from bidsrecon.preproc.lss import lss_betas, trial_regressors
from bidsrecon.preproc.motion import MOTION_COLUMNS
from bidsrecon.preproc.signal import baseline_volumes, normalise_run, nuisance_design, unusable_voxels


class _EpiMaskInputSpec(BaseInterfaceInputSpec):
    bold_file = File(exists=True, mandatory=True, desc="a BOLD run, or its mean volume")


class _EpiMaskOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc="brain mask on the BOLD grid")


class EpiMask(SimpleInterface):
    """A brain mask computed from the data (nilearn's ``compute_epi_mask`` on the mean volume).

    Voxels without data are left out even inside the brain, where nilearn's closing would fill
    them in: NaN or infinite ones, and those that are 0 throughout (`Realign` sets the voxels that
    were NaN in the raw run to 0).
    """

    input_spec = _EpiMaskInputSpec
    output_spec = _EpiMaskOutputSpec

    def _run_interface(self, runtime):
        from nilearn.image import new_img_like
        from nilearn.masking import compute_epi_mask

        mask = compute_epi_mask(self.inputs.bold_file)
        data = np.asanyarray(nib.load(self.inputs.bold_file).dataobj, dtype=np.float32)
        data = data if data.ndim == 4 else data[..., None]
        has_data = np.isfinite(data).all(axis=3) & (data != 0).any(axis=3)
        mask = new_img_like(mask, np.asanyarray(mask.dataobj).astype(bool) & has_data)
        self._results["out_mask"] = f"{runtime.cwd}/brain_mask.nii.gz"
        nib.save(mask, self._results["out_mask"])
        return runtime


class _RunSamplesInputSpec(BaseInterfaceInputSpec):
    bold_file = File(exists=True, mandatory=True, desc="a 4-D BOLD run")
    mask_file = File(exists=True, mandatory=True, desc="brain mask on the BOLD grid (shape and affine)")
    trials_file = File(exists=True, mandatory=True,
                       desc="TSV of the run's trials; its onset and duration columns (s) are used")
    tr = traits.Float(mandatory=True, desc="repetition time (s)")
    discard_seconds = traits.Float(mandatory=True, desc="seconds at the start left out of every estimate")
    delay_seconds = traits.Float(mandatory=True, desc="haemodynamic delay (s) of the block method")
    clip_sd = traits.Float(mandatory=True, desc="outliers clipped at this many SD")
    confounds_file = File(exists=True, desc="TSV of confounds, one row per volume (fMRIPrep's "
                                            "desc-confounds_timeseries.tsv, or Realign's motion_file)")
    confound_columns = traits.List(traits.Str, value=list(MOTION_COLUMNS), usedefault=True,
                                   desc="columns of confounds_file regressed out with the trend "
                                        "(names, globs already resolved); n/a counts as 0")
    method = traits.Enum("block", "lss", mandatory=True,
                         desc="block: average of each block's delayed volumes (the paper's); "
                              "lss: a least-squares-separate GLM beta per trial")
    normalise = traits.Enum("zscore", "rest", mandatory=True,
                            desc="zscore: each voxel z-scored over the run; rest: percent signal change "
                                 "from the mean of the baseline_file volumes (the paper's)")
    baseline_file = File(exists=True, desc="normalise rest: TSV of the run's rest events (onset, duration, s); "
                                           "the volumes inside them, after the discarded ones, are the baseline")


class _RunSamplesOutputSpec(TraitedSpec):
    out_samples = File(exists=True, desc="float32 .npy, one row per trial, one column per mask voxel")
    n_zeroed_voxels = traits.Int(desc="mask voxels that were NaN or constant in this run (or, normalise rest, had "
                                      "no positive rest level), set to 0")


class RunSamples(SimpleInterface):
    """One sample per trial of one run: mask, clean, then block averages or LSS betas.

    Cleaning: the first ``discard_seconds`` are left out, a constant, a linear trend and the
    chosen confounds are regressed out, then each voxel is

    - ``normalise="rest"``: expressed in percent signal change from its mean over the rest
      volumes of ``baseline_file`` and its outliers clipped at ``±clip_sd`` in 10 passes
      (`bidsrecon.preproc.signal.normalise_run`, the paper's);
    - ``normalise="zscore"``: z-scored over the run and clipped at ``±clip_sd``
      (`bidsrecon.preproc.signal.clean_run`).

    Then, per trial,

    - ``block``: the average of the volumes in ``[onset + delay, onset + duration + delay)``,
      volumes weighted by the fraction of that window they cover
      (`bidsrecon.preproc.samples.block_weights`);
    - ``lss``: the trial's beta in a GLM with the trial, all the other trials of the file
      together and the nuisance regressors, Glover HRF through nilearn's design tools
      (Mumford et al. 2012; `bidsrecon.preproc.lss`). ``delay_seconds`` is not used: the HRF
      models the delay. Events not listed in ``trials_file`` are not modelled.

    Voxels that are NaN or constant in a run (or, with ``rest``, whose rest level is not above
    their own fluctuation, see `normalise_run`) become 0 in its samples, with a warning, so that columns stay aligned across runs;
    the output never holds NaN.
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
        baseline = self._baseline(n_volumes, tr, n_discard) if self.inputs.normalise == "rest" else None
        data = masked_time_series(bold, mask)
        n_voxels = data.shape[1]
        with limited_threads(1):  # runs are processed in parallel, one per CPU
            if baseline is None:
                unusable = int(unusable_voxels(data, n_discard).sum())
                cleaned = clean_run(data, confounds, n_discard=n_discard, clip_sd=self.inputs.clip_sd)
            else:
                cleaned = normalise_run(data, baseline, confounds, n_discard=n_discard, clip_sd=self.inputs.clip_sd)
                # The zeroed voxels: NaN or constant ones, and those without a positive rest level.
                unusable = int((cleaned[n_discard:] == 0).all(axis=0).sum())
            del data
            if unusable:
                what = "NaN or constant" + (", or have no positive rest level," if baseline is not None else "")
                warnings.warn(f"{bold_path}: {unusable} of {n_voxels} mask voxels are {what} "
                              "in this run; their samples are set to 0", RuntimeWarning, stacklevel=2)
            try:
                samples = self._samples(cleaned, tr, onsets, durations, confounds, n_discard)
            except ValueError as error:  # a trial the run cannot cover
                raise BidsReconError(f"{self.inputs.trials_file} (run {bold_path}): {error}",
                                     EXIT_BAD_ARGUMENTS) from error
        self._results["out_samples"] = f"{runtime.cwd}/samples.npy"
        self._results["n_zeroed_voxels"] = unusable
        np.save(self._results["out_samples"], samples, allow_pickle=False)
        return runtime

    def _baseline(self, n_volumes, tr, n_discard):
        """The run's rest volumes, at least 2 (the plan has checked them; this guards direct use)."""
        if not isdefined(self.inputs.baseline_file):
            raise BidsReconError(f"{self.inputs.bold_file}: normalise 'rest' needs baseline_file, the run's rest "
                                 "events", EXIT_BAD_ARGUMENTS)
        onsets, durations = read_trial_timing(self.inputs.baseline_file)
        volumes = baseline_volumes(onsets, durations, n_volumes, tr, n_discard)
        if len(volumes) < 2:
            raise BidsReconError(
                f"{self.inputs.baseline_file} (run {self.inputs.bold_file}): the rest holds {len(volumes)} whole "
                f"volume(s) after the first {self.inputs.discard_seconds:g} s are discarded; --normalise rest needs "
                "at least 2: lower --discard-seconds, or pass --normalise zscore", EXIT_BAD_ARGUMENTS)
        return volumes

    def _samples(self, cleaned, tr, onsets, durations, confounds, n_discard):
        if self.inputs.method == "block":
            return block_samples(cleaned, tr, onsets, durations, self.inputs.delay_seconds)
        kept = slice(n_discard, None)
        regressors = trial_regressors(cleaned.shape[0], tr, onsets, durations)
        return lss_betas(cleaned[kept], regressors[kept], nuisance_design(cleaned.shape[0], confounds)[kept])
