"""The participant workflow: from BIDS runs to reconstructed images and their scores.

::

    inputs_wf (one per input mode, bidsrecon.workflows.inputs) -> decode_wf -> recon_wf -> outputs_wf
    noise_ceiling (datasets made by bidsrecon's simulator only) ---------------------------> outputs_wf

Every node is a thin file adapter around one stage function of the packages (``interfaces``).
"""
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bidsrecon.bids.derivatives import bdata_mask_name, decoder_mask_name, staging_dir
from bidsrecon.bids.roi import parse_rois, roi_names
from bidsrecon.interfaces.decoding import DecodeFeatures
from bidsrecon.interfaces.derivatives import WriteDerivatives
from bidsrecon.interfaces.qc import TemporalSnr
from bidsrecon.interfaces.reconstruction import Evaluate, NoiseCeiling, Reconstruct
from bidsrecon.interfaces.samples import RunSamples
from bidsrecon.recon.correction import correction_statistics
from bidsrecon.workflows.inputs import init_inputs_wf

DECODE_FIELDS = ["features_file", "items_file", "decoder_file", "decoder_arrays", "accuracy_file", "device"]
RECON_FIELDS = ["images_file", "settings_file", "snapshots_file", "truths_file", "item_metrics", "set_metrics",
                "set_columns_file", "reconstruct_device", "evaluate_device"]


def init_participant_wf(plan, config, name=None):
    """Decode and reconstruct one participant's test items.

    Parameters
    ----------
    plan : `bidsrecon.participant_plan.ParticipantPlan`
        The participant's runs (`RunInputs`, training first), per-run trials tables, the stimulus
        table, the ROI files, and the input mode.
    config : `bidsrecon.config.Config`
    name : str, optional
        Workflow name (default ``sub_<subject>_wf``).

    Outputs
    -------
    The ``outputs_wf.write_derivatives`` node writes into the output's staging folder; its
    ``out_files`` lists them.
    """
    workflow = pe.Workflow(name=name or f"sub_{plan.subject}_wf")
    decode_wf = init_decode_wf(plan, config)
    recon_wf = init_recon_wf(plan, config)
    outputs_wf = init_outputs_wf(plan, config)
    if plan.input_mode != "bdata":  # the lab's files are samples already: no runs to read
        inputs_wf = init_inputs_wf(plan, config)
        workflow.connect([
            (inputs_wf, decode_wf, [(f"outputnode.{field}", f"inputnode.{field}")
                                    for field in ("bold_files", "confounds_files", "confound_columns", "mask_file")]),
            (inputs_wf, outputs_wf, [(f"outputnode.{field}", f"inputnode.{field}")
                                     for field in ("confounds_files", "mask_file", "reference_file", "qc_bold",
                                                   "qc_mask")]),
        ])  # fmt: skip
    workflow.connect([
        (decode_wf, recon_wf, [("outputnode.features_file", "inputnode.features_file"),
                               ("outputnode.items_file", "inputnode.items_file")]),
        (decode_wf, outputs_wf, [(f"outputnode.{field}", f"inputnode.{field}") for field in DECODE_FIELDS]),
        (recon_wf, outputs_wf, [(f"outputnode.{field}", f"inputnode.{field}") for field in RECON_FIELDS]),
    ])  # fmt: skip
    if plan.simulated:
        noise_ceiling = pe.Node(NoiseCeiling(bids_dir=str(config.bids_dir), subject=plan.subject,
                                             spec=str(config.spec)), name="noise_ceiling")
        workflow.connect(noise_ceiling, "out_ceiling", outputs_wf, "write_derivatives.ceiling_file")
    return workflow


def init_decode_wf(plan, config, name="decode_wf"):
    """Samples of every run (``run_samples``), then the decoding stage (``decode``); with
    ``--bdata-dir`` the samples the participant's plan wrote go to ``decode`` directly.

    With a saved decoder (``plan.saved_decoder``) nothing is fitted: ``decode`` applies it.
    """
    workflow = pe.Workflow(name=name)
    outputnode = pe.Node(niu.IdentityInterface(fields=DECODE_FIELDS), name="outputnode")
    decode = _decode_node(plan, config)
    workflow.connect([
        (decode, outputnode, [("out_features", "features_file"), ("out_items", "items_file"),
                              ("out_decoder", "decoder_file"), ("out_decoder_arrays", "decoder_arrays"),
                              ("out_accuracy", "accuracy_file"), ("out_device", "device")]),
    ])  # fmt: skip
    if plan.input_mode == "bdata":  # samples written when the participant was planned
        decode.inputs.samples_files = list(plan.samples_files)
        decode.inputs.mask_file = plan.mask_file
        return workflow
    inputnode = pe.Node(niu.IdentityInterface(fields=["bold_files", "confounds_files", "confound_columns",
                                                      "mask_file"]), name="inputnode")
    rest = plan.normalise == "rest"
    run_samples = pe.MapNode(
        RunSamples(discard_seconds=config.discard_seconds, delay_seconds=config.delay_seconds,
                   clip_sd=config.clip_sd, method=config.samples, normalise=plan.normalise),
        iterfield=["bold_file", "trials_file", "tr", "confounds_file", "confound_columns",
                   *(["baseline_file"] if rest else [])],
        name="run_samples",
    )
    run_samples.inputs.trials_file = list(plan.trials_files)
    if rest:
        run_samples.inputs.baseline_file = list(plan.baseline_files)
    run_samples.inputs.tr = [inputs.run.tr for inputs in plan.runs]
    workflow.connect([
        (inputnode, run_samples, [("bold_files", "bold_file"), ("confounds_files", "confounds_file"),
                                  ("confound_columns", "confound_columns"), ("mask_file", "mask_file")]),
        (inputnode, decode, [("mask_file", "mask_file")]),
        (run_samples, decode, [("out_samples", "samples_files")]),
    ])  # fmt: skip
    return workflow


def _decode_node(plan, config):
    """The decoding stage's node (``decode``): fits a decoder, or applies the saved one."""
    decode = pe.Node(
        DecodeFeatures(trials_files=list(plan.trials_files), stimuli_file=plan.stimuli_file,
                       layers=list(config.layers), cv_units=config.cv_units, n_voxels=config.n_voxels or 0,
                       penalty_image_size=config.penalty_image_size or 0,
                       pixel_decoder=config.pixel_decoder,
                       decoder_name=f"sub-{plan.subject}_decoder", memory_gb=config.mem_gb or 0.0,
                       method=config.decoder, device=config.device, features_dir=str(config.features_dir or ""),
                       feature_std="feature_std" in correction_statistics(config.feature_correction),
                       feature_cache="" if config.feature_cache == "off" else str(config.work_dir / "feature_cache"),
                       feature_cache_dtype="float16" if config.feature_cache == "float16" else "float32",
                       **_encoder_inputs(config)),
        name="decode",
        n_procs=config.omp_nthreads,
    )
    if plan.saved_decoder:
        decode.inputs.decoder_file = plan.saved_decoder.sidecar_file
    if plan.lab_decoders_file:  # --bdata-dir with the lab's decoder tree
        decode.inputs.lab_decoders_file = plan.lab_decoders_file
    return decode


def init_recon_wf(plan, config, name="recon_wf"):
    """The reconstruction (``reconstruct``) and its evaluation (``evaluate``)."""
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["features_file", "items_file"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=RECON_FIELDS), name="outputnode")
    reconstruct = pe.Node(
        Reconstruct(iterations=config.iterations, optimiser=config.optimiser,
                    generator_weights=str(config.generator_weights or ""),
                    generator_latent_max=str(config.generator_latent_max or ""), jitter=config.jitter,
                    device=config.device, mixed_precision=config.mixed_precision, batch_size=config.batch_size,
                    snapshot_every=config.snapshot_every, pixel_weight=config.pixel_weight, start=config.start,
                    tv_weight=config.tv_weight, coarse_factor=config.coarse_factor, clamp=config.clamp,
                    correction=config.feature_correction, **_encoder_inputs(config)),
        name="reconstruct", n_procs=config.omp_nthreads)
    evaluate = pe.Node(Evaluate(stimuli_file=plan.stimuli_file, seed=config.seed, device=config.device,
                                n_threads=config.omp_nthreads),
                       name="evaluate", n_procs=config.omp_nthreads)
    workflow.connect([
        (inputnode, reconstruct, [("features_file", "features_file")]),
        (inputnode, evaluate, [("items_file", "items_file")]),
        (reconstruct, evaluate, [("out_images", "images_file")]),
        (reconstruct, outputnode, [("out_images", "images_file"), ("out_settings", "settings_file"),
                                   ("out_snapshots", "snapshots_file"), ("out_device", "reconstruct_device")]),
        (evaluate, outputnode, [("out_truths", "truths_file"), ("out_items", "item_metrics"),
                                ("out_sets", "set_metrics"), ("out_columns", "set_columns_file"),
                                ("out_device", "evaluate_device")]),
    ])  # fmt: skip
    return workflow


def init_outputs_wf(plan, config, name="outputs_wf"):
    """The tSNR map of the report (``tsnr``) and the workflow's only sink (``write_derivatives``)."""
    workflow = pe.Workflow(name=name)
    fields = ["confounds_files", "mask_file", "reference_file", "qc_bold", "qc_mask", *DECODE_FIELDS,
              *RECON_FIELDS]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields, mandatory_inputs=False), name="inputnode")
    # Always rerun the sink: it writes into the staging folder, which the participant level moves into
    # the output dataset at the end (bidsrecon.bids.derivatives.publish_participant).
    write_derivatives = pe.Node(
        WriteDerivatives(output_dir=str(staging_dir(config.output_dir)), subject=plan.subject,
                         trials_files=list(plan.trials_files), seed=config.seed,
                         save_decoded_features=config.save_decoded_features or "",
                         # The lab's ROI_VC is VC, as --roi names it.
                         rois=([config.bdata_roi.removeprefix("ROI_")] if plan.input_mode == "bdata"
                               else roi_names(parse_rois(config.rois))),
                         copy_decoder=plan.saved_decoder is not None,
                         mask_source=plan.sources[plan.reference_run]),
        name="write_derivatives",
        overwrite=True,
    )
    if plan.input_mode == "bdata":  # no run was read here: no motion, no tSNR, the mask in the files' space
        write_derivatives.inputs.mask_file = plan.mask_file
        write_derivatives.inputs.mask_name = bdata_mask_name(plan.subject, plan.bdata_task)
    else:
        reference = plan.runs[plan.reference_run]
        write_derivatives.inputs.run_labels = [inputs.run.label for inputs in plan.runs]
        write_derivatives.inputs.mask_name = decoder_mask_name(plan.subject, reference.run.bold, reference.mask)
        tsnr = pe.Node(TemporalSnr(tr=reference.run.tr, discard_seconds=config.discard_seconds), name="tsnr")
        workflow.connect([
            (inputnode, tsnr, [("qc_bold", "bold_file"), ("qc_mask", "mask_file")]),
            (tsnr, write_derivatives, [("out_tsnr", "tsnr_file"), ("out_quality", "quality_file"),
                                       ("out_carpet", "carpet_file")]),
            (inputnode, write_derivatives, [("confounds_files", "confounds_files"), ("mask_file", "mask_file"),
                                            ("reference_file", "reference_file")]),
        ])  # fmt: skip
    workflow.connect([
        (inputnode, write_derivatives, [
            ("features_file", "features_file"), ("items_file", "items_file"), ("decoder_file", "decoder_file"),
            ("decoder_arrays", "decoder_arrays"), ("accuracy_file", "accuracy_file"), ("images_file", "images_file"),
            ("settings_file", "recon_settings_file"), ("snapshots_file", "snapshots_file"),
            ("truths_file", "truths_file"), ("item_metrics", "items_metrics"), ("set_metrics", "set_metrics"),
            ("set_columns_file", "set_columns_file"), ("device", "decode_device"),
            ("reconstruct_device", "reconstruct_device"), ("evaluate_device", "evaluate_device")]),
    ])  # fmt: skip
    return workflow


def _encoder_inputs(config):
    """The inputs every node that runs the encoder shares."""
    return {"encoder": config.encoder, "encoder_weights": str(config.encoder_weights or ""),
            "image_size": config.image_size, "seed": config.seed, "n_threads": config.omp_nthreads}

