"""Nipype interface that builds the analysis mask: regions of interest within the brain mask."""
import logging

import nibabel as nib
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits

from bidsrecon.bids.roi import build_roi_mask

LOGGER = logging.getLogger("nipype.interface")


class _BuildMaskInputSpec(BaseInterfaceInputSpec):
    reference_file = File(exists=True, mandatory=True, desc="a bold series or mask on the bold grid (header only)")
    brain_mask_file = File(exists=True, mandatory=True, desc="brain mask on the bold grid")
    roi_files = traits.List(File(exists=True), value=[], usedefault=True,
                            desc="ROI masks joined by union, any grid (bidsrecon.bids.roi.roi_files); "
                            "empty: the brain mask alone")


class _BuildMaskOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc="uint8 mask on the bold grid: union of the ROIs within the brain mask")
    roi_voxels = traits.Int(desc="voxels of the ROI union on the bold grid")
    mask_voxels = traits.Int(desc="voxels of out_mask")
    resampled_files = traits.List(traits.Str, desc="ROI files that were resampled onto the bold grid")


class BuildMask(SimpleInterface):
    """The mask the samples are taken from: ROI union ∩ brain mask (`bidsrecon.bids.roi.build_roi_mask`).

    ROI masks on another grid are resampled (linear, thresholded at 0.5) with a warning; an
    ROI that is empty, before or after resampling or within the brain, stops the node.
    """

    input_spec = _BuildMaskInputSpec
    output_spec = _BuildMaskOutputSpec

    def _run_interface(self, runtime):
        mask, summary = build_roi_mask(self.inputs.reference_file, self.inputs.brain_mask_file,
                                       list(self.inputs.roi_files))
        # Nodes may run in worker processes whose warnings nobody reads; the log is kept.
        for path in summary["resampled"]:
            LOGGER.warning("ROI mask %s was not on the bold grid and was resampled onto it", path)
        self._results["out_mask"] = f"{runtime.cwd}/mask.nii.gz"
        nib.save(mask, self._results["out_mask"])
        self._results["roi_voxels"] = summary["roi_voxels"]
        self._results["mask_voxels"] = summary["mask_voxels"]
        self._results["resampled_files"] = summary["resampled"]
        return runtime
