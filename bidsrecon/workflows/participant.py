"""The participant workflow: from BIDS runs to reconstructed images and their scores."""
from nipype.pipeline import engine as pe

from bidsrecon.interfaces.decoding import DecodeFeatures
from bidsrecon.interfaces.derivatives import WriteDerivatives
from bidsrecon.interfaces.reconstruction import Evaluate, Reconstruct
from bidsrecon.interfaces.samples import EpiMask, RunSamples


def init_participant_wf(subject, runs, trials_files, stimuli_file, config, name=None):
    """Decode and reconstruct one participant's test items.

    Workflow graph::

        brain_mask -> run_samples (one per run) -> decode -> reconstruct -> evaluate -> write_derivatives

    Parameters
    ----------
    subject : str
        Label without ``sub-``.
    runs : list of `bidsrecon.bids.collect.Run`
        Every run used, training and test; the first training run provides the brain mask.
    trials_files : list of str
        Per run (same order), a TSV of its trials: onset, duration, stimulus, set, source.
    stimuli_file : str
        TSV mapping each stimulus name to its image file.
    config : `bidsrecon.config.Config`
    name : str, optional
        Workflow name (default ``sub_<subject>_wf``).

    Outputs
    -------
    The ``write_derivatives`` node writes into ``config.output_dir``; its ``out_files`` lists them.
    """
    workflow = pe.Workflow(name=name or f"sub_{subject}_wf")
    mask_run = next(run for run in runs if run.set_name == "training")
    encoder = {
        "encoder": config.encoder,
        "encoder_weights": str(config.encoder_weights or ""),
        "image_size": config.image_size,
        "seed": config.seed,
        "n_threads": config.nprocs,
    }

    brain_mask = pe.Node(EpiMask(bold_file=mask_run.bold), name="brain_mask")
    run_samples = pe.MapNode(
        RunSamples(
            discard_seconds=config.discard_seconds, delay_seconds=config.delay_seconds, clip_sd=config.clip_sd
        ),
        iterfield=["bold_file", "trials_file", "tr"],
        name="run_samples",
    )
    run_samples.inputs.bold_file = [run.bold for run in runs]
    run_samples.inputs.trials_file = list(trials_files)
    run_samples.inputs.tr = [run.tr for run in runs]
    decode = pe.Node(
        DecodeFeatures(trials_files=list(trials_files), stimuli_file=stimuli_file, layers=list(config.layers),
                       cv_units=config.cv_units, **encoder),
        name="decode",
        n_procs=config.nprocs,
    )
    reconstruct = pe.Node(Reconstruct(iterations=config.iterations, **encoder), name="reconstruct", n_procs=config.nprocs)
    evaluate = pe.Node(Evaluate(stimuli_file=stimuli_file), name="evaluate")
    # Always rerun the sink: the outputs may have been removed since the last run.
    write_derivatives = pe.Node(
        WriteDerivatives(output_dir=str(config.output_dir), subject=subject, trials_files=list(trials_files),
                         iterations=config.iterations, seed=config.seed),
        name="write_derivatives",
        overwrite=True,
    )

    workflow.connect([
        (brain_mask, run_samples, [("out_mask", "mask_file")]),
        (run_samples, decode, [("out_samples", "samples_files")]),
        (decode, reconstruct, [("out_features", "features_file")]),
        (decode, evaluate, [("out_items", "items_file")]),
        (reconstruct, evaluate, [("out_images", "images_file")]),
        (reconstruct, write_derivatives, [("out_images", "images_file")]),
        (evaluate, write_derivatives, [("out_truths", "truths_file"), ("out_items", "items_metrics"),
                                       ("out_sets", "set_metrics")]),
        (decode, write_derivatives, [("out_decoder", "decoder_file")]),
    ])  # fmt: skip
    return workflow
