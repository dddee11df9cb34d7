"""The participant level: check every input first, then run one Nipype workflow per participant."""
import contextlib
import dataclasses
import gc
import logging
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from bidsrecon.bids.collect import (
    collect_participants,
    load_bids_filters,
    load_layout,
)
from bidsrecon.bids.derivatives import (
    SETTINGS_FILE,
    atomic_write_bytes,
    atomic_write_text,
    init_output_dir,
    publish_participant,
    set_metrics_file,
    staging_dir,
)
from bidsrecon.bids.fmriprep import (
    index_derivatives,
    parse_derivatives,
    parse_space,
)
from bidsrecon.bids.roi import parse_rois
from bidsrecon.bids.validate import ReadSelection, check_dataset
from bidsrecon.boilerplate import CITATION_FILE, methods_text
from bidsrecon.console import Callbacks, StageConsole, say
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, BidsReconError
from bidsrecon.folders import participant_locks, prepare_work_dir
from bidsrecon.participant_bdata import (
    BDATA_LINK,
    LAB_DECODERS_LINK,
    bdata_participants,
    plan_bdata_participant,
)
from bidsrecon.participant_plan import plan_participant
from bidsrecon.preflight import preflight
from bidsrecon.reports import write_participant_report
from bidsrecon.run_record import ResourceLog, write_provenance
from bidsrecon.run_warnings import (
    copy_crash_files,
    last_error,
    recording_warnings,
    step_warnings,
    write_warnings_log,
)
from bidsrecon.settings_file import settings_toml
from bidsrecon.spec import load_spec, resolve_normalisation
from bidsrecon.workflow_control import (
    describe_plans,
    prepare_cached_results,
    stamp_work_version,
    write_graph,
    write_reports_only,
)

LOGGER = logging.getLogger("bidsrecon")


def run_participant_level(config):
    """Decode and reconstruct every selected participant of ``config.bids_dir``."""
    if config.reports_only:
        return write_reports_only(config.output_dir, config.participant_labels)
    if config.boilerplate_only:
        print(f"methods boilerplate written to {write_boilerplate(config)}")
        return None
    prepare_work_dir(config.work_dir)
    if config.bdata_dir:
        return _run_bdata_participants(config)
    # The options that name files or labels are read first: a typo costs seconds, not an indexing.
    options = {"spec": load_spec(config.spec), "space": parse_space(config.space), "rois": parse_rois(config.rois),
               "derivatives": parse_derivatives(config.derivatives) if config.derivatives else None}
    if config.bids_filter_file:
        load_bids_filters(config.bids_filter_file)
    say(f"indexing {config.bids_dir}")
    layout = load_layout(config.bids_dir, config.bids_database_dir)
    with recording_warnings("validation") as validation:  # the dataset's: every participant's report shows them
        if not config.skip_bids_validation:
            say("validating it (bids-validator-deno)")
            validate_input(config)
    subjects = collect_participants(layout, config.participant_labels)
    with participant_locks(config.work_dir, subjects):
        prepare_cached_results(config.work_dir, subjects, config.clean_workdir)
        _run_participants(config, layout, subjects, validation.rows, **options)


def _run_participants(config, layout, subjects, validation_warnings, spec, space, rois, derivatives):
    # --normalise not given: the specification decides (rest when it names the rest events).
    config = dataclasses.replace(config, normalise=resolve_normalisation(config.normalise, spec))
    derivatives = index_derivatives(derivatives) if derivatives else None
    # Every participant's inputs are checked before any heavy work starts.
    encoder = check_networks(config)
    plans = []
    for subject in subjects:
        with recording_warnings("inputs") as found:
            plans.append(plan_participant(layout, subject, spec, config, derivatives, space, rois, encoder=encoder))
        plans[-1].warnings = validation_warnings + found.rows
    # every stimulus, bold, trial and output name (and --features-dir): all problems at once, nothing written
    preflight(plans, features=_training_features(config, encoder))
    say(f"every input checked: {sum(len(plan.runs) for plan in plans)} runs of {len(plans)} participant(s)")
    if config.dry_run:
        print(describe_plans(plans, config))
        return
    init_output_dir(config.output_dir, config.bids_dir, [(dataset.name, dataset.root) for dataset, _ in derivatives or ()])
    _run_plans(plans, config)


def _run_bdata_participants(config):
    """``--bdata-dir``: the lab's preprocessed samples instead of runs (:mod:`bidsrecon.participant_bdata`)."""
    spec = load_spec(config.spec)
    participants = bdata_participants(config.bdata_dir, config.participant_labels)
    with participant_locks(config.work_dir, list(participants)):
        prepare_cached_results(config.work_dir, list(participants), config.clean_workdir)
        encoder = check_networks(config)
        # The lab's decoders are checked against every layer's shape at --image-size.
        shapes = encoder.layer_shapes(config.image_size) if config.decoders_dir else None
        plans = []
        for subject, files in participants.items():
            with recording_warnings("inputs") as found:
                plans.append(plan_bdata_participant(subject, files, spec, config, shapes))
            plans[-1].warnings = found.rows
        preflight(plans, features=_training_features(config, encoder))
        say(f"every input checked: {sum(len(plan.bdata_files) for plan in plans)} BData files of {len(plans)} "
            "participant(s)")
        if config.dry_run:
            print(describe_plans(plans, config))
            return
        init_output_dir(config.output_dir, config.bids_dir, [(BDATA_LINK, config.bdata_dir)] + (
            [(LAB_DECODERS_LINK, config.decoders_dir)] if config.decoders_dir else []))
        _run_plans(plans, config)


def _run_plans(plans, config):
    """Run each planned participant's workflow, then publish its outputs and report."""
    write_boilerplate(config)
    for plan in plans:
        started = datetime.now(timezone.utc)
        stamp_work_version(config.work_dir, plan.subject)
        _run_workflow(plan, config)
        write_provenance(config, plan.subject, started, datetime.now(timezone.utc),
                         staging_dir(config.output_dir))
        log = staging_dir(config.output_dir) / f"sub-{plan.subject}" / "log"
        atomic_write_text(log / SETTINGS_FILE.format(subject=plan.subject), settings_toml(config))
        publish_participant(config.output_dir, plan.subject)
        write_participant_report(config.output_dir, plan.subject)
        _report(plan.subject, config.output_dir)


def _training_features(config, encoder):
    """``(folder, layer shapes, fix)`` for :func:`bidsrecon.preflight.preflight` with ``--features-dir``, else None."""
    if not config.features_dir:
        return None
    shapes = encoder.layer_shapes(config.image_size, encoder.check_layers(config.layers or encoder.default_layers))
    fix = (f"they are not {config.encoder}'s features at --image-size {config.image_size}: pass the --encoder and "
           "--image-size they were computed with (the lab's VGG19 features: --encoder vgg19-caffe --image-size 224)")
    return config.features_dir, shapes, fix


def write_boilerplate(config):
    """The run's methods boilerplate as ``logs/CITATION.md`` in the output; returns its path."""
    path = Path(config.output_dir) / CITATION_FILE
    atomic_write_text(path, methods_text(config))
    return path


def check_networks(config):
    """Load the encoder (and generator) once and check the layers, device and precision asked for.

    A missing weights file, an unknown layer or an absent GPU is found here, in seconds, rather
    than after the preprocessing and decoding.

    Returns
    -------
    bidsrecon.encoders.base.Encoder
        The encoder, whose name and weights hash a saved decoder is checked against.
    """
    from bidsrecon.encoders import get_encoder, resolve_device
    from bidsrecon.recon.generator import load_generator, read_latent_bound

    device = resolve_device(config.device)
    if config.mixed_precision and device.type != "cuda":
        raise BidsReconError(f"--mixed-precision runs on CUDA only; this run uses {device.type}. "
                             "Drop --mixed-precision or use --device cuda.", EXIT_BAD_ARGUMENTS)
    encoder = get_encoder(config.encoder, weights_file=config.encoder_weights, seed=config.seed)
    encoder.check_layers(config.layers or None)
    if config.optimiser == "generator":
        load_generator(config.generator_weights)
        if config.generator_latent_max is not None:
            read_latent_bound(config.generator_latent_max)
    return encoder


def validate_input(config):
    """Run bids-validator-deno: exit 16 on errors in what this run reads, a warning for the others.

    What counts as read is in :mod:`bidsrecon.bids.validate` (the selected participants' runs,
    sessions and tasks, the dataset's stimuli/ unless --stimuli-dir, dataset_description.json as
    a file but none of its fields).
    """
    check_dataset(config.bids_dir, ReadSelection.from_labels(
        config.participant_labels, config.session_labels, config.task_labels,
        dataset_stimuli=not config.stimuli_dirs))


def _run_workflow(plan, config):
    """Run one participant's workflow; with ``--resource-monitor`` its steps' resource use is logged."""
    from nipype import config as nipype_config

    from bidsrecon.workflows.participant import init_participant_wf

    subject = plan.subject
    workflow = init_participant_wf(plan, config)
    workflow.base_dir = str(config.work_dir)
    if config.write_graph:
        write_graph(workflow, Path(config.work_dir) / workflow.name)
    crash_dir = Path(config.work_dir) / "crash"
    workflow.config["execution"] = {
        "crashdump_dir": str(crash_dir),
        "crashfile_format": "txt",
        "stop_on_first_crash": config.stop_on_first_crash,
        "remove_unnecessary_outputs": False,
    }
    plugin, plugin_args = config.plugin[0], dict(config.plugin[1])
    if plugin == "MultiProc":
        # Nipype looks for finished steps every 2 s by default: a second on average lost per step.
        # Local processes are cheap to poll; a cluster's queue (SLURM, SGE) keeps the default.
        workflow.config["execution"]["poll_sleep_duration"] = 0.01
    resources = Path(config.work_dir) / f"sub-{subject}" / "resources_log.jsonl"
    callbacks = [StageConsole(subject, len(plan.runs))]
    if config.resource_monitor:
        nipype_config.enable_resource_monitor()
        callbacks.append(ResourceLog(resources))
    plugin_args["status_callback"] = Callbacks(*callbacks)
    # Inside the work directory: whatever Nipype drops in the current directory (its resource
    # monitor's samples, say) stays out of the user's folder and of a read-only container's.
    # Nipype's MultiProc runs a full garbage collection before it submits each step; with torch
    # imported that is a quarter of a second each, most of a rerun whose steps are all cached.
    # Objects alive now are long-lived: frozen, they are left out of every later collection.
    gc.freeze()
    started = time.time()
    try:
        with contextlib.chdir(config.work_dir), \
                recording_warnings("workflow", Path(config.work_dir) / workflow.name) as recorder:
            graph = workflow.run(plugin=plugin, plugin_args=plugin_args)
    except RuntimeError as error:
        # Into the published outputs (the staged ones are not published): they outlive the work directory.
        copy_crash_files(crash_dir, subject, started, Path(config.output_dir) / f"sub-{subject}" / "log")
        raise BidsReconError(f"sub-{subject}: {_crash_summary(crash_dir) or error}", 1) from None
    finally:
        gc.unfreeze()  # back to normal collection (main() may be called again in one process)
    log = staging_dir(config.output_dir) / f"sub-{subject}" / "log"
    write_warnings_log(log, subject, plan.warnings + step_warnings(graph) + recorder.rows)
    if config.resource_monitor and resources.is_file():
        atomic_write_bytes(log / f"sub-{subject}_desc-resources_log.jsonl", resources.read_bytes())


def _crash_summary(crash_dir):
    """The last error line of the newest Nipype crash file, and where the file is."""
    crashes = sorted(Path(crash_dir).glob("crash-*.txt"), key=lambda p: p.stat().st_mtime)
    if not crashes:
        return None
    return f"{last_error(crashes[-1].read_text()) or 'a step failed'} (details: {crashes[-1]})"


def _report(subject, output_dir):
    metrics = set_metrics_file(output_dir, subject)
    table = pd.read_csv(metrics, sep="\t")
    print(f"sub-{subject}: reconstructions in {metrics.parent / 'recon'}; metrics in {metrics}")
    for row in table.itertuples():
        print(f"  {row.set:<10} {row.n_items:3d} items  pairwise identification (pixels) {row.identification_pixel:.1%}")
