"""Nipype interfaces of the preprocessing: the brain mask and one run's block samples."""
import nibabel as nib
import numpy as np
import pandas as pd
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits

from bidsrecon.interfaces.threads import limited_threads
from bidsrecon.preproc import block_samples, clean_run


class _EpiMaskInputSpec(BaseInterfaceInputSpec):
    bold_file = File(exists=True, mandatory=True, desc="a 4-D BOLD run")


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
    mask_file = File(exists=True, mandatory=True, desc="brain mask on the BOLD grid")
    trials_file = File(exists=True, mandatory=True, desc="TSV of the run's trials: onset, duration, stimulus")
    tr = traits.Float(mandatory=True, desc="repetition time (s)")
    discard_seconds = traits.Float(8.0, usedefault=True, desc="seconds at the start left out of every estimate")
    delay_seconds = traits.Float(4.0, usedefault=True, desc="haemodynamic delay (s)")
    clip_sd = traits.Float(3.0, usedefault=True, desc="outliers clipped at this many SD")


class _RunSamplesOutputSpec(TraitedSpec):
    out_samples = File(exists=True, desc="float32 .npy, one row per trial, one column per mask voxel")


class RunSamples(SimpleInterface):
    """Mask, clean (trend out, z-score, clip) and block-average one run (`bidsrecon.preproc`)."""

    input_spec = _RunSamplesInputSpec
    output_spec = _RunSamplesOutputSpec

    def _run_interface(self, runtime):
        mask = np.asanyarray(nib.load(self.inputs.mask_file).dataobj) > 0
        bold = nib.load(self.inputs.bold_file)
        if bold.shape[:3] != mask.shape:
            raise ValueError(f"{self.inputs.bold_file}: grid {bold.shape[:3]} differs from the mask's {mask.shape}")
        data = np.asanyarray(bold.dataobj, dtype=np.float32)[mask].T  # (n_volumes, n_voxels)
        n_discard = int(round(self.inputs.discard_seconds / self.inputs.tr))
        with limited_threads(1):  # runs are processed in parallel, one per CPU
            cleaned = clean_run(data, n_discard=n_discard, clip_sd=self.inputs.clip_sd)
        trials = pd.read_csv(self.inputs.trials_file, sep="\t")
        samples = block_samples(cleaned, self.inputs.tr, trials["onset"], trials["duration"], self.inputs.delay_seconds)
        self._results["out_samples"] = f"{runtime.cwd}/samples.npy"
        np.save(self._results["out_samples"], samples, allow_pickle=False)
        return runtime
