"""The participant level: check every input first, then run one Nipype workflow per participant."""
import logging
import re
from pathlib import Path

import pandas as pd

from bidsrecon.bids.collect import collect_participants, collect_runs, load_layout
from bidsrecon.bids.derivatives import init_output_dir, raw_uri
from bidsrecon.bids.stimuli import find_stimuli
from bidsrecon.bids.validate import run_validator
from bidsrecon.errors import EXIT_NOTHING_SELECTED, EXIT_VALIDATION_FAILED, BidsReconError
from bidsrecon.spec import SPECS

LOGGER = logging.getLogger("bidsrecon")


def run_participant_level(config):
    """Decode and reconstruct every selected participant of ``config.bids_dir``."""
    layout = load_layout(config.bids_dir)
    if not config.skip_bids_validation:
        validate_input(config.bids_dir)
    subjects = collect_participants(layout, config.participant_labels)
    spec = SPECS[config.spec]
    # Every participant's inputs are checked before any heavy work starts.
    plans = [plan_participant(layout, subject, spec, config) for subject in subjects]
    init_output_dir(config.output_dir, config.bids_dir)
    for subject, runs, trials_files, stimuli_file in plans:
        _run_workflow(subject, runs, trials_files, stimuli_file, config)
        _report(subject, config.output_dir)


def validate_input(bids_dir):
    passed, report = run_validator(bids_dir)
    if not passed:
        errors = [line.strip() for line in report.splitlines() if "ERROR" in line]
        first = errors[0] if errors else report.splitlines()[-1] if report else "no report"
        raise BidsReconError(
            f"{bids_dir} does not pass bids-validator-deno ({first}); fix the dataset, "
            "or pass --skip-bids-validation",
            EXIT_VALIDATION_FAILED,
        )


def plan_participant(layout, subject, spec, config):
    """Collect one participant's runs and stimuli and write the workflow's input tables.

    Returns
    -------
    tuple
        ``(subject, runs, trials_files, stimuli_file)`` for `init_participant_wf`.
    """
    order = [spec.training.name, *(test.name for test in spec.tests)]
    runs = sorted(
        (run for run in collect_runs(layout, subject, spec, config.task_labels, config.delay_seconds) if len(run.trials)),
        key=lambda run: order.index(run.set_name),
    )
    training = [run for run in runs if run.set_name == "training"]
    if not training:
        raise BidsReconError(
            f"sub-{subject} has no training trials: no run of task '{spec.training.task}' in a session matching "
            f"'{spec.training.session}' with event_type {list(spec.training.event_types)} "
            f"(specification '{spec.name}')",
            EXIT_NOTHING_SELECTED,
        )
    if len(training) == len(runs):
        names = ", ".join(f"{t.name} (sessions '{t.session}', task '{t.task}')" for t in spec.tests)
        raise BidsReconError(f"sub-{subject} has no test trials; expected any of: {names}", EXIT_NOTHING_SELECTED)

    work = Path(config.work_dir) / f"sub-{subject}"
    trials_files = []
    for run in runs:
        table = run.trials.assign(set=run.set_name, source=raw_uri(config.bids_dir, run.bold))
        path = work / "trials" / f"sub-{subject}_{run.label}_trials.tsv"
        _write_if_changed(path, table.to_csv(sep="\t", index=False))
        trials_files.append(str(path))

    names = sorted({name for run in runs for name in run.trials["stimulus"]})
    stimuli = find_stimuli(names, config.stimuli_dirs or (Path(config.bids_dir) / "stimuli",))
    stimuli_file = work / "stimuli.tsv"
    _write_if_changed(stimuli_file, pd.DataFrame({"stimulus": names, "path": [stimuli[n] for n in names]}).to_csv(sep="\t", index=False))
    LOGGER.info("sub-%s: %d runs, %d training trials", subject, len(runs), sum(len(r.trials) for r in training))
    return subject, runs, trials_files, str(stimuli_file)


def _write_if_changed(path, text):
    # Nipype reuses cached results when its inputs' timestamps are unchanged: rewrite only on change.
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _run_workflow(subject, runs, trials_files, stimuli_file, config):
    from bidsrecon.workflows.participant import init_participant_wf

    workflow = init_participant_wf(subject, runs, trials_files, stimuli_file, config)
    workflow.base_dir = str(config.work_dir)
    crash_dir = Path(config.work_dir) / "crash"
    workflow.config["execution"] = {
        "crashdump_dir": str(crash_dir),
        "crashfile_format": "txt",
        "stop_on_first_crash": True,
        "remove_unnecessary_outputs": False,
    }
    plugin = ("MultiProc", {"n_procs": config.nprocs}) if config.nprocs > 1 else ("Linear", {})
    try:
        workflow.run(plugin=plugin[0], plugin_args=plugin[1])
    except RuntimeError as error:
        raise BidsReconError(f"sub-{subject}: {_crash_summary(crash_dir) or error}", 1) from None


def _crash_summary(crash_dir):
    """The last error line of the newest Nipype crash file, and where the file is."""
    crashes = sorted(Path(crash_dir).glob("crash-*.txt"), key=lambda p: p.stat().st_mtime)
    if not crashes:
        return None
    lines = [line.strip() for line in crashes[-1].read_text().splitlines()
             if re.match(r"^\s*[\w.]*(Error|Exception)\b", line)]
    return f"{lines[-1] if lines else 'a step failed'} (details: {crashes[-1]})"


def _report(subject, output_dir):
    metrics = Path(output_dir) / f"sub-{subject}" / f"sub-{subject}_desc-metrics.tsv"
    table = pd.read_csv(metrics, sep="\t")
    print(f"sub-{subject}: reconstructions in {metrics.parent / 'recon'}; metrics in {metrics}")
    for row in table.itertuples():
        print(f"  {row.set:<10} {row.n_items:3d} items  pairwise identification (pixels) {row.identification_pixel:.1%}")
