"""Nipype interface of the preprocessing quality measures that the participant report shows."""
from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits

from bidsrecon.preproc.inputs import load_bold, load_mask, masked_time_series
from bidsrecon.preproc.qc import temporal_snr, volume_quality
from bidsrecon.reports.plots import carpet


class _TemporalSnrInputSpec(BaseInterfaceInputSpec):
    bold_file = File(exists=True, mandatory=True, desc="a 4-D BOLD run (realigned or fMRIPrep's)")
    mask_file = File(exists=True, mandatory=True, desc="brain mask on the run's grid")
    tr = traits.Float(mandatory=True, desc="repetition time (s)")
    discard_seconds = traits.Float(mandatory=True, desc="seconds at the start left out")


class _TemporalSnrOutputSpec(TraitedSpec):
    out_tsnr = File(exists=True, desc="3-D NIfTI: tSNR inside the mask, 0 outside")
    out_quality = File(exists=True, desc="TSV: global signal and DVARS of each volume")
    out_carpet = File(exists=True, desc="PNG: global signal and DVARS above the run's carpet plot")


class TemporalSnr(SimpleInterface):
    """A tSNR map of one run (`bidsrecon.preproc.qc.temporal_snr`), its global signal and DVARS
    (`bidsrecon.preproc.qc.volume_quality`) and a carpet plot, for the participant report."""

    input_spec = _TemporalSnrInputSpec
    output_spec = _TemporalSnrOutputSpec

    def _run_interface(self, runtime):
        bold = load_bold(self.inputs.bold_file)
        mask = load_mask(self.inputs.mask_file, bold, self.inputs.bold_file)
        n_discard = min(int(round(self.inputs.discard_seconds / self.inputs.tr)), bold.shape[3] - 2)
        volume = np.zeros(mask.shape, dtype=np.float32)
        volume[mask] = temporal_snr(masked_time_series(bold, mask), n_discard)
        self._results["out_tsnr"] = f"{runtime.cwd}/tsnr.nii.gz"
        nib.save(nib.Nifti1Image(volume, bold.affine), self._results["out_tsnr"])
        quality = volume_quality(self.inputs.bold_file, self.inputs.mask_file)
        self._results["out_quality"] = f"{runtime.cwd}/quality.tsv"
        quality.to_csv(self._results["out_quality"], sep="\t", index=False, na_rep="n/a", float_format="%.6g")
        self._results["out_carpet"] = f"{runtime.cwd}/carpet.png"
        Path(self._results["out_carpet"]).write_bytes(
            carpet(self.inputs.bold_file, self.inputs.mask_file, self.inputs.tr, quality))
        return runtime
