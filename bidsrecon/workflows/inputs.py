"""One workflow per input mode, each ending in the same ``outputnode``.

The mode is decided once, when the participant is planned (``ParticipantPlan.input_mode``):

- ``raw``: every run realigned here to one reference, the mean of the realigned first training
  run; the brain mask is computed from that mean (:func:`init_raw_inputs_wf`);
- ``fmriprep``: fMRIPrep's preprocessed bold, confounds and brain mask (:func:`init_fmriprep_inputs_wf`);
- ``saved_reference``: raw runs with a saved decoder (``--decoders-dir``): every run realigned to
  the volume the decoder's own runs were realigned to, so that a voxel of a later session is the
  voxel the decoder was trained on (:func:`init_saved_reference_wf`).

``outputnode`` fields: ``bold_files``, ``confounds_files`` and ``confound_columns`` (per run),
``mask_file`` (the voxel mask the samples are taken in: ROIs within the brain, or the saved
decoder's), ``reference_file`` (raw modes: the volume the runs were realigned to, kept with the
decoder), ``qc_bold`` and ``qc_mask`` (one run and a mask for the tSNR map of the report).
"""
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bidsrecon.interfaces.masks import BuildMask
from bidsrecon.interfaces.motion import MeanVolume, Realign
from bidsrecon.interfaces.samples import EpiMask
from bidsrecon.preproc.motion import MOTION_COLUMNS

OUTPUT_FIELDS = ["bold_files", "confounds_files", "confound_columns", "mask_file", "reference_file", "qc_bold",
                 "qc_mask"]


def init_inputs_wf(plan, config):
    """The inputs workflow of ``plan.input_mode``."""
    if plan.input_mode == "fmriprep":
        return init_fmriprep_inputs_wf(plan)
    if plan.input_mode == "saved_reference":
        return init_saved_reference_wf(plan, config)
    return init_raw_inputs_wf(plan, config)


def init_raw_inputs_wf(plan, config, name="raw_inputs_wf"):
    """Raw runs, realigned here; the voxel mask from the ROIs within the mean volume's brain mask.

    ::

        realign_reference -> mean_reference -> brain_mask -> build_mask -> outputnode.mask_file
                                   +--> realign (per run) -> outputnode.bold_files, confounds_files
    """
    runs, reference = plan.runs, plan.reference_run
    workflow = pe.Workflow(name=name)
    outputnode = _outputnode(confound_columns=[list(MOTION_COLUMNS)] * len(runs))
    realign_reference = pe.Node(
        Realign(bold_file=runs[reference].bold, tr=runs[reference].run.tr,
                slice_timing=list(runs[reference].slice_timing),
                slice_encoding_direction=runs[reference].slice_encoding_direction,
                slice_timing_enabled=config.slice_timing),
        name="realign_reference",
    )
    mean_reference = pe.Node(MeanVolume(), name="mean_reference")
    realign = _realign_runs(runs, config)
    brain_mask = pe.Node(EpiMask(), name="brain_mask")
    build_mask = pe.Node(BuildMask(roi_files=list(plan.roi_files)), name="build_mask")
    workflow.connect([
        (realign_reference, mean_reference, [("realigned_file", "in_file")]),
        (mean_reference, realign, [("out_file", "reference_file")]),
        (mean_reference, brain_mask, [("out_file", "bold_file")]),
        (brain_mask, build_mask, [("out_mask", "brain_mask_file"), ("out_mask", "reference_file")]),
        (realign, outputnode, [("realigned_file", "bold_files"), ("motion_file", "confounds_files")]),
        (build_mask, outputnode, [("out_mask", "mask_file")]),
        (mean_reference, outputnode, [("out_file", "reference_file")]),
        (realign_reference, outputnode, [("realigned_file", "qc_bold")]),
        (brain_mask, outputnode, [("out_mask", "qc_mask")]),
    ])  # fmt: skip
    return workflow


def init_fmriprep_inputs_wf(plan, name="fmriprep_inputs_wf"):
    """fMRIPrep's preprocessed runs; the voxel mask from the ROIs within fMRIPrep's brain mask of the
    first training run, or the saved decoder's mask. There is no reference volume."""
    runs, saved = plan.runs, plan.saved_decoder
    workflow = pe.Workflow(name=name)
    reference = runs[plan.reference_run]
    outputnode = _outputnode(
        bold_files=[inputs.bold for inputs in runs], confounds_files=[inputs.confounds for inputs in runs],
        confound_columns=[list(inputs.confound_columns) for inputs in runs], qc_bold=reference.bold,
        qc_mask=saved.mask_file if saved else reference.mask)
    if saved:
        outputnode.inputs.mask_file = saved.mask_file
        workflow.add_nodes([outputnode])
        return workflow
    build_mask = pe.Node(BuildMask(roi_files=list(plan.roi_files), brain_mask_file=reference.mask,
                                   reference_file=reference.mask), name="build_mask")
    workflow.connect(build_mask, "out_mask", outputnode, "mask_file")
    return workflow


def init_saved_reference_wf(plan, config, name="saved_reference_wf"):
    """Raw runs with a saved decoder: every run realigned to the saved reference volume; the saved
    decoder's voxel mask."""
    runs, saved = plan.runs, plan.saved_decoder
    workflow = pe.Workflow(name=name)
    outputnode = _outputnode(confound_columns=[list(MOTION_COLUMNS)] * len(runs), mask_file=saved.mask_file,
                             reference_file=saved.reference_file, qc_mask=saved.mask_file)
    realign = _realign_runs(runs, config)
    realign.inputs.reference_file = saved.reference_file
    workflow.connect([
        (realign, outputnode, [("realigned_file", "bold_files"), ("motion_file", "confounds_files"),
                               (("realigned_file", _first), "qc_bold")]),
    ])  # fmt: skip
    return workflow


def _outputnode(**values):
    node = pe.Node(niu.IdentityInterface(fields=OUTPUT_FIELDS, mandatory_inputs=False), name="outputnode")
    for field, value in values.items():
        setattr(node.inputs, field, value)
    return node


def _realign_runs(runs, config):
    """Motion correction (and slice timing) of every run; the reference volume is connected later."""
    realign = pe.MapNode(Realign(slice_timing_enabled=config.slice_timing),
                         iterfield=["bold_file", "tr", "slice_timing", "slice_encoding_direction"], name="realign")
    realign.inputs.bold_file = [inputs.bold for inputs in runs]
    realign.inputs.tr = [inputs.run.tr for inputs in runs]
    realign.inputs.slice_timing = [list(inputs.slice_timing) for inputs in runs]
    realign.inputs.slice_encoding_direction = [inputs.slice_encoding_direction for inputs in runs]
    return realign


def _first(files):
    # A connection function: Nipype runs it from its source text, so it imports nothing.
    return files[0]
