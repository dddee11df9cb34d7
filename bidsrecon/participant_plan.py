"""What one participant's workflow is built from: its checked inputs (``ParticipantPlan``), and
how they are collected from a BIDS dataset (:func:`plan_participant`)."""
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bidsrecon.bids.collect import Run, collect_runs, drop_censored_trials, load_bids_filters
from bidsrecon.bids.derivatives import dataset_uri, raw_uri
from bidsrecon.bids.fmriprep import find_fmriprep_run, raw_run_entities
from bidsrecon.bids.roi import roi_files
from bidsrecon.bids.stimuli import find_stimuli, stim_file_map
from bidsrecon.console import say
from bidsrecon.decoding.saved import SavedDecoder, check_saved_decoder, find_saved_decoder
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, EXIT_NOTHING_SELECTED, BidsReconError
from bidsrecon.labformats.decoded_features import check_bdpy_names
from bidsrecon.preproc.signal import baseline_volumes
from bidsrecon.recon.correction import correction_statistics
from bidsrecon.spec import TRAINING, resolve_normalisation

LOGGER = logging.getLogger("bidsrecon")


@dataclass
class RunInputs:
    """What the workflow reads for one run: raw data (realigned there) or fMRIPrep's outputs."""

    run: Run
    bold: str
    slice_timing: list = field(default_factory=list)
    slice_encoding_direction: str = "k"
    mask: str = None  # fMRIPrep's brain mask; None for raw input
    confounds: str = None  # fMRIPrep's confounds TSV; None for raw input (motion is estimated)
    confound_columns: tuple = ()
    censored_volumes: tuple = ()  # --confounds-strategy: volumes nilearn leaves out (0-based)


@dataclass
class ParticipantPlan:
    """One participant's checked inputs, ready for `init_participant_wf`."""

    subject: str
    runs: list  # of RunInputs, training first, then the test sets in the specification's order
    trials_files: list
    stimuli_file: str
    roi_files: list
    saved_decoder: SavedDecoder = None  # --decoders-dir: the decoder applied (then no training runs)
    normalise: str = "zscore"  # --normalise, resolved against the specification
    baseline_files: list = field(default_factory=list)  # normalise == "rest": per run, its rest events (TSV)
    fmriprep: bool = False  # the runs are fMRIPrep's preprocessed bold (--derivatives)
    simulated: bool = False  # the dataset was made by bidsrecon's simulator (it gets a noise ceiling)
    sources: list = field(default_factory=list)  # per run, the BIDS URI of the bold file read
    warnings: list = field(default_factory=list)  # logged while its inputs were checked (run_warnings rows)
    bdata_files: list = field(default_factory=list)  # --bdata-dir: the lab's files the samples come from
    samples_files: list = field(default_factory=list)  # --bdata-dir: per file, its samples (.npy), as trials_files
    mask_file: str = None  # --bdata-dir: the voxels' mask, placed by the files' voxel_x/y/z
    bdata_task: str = None  # --bdata-dir: the training runs' task, for the mask's BIDS name
    lab_decoders_file: str = None  # --bdata-dir --decoders-dir: the lab's decoder tree described (JSON)

    @property
    def input_mode(self):
        """``bdata``, ``fmriprep``, ``saved_reference`` (raw runs with a saved decoder) or ``raw``."""
        if self.bdata_files:
            return "bdata"
        if self.fmriprep:
            return "fmriprep"
        return "saved_reference" if self.saved_decoder else "raw"

    @property
    def reference_run(self):
        """Index of the run the mask (and, for raw input, the motion reference) comes from: the first
        training run, or the first run with a saved decoder (there are no training runs then); with
        BData input, of the first file in ``sources`` (the training file)."""
        if self.saved_decoder or self.bdata_files:
            return 0
        return next(index for index, inputs in enumerate(self.runs) if inputs.run.set_name == TRAINING)


def write_if_changed(path, text):
    """Write ``text`` to ``path`` unless it holds it already (parent folders created).

    Nipype reuses cached results when its inputs' timestamps are unchanged: an input table is
    rewritten only when its content changes.
    """
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


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
