"""The participant workflow: from BIDS runs to reconstructed images and their scores."""
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bidsrecon.bids.derivatives import staging_dir
from bidsrecon.interfaces.decoding import DecodeFeatures
from bidsrecon.interfaces.derivatives import WriteDerivatives
from bidsrecon.interfaces.masks import BuildMask
from bidsrecon.interfaces.motion import MeanVolume, Realign
from bidsrecon.interfaces.qc import TemporalSnr
from bidsrecon.interfaces.reconstruction import Evaluate, Reconstruct
from bidsrecon.interfaces.samples import EpiMask, RunSamples
from bidsrecon.preproc.motion import MOTION_COLUMNS
from bidsrecon.recon.correction import correction_statistics
from bidsrecon.spec import TRAINING


def init_participant_wf(plan, config, name=None):
    """Decode and reconstruct one participant's test items.

    Workflow graph (raw input)::

        realign_reference -> mean_reference -> brain_mask -> build_mask ----+
                                  +--> realign (per run) --------------------+-> run_samples (per run)
        run_samples -> decode -> reconstruct -> evaluate -> write_derivatives
        realign_reference, brain_mask -> tsnr -> write_derivatives   (quality, for the report)

    Every raw run is registered to one reference, the mean of the realigned first training run, so
    that runs of different sessions share voxel positions; its brain mask is computed from it.

    With fMRIPrep input there is no ``realign``: the preprocessed bold and its confounds feed
    ``run_samples`` and fMRIPrep's brain mask of the first training run feeds ``build_mask``.

    With a saved decoder (``--decoders-dir``, ``plan.saved_decoder``) there are no training runs
    and nothing is fitted: the saved reference volume replaces ``mean_reference`` (raw runs are
    realigned to the volume the decoder's runs were realigned to), the saved voxel mask replaces
    ``build_mask``, and ``decode`` applies the saved decoder. There is no ``realign_reference``,
    ``mean_reference``, ``brain_mask`` or ``build_mask`` node; ``tsnr`` maps the first run
    within the saved mask::

        realign (per run, to the saved reference) -> run_samples -> decode (saved decoder) -> ...

    Parameters
    ----------
    plan : `bidsrecon.participant.ParticipantPlan`
        The participant's runs (`RunInputs`, training first), per-run trials tables, the stimulus
        table and the ROI files.
    config : `bidsrecon.config.Config`
    name : str, optional
        Workflow name (default ``sub_<subject>_wf``).

    Outputs
    -------
    The ``write_derivatives`` node writes into ``config.output_dir``; its ``out_files`` lists them.
    """
    subject, runs, saved = plan.subject, plan.runs, plan.saved_decoder
    workflow = pe.Workflow(name=name or f"sub_{subject}_wf")
    # The mask comes from the first training run (or the saved decoder); all runs must share its grid.
    reference = 0 if saved else next(index for index, inputs in enumerate(runs) if inputs.run.set_name == TRAINING)
    fmriprep = runs[0].mask is not None
    encoder = {
        "encoder": config.encoder,
        "encoder_weights": str(config.encoder_weights or ""),
        "image_size": config.image_size,
        "seed": config.seed,
        "n_threads": config.omp_nthreads,
    }

    if saved:
        # The saved decoder's mask stands in for build_mask's output (same field name).
        build_mask = pe.Node(niu.IdentityInterface(fields=["out_mask"]), name="saved_mask")
        build_mask.inputs.out_mask = saved.mask_file
    else:
        build_mask = pe.Node(BuildMask(roi_files=list(plan.roi_files)), name="build_mask")
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
    run_samples.inputs.tr = [inputs.run.tr for inputs in runs]
    decode = pe.Node(
        DecodeFeatures(trials_files=list(plan.trials_files), stimuli_file=plan.stimuli_file,
                       layers=list(config.layers), cv_units=config.cv_units, n_voxels=config.n_voxels or 0,
                       decoder_name=f"sub-{subject}_decoder", memory_gb=config.mem_gb or 0.0, method=config.decoder,
                       device=config.device, feature_std="feature_std" in correction_statistics(config.feature_correction),
                       feature_cache="" if config.feature_cache == "off" else str(config.work_dir / "feature_cache"),
                       feature_cache_dtype="float16" if config.feature_cache == "float16" else "float32", **encoder),
        name="decode",
        n_procs=config.omp_nthreads,
    )
    if saved:
        decode.inputs.decoder_file = saved.sidecar_file
    reconstruct = pe.Node(
        Reconstruct(iterations=config.iterations, optimiser=config.optimiser,
                    generator_weights=str(config.generator_weights or ""),
                    generator_latent_max=str(config.generator_latent_max or ""), jitter=config.jitter,
                    device=config.device, mixed_precision=config.mixed_precision, batch_size=config.batch_size,
                    snapshot_every=config.snapshot_every, pixel_weight=config.pixel_weight, start=config.start,
                    tv_weight=config.tv_weight, coarse_factor=config.coarse_factor, clamp=config.clamp,
                    correction=config.feature_correction,
                    **encoder),
        name="reconstruct", n_procs=config.omp_nthreads)
    evaluate = pe.Node(Evaluate(stimuli_file=plan.stimuli_file, seed=config.seed, device=config.device,
                                bids_dir=str(config.bids_dir), subject=subject, spec=str(config.spec),
                                n_threads=config.omp_nthreads),
                       name="evaluate", n_procs=config.omp_nthreads)
    # Always rerun the sink: it writes into the staging folder, which the participant level moves into
    # the output dataset at the end (bidsrecon.bids.derivatives.publish_participant).
    write_derivatives = pe.Node(
        WriteDerivatives(output_dir=str(staging_dir(config.output_dir)), subject=subject,
                         trials_files=list(plan.trials_files),
                         seed=config.seed,
                         save_decoded_features=config.save_decoded_features,
                         copy_decoder=saved is not None),
        name="write_derivatives",
        overwrite=True,
    )
    write_derivatives.inputs.run_labels = [inputs.run.label for inputs in runs]
    tsnr = pe.Node(TemporalSnr(tr=runs[reference].run.tr, discard_seconds=config.discard_seconds), name="tsnr")

    if fmriprep:
        run_samples.inputs.bold_file = [inputs.bold for inputs in runs]
        run_samples.inputs.confounds_file = [inputs.confounds for inputs in runs]
        run_samples.inputs.confound_columns = [list(inputs.confound_columns) for inputs in runs]
        if not saved:
            build_mask.inputs.brain_mask_file = runs[reference].mask
            build_mask.inputs.reference_file = runs[reference].mask
        write_derivatives.inputs.confounds_files = [inputs.confounds for inputs in runs]
        tsnr.inputs.bold_file = runs[reference].bold
        tsnr.inputs.mask_file = saved.mask_file if saved else runs[reference].mask
    elif saved:
        _connect_saved_reference(workflow, runs, config, saved, run_samples, write_derivatives, tsnr)
    else:
        realign_options = {"slice_timing_enabled": config.slice_timing}
        realign_reference = pe.Node(
            Realign(bold_file=runs[reference].bold, tr=runs[reference].run.tr,
                    slice_timing=list(runs[reference].slice_timing),
                    slice_encoding_direction=runs[reference].slice_encoding_direction, **realign_options),
            name="realign_reference",
        )
        mean_reference = pe.Node(MeanVolume(), name="mean_reference")
        realign = pe.MapNode(Realign(**realign_options),
                             iterfield=["bold_file", "tr", "slice_timing", "slice_encoding_direction"],
                             name="realign")
        realign.inputs.bold_file = [inputs.bold for inputs in runs]
        realign.inputs.tr = [inputs.run.tr for inputs in runs]
        realign.inputs.slice_timing = [list(inputs.slice_timing) for inputs in runs]
        realign.inputs.slice_encoding_direction = [inputs.slice_encoding_direction for inputs in runs]
        run_samples.inputs.confound_columns = [list(MOTION_COLUMNS)] * len(runs)
        brain_mask = pe.Node(EpiMask(), name="brain_mask")
        workflow.connect([
            (realign_reference, mean_reference, [("realigned_file", "in_file")]),
            (mean_reference, realign, [("out_file", "reference_file")]),
            (mean_reference, write_derivatives, [("out_file", "reference_file")]),
            (mean_reference, brain_mask, [("out_file", "bold_file")]),
            (brain_mask, build_mask, [("out_mask", "brain_mask_file"), ("out_mask", "reference_file")]),
            (realign, run_samples, [("realigned_file", "bold_file"), ("motion_file", "confounds_file")]),
            (realign, write_derivatives, [("motion_file", "confounds_files")]),
            (realign_reference, tsnr, [("realigned_file", "bold_file")]),
            (brain_mask, tsnr, [("out_mask", "mask_file")]),
        ])  # fmt: skip

    workflow.connect([
        (build_mask, run_samples, [("out_mask", "mask_file")]),
        (build_mask, decode, [("out_mask", "mask_file")]),
        (build_mask, write_derivatives, [("out_mask", "mask_file")]),
        (run_samples, decode, [("out_samples", "samples_files")]),
        (decode, reconstruct, [("out_features", "features_file")]),
        (decode, evaluate, [("out_items", "items_file")]),
        (reconstruct, evaluate, [("out_images", "images_file")]),
        (reconstruct, write_derivatives, [("out_images", "images_file"), ("out_settings", "recon_settings_file"),
                                          ("out_snapshots", "snapshots_file")]),
        (evaluate, write_derivatives, [("out_truths", "truths_file"), ("out_items", "items_metrics"),
                                       ("out_sets", "set_metrics"), ("out_columns", "set_columns_file")]),
        (tsnr, write_derivatives, [("out_tsnr", "tsnr_file")]),
        (decode, write_derivatives, [("out_decoder", "decoder_file"), ("out_decoder_arrays", "decoder_arrays"),
                                     ("out_accuracy", "accuracy_file"), ("out_features", "features_file"),
                                     ("out_items", "items_file")]),
    ])  # fmt: skip
    return workflow


def _connect_saved_reference(workflow, runs, config, saved, run_samples, write_derivatives, tsnr):
    """Raw input with a saved decoder: every run realigned to the saved reference volume.

    The volume is the one the decoder's own runs were realigned to, so that a voxel of a later
    session is the voxel the decoder was trained on; it is copied into the new output with the
    decoder.
    """
    realign = pe.MapNode(Realign(slice_timing_enabled=config.slice_timing, reference_file=saved.reference_file),
                         iterfield=["bold_file", "tr", "slice_timing", "slice_encoding_direction"], name="realign")
    realign.inputs.bold_file = [inputs.bold for inputs in runs]
    realign.inputs.tr = [inputs.run.tr for inputs in runs]
    realign.inputs.slice_timing = [list(inputs.slice_timing) for inputs in runs]
    realign.inputs.slice_encoding_direction = [inputs.slice_encoding_direction for inputs in runs]
    run_samples.inputs.confound_columns = [list(MOTION_COLUMNS)] * len(runs)
    write_derivatives.inputs.reference_file = saved.reference_file
    tsnr.inputs.mask_file = saved.mask_file
    workflow.connect([
        (realign, run_samples, [("realigned_file", "bold_file"), ("motion_file", "confounds_file")]),
        (realign, write_derivatives, [("motion_file", "confounds_files")]),
        (realign, tsnr, [(("realigned_file", _first), "bold_file")]),
    ])  # fmt: skip


def _first(files):
    # A connection function: Nipype runs it from its source text, so it imports nothing.
    return files[0]
