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
    collect_runs,
    drop_censored_trials,
    load_bids_filters,
    load_layout,
)
from bidsrecon.bids.derivatives import (
    SETTINGS_FILE,
    atomic_write_bytes,
    atomic_write_text,
    dataset_uri,
    init_output_dir,
    publish_participant,
    raw_uri,
    set_metrics_file,
    staging_dir,
)
from bidsrecon.bids.fmriprep import (
    find_fmriprep_run,
    index_derivatives,
    parse_derivatives,
    parse_space,
    raw_run_entities,
)
from bidsrecon.bids.roi import parse_rois, roi_files
from bidsrecon.bids.stimuli import find_stimuli, stim_file_map
from bidsrecon.bids.validate import ReadSelection, check_dataset
from bidsrecon.boilerplate import CITATION_FILE, methods_text
from bidsrecon.console import Callbacks, StageConsole, say
from bidsrecon.decoding.saved import check_saved_decoder, find_saved_decoder
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, EXIT_NOTHING_SELECTED, BidsReconError
from bidsrecon.folders import participant_locks, prepare_work_dir
from bidsrecon.labformats.decoded_features import check_bdpy_names
from bidsrecon.participant_bdata import (
    BDATA_LINK,
    LAB_DECODERS_LINK,
    bdata_participants,
    plan_bdata_participant,
)
from bidsrecon.participant_plan import ParticipantPlan, RunInputs, write_if_changed
from bidsrecon.preflight import preflight
from bidsrecon.preproc.signal import baseline_volumes
from bidsrecon.recon.correction import correction_statistics
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
from bidsrecon.spec import TRAINING, load_spec, resolve_normalisation
from bidsrecon.workflow_control import (
    check_work_version,
    clean_work_dir,
    describe_plans,
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
        if config.clean_workdir:
            clean_work_dir(config.work_dir, subjects)
        check_work_version(config.work_dir, subjects)
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
        if config.clean_workdir:
            clean_work_dir(config.work_dir, list(participants))
        check_work_version(config.work_dir, list(participants))
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


def plan_participant(layout, subject, spec, config, derivatives=None, space=None, rois=(), *, encoder=None):
    """Collect one participant's runs, stimuli and masks and write the workflow's input tables.

    With ``config.decoders_dir`` the participant's saved decoder is found and checked against
    the runs, the settings and the training images (``encoder``, from `check_networks`, gives
    the encoder's name and weights hash); no training run is collected then.
    """
    filters = load_bids_filters(config.bids_filter_file) if config.bids_filter_file else None
    # Looked for first: a participant without a decoder is the likeliest mistake, and the clearest.
    saved = find_saved_decoder(config.decoders_dir, subject) if config.decoders_dir else None
    runs = collect_runs(
        layout, subject, spec, config.task_labels, config.delay_seconds,
        session_labels=config.session_labels, bids_filters=filters, cut_runs=config.cut_runs,
        training=saved is None,
    )
    order = [trial_set.name for trial_set in spec.sets]
    runs = sorted(runs, key=lambda run: order.index(run.set_name))
    normalise = resolve_normalisation(config.normalise, spec)
    if normalise == "rest":  # every run's rest checked now, not in its node hours later
        for run in runs:
            check_baseline(run, spec, config.discard_seconds)
    inputs = [_run_inputs(layout, run, config, derivatives, space) for run in runs]
    if any(run_inputs.censored_volumes for run_inputs in inputs):
        inputs = _without_censored_runs(subject, inputs, config, training=saved is None)
        runs = [run_inputs.run for run_inputs in inputs]

    work = Path(config.work_dir) / f"sub-{subject}"
    trials_files, baseline_files = [], []
    sources = [_source_uri(config.bids_dir, derivatives, run_inputs.bold) for run_inputs in inputs]
    for run, source in zip(runs, sources):
        table = run.trials.assign(set=run.set_name, source=source)
        path = work / "trials" / f"sub-{subject}_{run.label}_set-{run.set_name}_trials.tsv"
        write_if_changed(path, table.to_csv(sep="\t", index=False))
        trials_files.append(str(path))
        if normalise == "rest":
            path = work / "baseline" / f"sub-{subject}_{run.label}_set-{run.set_name}_baseline.tsv"
            write_if_changed(path, run.baseline[["onset", "duration"]].to_csv(sep="\t", index=False))
            baseline_files.append(str(path))

    if config.save_decoded_features == "bdpy":  # they name files written at the very end: checked now
        check_bdpy_names((run.set_name, run.trials["stimulus"], run.events) for run in runs)
    all_trials = pd.concat([run.trials for run in runs], ignore_index=True)
    # A saved decoder's output is built from its training images' features: they are needed too.
    names = sorted(set(all_trials["stimulus"]) | set(saved.images_needed if saved else ()))
    stimuli = find_stimuli(names, config.stimuli_dirs or (Path(config.bids_dir) / "stimuli",),
                           stim_files=stim_file_map(all_trials))
    if saved:
        check_saved_decoder(saved, encoder=encoder.name if encoder else config.encoder,
                            encoder_weights_sha256=encoder.weights_sha256 if encoder else None,
                            image_size=config.image_size, layers=config.layers,
                            bold_files=[run_inputs.bold for run_inputs in inputs], raw_input=not derivatives,
                            stimulus_files=stimuli,
                            feature_std_for=config.feature_correction
                            if "feature_std" in correction_statistics(config.feature_correction) else None)
    stimuli_file = work / "stimuli.tsv"
    write_if_changed(stimuli_file, pd.DataFrame({"stimulus": names, "path": [stimuli[n] for n in names]})
                      .to_csv(sep="\t", index=False))
    from bidsrecon.simulate.ceiling import simulation_record

    say(f"sub-{subject}: {len(runs)} runs, {sum(len(r.trials) for r in runs if r.set_name == TRAINING)} training "
        f"trials{f'; applying the saved decoder {saved.sidecar_file}' if saved else ''}")
    return ParticipantPlan(subject, inputs, trials_files, str(stimuli_file),
                           roi_files(rois, config.bids_dir, subject) if rois else [], saved,
                           normalise, baseline_files, fmriprep=bool(derivatives),
                           simulated=simulation_record(config.bids_dir) is not None, sources=sources)


def _source_uri(bids_dir, derivatives, path):
    """``bids:raw:...`` for a raw file, ``bids:<name>:...`` for a file of a ``--derivatives`` dataset."""
    for dataset, _ in derivatives or ():
        if Path(path).resolve().is_relative_to(dataset.root.resolve()):
            return dataset_uri(dataset.name, dataset.root, path)
    return raw_uri(bids_dir, path)


def check_baseline(run, spec, discard_seconds):
    """Stop unless ``run`` holds at least 2 rest volumes, after the discarded ones, for ``--normalise rest``.

    Raises
    ------
    BidsReconError
        Exit 66 when the run's events hold no row that the specification's ``baseline`` selects;
        exit 64 when its rest volumes all fall in the first ``discard_seconds``.
    """
    rest = run.baseline if run.baseline is not None else pd.DataFrame({"onset": [], "duration": []})
    where = f"{run.events} (run {Path(run.bold).name})"
    fixes = ("pass --normalise zscore, or a --spec whose \"baseline\" names this run's rest "
             f"(specification '{spec.name}' names {spec.describe_baseline()})")
    if not len(rest):
        raise BidsReconError(f"{where}: --normalise rest needs the run's rest events, and this file has no row "
                             f"with {spec.describe_baseline()}; {fixes}", EXIT_INPUT_MISSING)
    n_discard = int(round(discard_seconds / run.tr))
    volumes = baseline_volumes(rest["onset"], rest["duration"], run.n_volumes, run.tr, n_discard)
    if len(volumes) < 2:
        raise BidsReconError(
            f"{where}: its rest ({spec.describe_baseline()}: "
            f"{', '.join(f'{o:g}-{o + d:g} s' for o, d in zip(rest['onset'], rest['duration']))}) holds "
            f"{len(volumes)} whole volume(s) of {run.tr:g} s after the first {discard_seconds:g} s are discarded "
            f"(--discard-seconds); --normalise rest needs at least 2: lower --discard-seconds, or {fixes}",
            EXIT_BAD_ARGUMENTS)


def _run_inputs(layout, run, config, derivatives, space):
    if derivatives:
        found = find_fmriprep_run(derivatives, raw_run_entities(run.bold), space, config.confounds,
                                  config.confounds_strategy)
        if found.censored_volumes:
            run = drop_censored_trials(run, found.censored_volumes, config.delay_seconds,
                                       f"--confounds-strategy {config.confounds_strategy}")
        return RunInputs(run, found.bold, mask=found.mask, confounds=found.confounds,
                         confound_columns=tuple(found.confound_columns), censored_volumes=found.censored_volumes)
    if run.echoes:
        raise BidsReconError(
            f"{run.bold}: a multi-echo run ({len(run.echoes)} echoes); bidsrecon realigns raw runs one echo at a time "
            "and does not combine echoes: preprocess the dataset with fMRIPrep and give its output with --derivatives "
            "(its optimally combined run is used)", EXIT_BAD_ARGUMENTS)
    if not config.slice_timing:
        return RunInputs(run, run.bold)
    metadata = layout.get_metadata(run.bold)
    if not metadata.get("SliceTiming"):
        raise BidsReconError(
            f"{run.bold}: --slice-timing needs SliceTiming in the run's JSON sidecar; add it or drop the option",
            EXIT_INPUT_MISSING,
        )
    return RunInputs(run, run.bold, slice_timing=list(metadata["SliceTiming"]),
                     slice_encoding_direction=metadata.get("SliceEncodingDirection", "k"))


def _without_censored_runs(subject, inputs, config, training=True):
    """Leave out the runs whose every trial the confounds strategy censored; stop if a split is left empty."""
    kept = [run_inputs for run_inputs in inputs if len(run_inputs.run.trials)]
    for run_inputs in inputs:
        if not len(run_inputs.run.trials):
            LOGGER.warning("%s: every '%s' trial is censored by --confounds-strategy %s; the run is left out of that "
                           "set", Path(run_inputs.run.bold).name, run_inputs.run.set_name, config.confounds_strategy)
    sets = [run_inputs.run.set_name for run_inputs in kept]
    empty = ("training" if training and TRAINING not in sets
             else "test" if all(name == TRAINING for name in sets) else None)
    if empty:
        raise BidsReconError(
            f"sub-{subject}: --confounds-strategy {config.confounds_strategy} censors a volume in the window of every "
            f"{empty} trial; choose another strategy (simple or compcor censor only fMRIPrep's non-steady-state "
            "volumes) or --confounds", EXIT_NOTHING_SELECTED)
    return kept


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
