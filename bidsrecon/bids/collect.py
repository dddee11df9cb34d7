"""Find what one participant has: runs, their events, and the trials of each set.

Which runs are looked at:

- ``--bids-filter-file``: fMRIPrep's format, a JSON object whose keys name queries (``bold``,
  ``sbref``, ``fmap``, ``t1w``, ``t2w``, ``flair``, ``roi``) and whose values hold pybids entity
  filters. bidsrecon reads only functional runs, so only ``bold`` is honoured (the others are
  accepted, so that one file serves fMRIPrep and bidsrecon, and ignored). A value is a label, a
  list of labels (any of them), ``null`` (the entity must be absent) or ``"*"`` (present, any
  label), as in fMRIPrep; ``subject`` is refused (use ``--participant-label``);
- ``--session-label`` and ``--task-label`` (``ses-``/``task-`` prefixes optional): runs must
  also have one of these labels;
- the specification then sorts the runs into its sets (:mod:`bidsrecon.spec`).

A run's events file is found by the BIDS inheritance principle (:mod:`bidsrecon.bids.events`). The
echoes of a multi-echo run (``_echo-1_bold``, ``_echo-2_bold``, …) are one run: its first echo
stands for it, with the others listed in ``Run.echoes``.
"""
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from bidsrecon.bids.events import ECHO_ENTITY, events_path, read_baseline, read_trials
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, EXIT_NOTHING_SELECTED, BidsReconError
from bidsrecon.spec import TRAINING

LOGGER = logging.getLogger("bidsrecon")
FMRIPREP_QUERIES = ("bold", "sbref", "fmap", "t1w", "t2w", "flair", "roi")
_APP_CONTROLLED = ("subject",)


@dataclass
class Run:
    """One functional run and the trials it contributes to one set.

    A run that several sets select (say training and test trials in the same run) appears once
    per set, with that set's trials.
    """

    bold: str
    events: str
    tr: float
    n_volumes: int
    session: str
    task: str
    run: str
    set_name: str
    trials: pd.DataFrame  # onset, duration, stimulus, repeat (+ stim_file when events have it)
    baseline: pd.DataFrame = None  # onset, duration of the specification's rest rows; None: it names none
    echoes: tuple = ()  # a multi-echo run: every echo's bold file, ``bold`` the first; empty for one echo

    @property
    def label(self):
        """A short name for messages and node names: ``ses-X_task-Y_run-Z``."""
        parts = [f"ses-{self.session}" if self.session else "", f"task-{self.task}", f"run-{self.run}" if self.run else ""]
        return "_".join(p for p in parts if p)


def load_layout(bids_dir, database_dir=None):
    """Index a BIDS dataset with pybids; a clear error when it is not one.

    With ``database_dir`` the index is kept there (pybids' SQLite database) and reused by later
    runs instead of indexing again.
    """
    from bids import BIDSLayout

    bids_dir = Path(bids_dir)
    if not (bids_dir / "dataset_description.json").is_file():
        raise BidsReconError(
            f"{bids_dir} is not a BIDS dataset: it has no dataset_description.json. "
            "Pass the root folder of a BIDS dataset as bids_dir.",
            EXIT_INPUT_MISSING,
        )
    try:
        return BIDSLayout(str(bids_dir), validate=False, derivatives=False,
                          database_path=str(database_dir) if database_dir else None)
    except (ValueError, RecursionError, OSError) as error:  # pybids reports some JSON errors as OSError
        # pybids does not say which sidecar it could not read: find it.
        bad = next((path for path in sorted(bids_dir.rglob("*.json")) if _json_problem(path)), None)
        where = f"{bad}: {_json_problem(bad)}" if bad else f"{bids_dir}: {type(error).__name__}: {error}"
        raise BidsReconError(f"{where}; pybids cannot index the dataset. Every JSON file must be UTF-8 JSON "
                             "(bids-validator-deno lists such files; do not skip it)", EXIT_BAD_ARGUMENTS) from None


def _json_problem(path):
    """Why ``path`` is not readable UTF-8 JSON, or None."""
    try:
        json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        return f"not UTF-8 text (byte {error.start})"
    except (ValueError, RecursionError) as error:
        return f"not valid JSON ({error})"
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    return None


def collect_participants(layout, labels=None):
    """Subject labels to process: all by default; ``sub-`` prefixes accepted and stripped."""
    existing = sorted(layout.get_subjects())
    if not existing:
        raise BidsReconError(f"no subjects (sub-*) found in {layout.root}", EXIT_NOTHING_SELECTED)
    if not labels:
        return existing
    wanted = list(dict.fromkeys(label.removeprefix("sub-") for label in labels))
    unknown = [label for label in wanted if label not in existing]
    if unknown:
        raise BidsReconError(
            f"participant label(s) {', '.join(unknown)} not found in {layout.root}; "
            f"the dataset has: {', '.join(existing)}",
            EXIT_NOTHING_SELECTED,
        )
    return wanted


def load_bids_filters(path):
    """Read a ``--bids-filter-file`` (fMRIPrep's format, see the module docstring).

    Parameters
    ----------
    path : str or pathlib.Path

    Returns
    -------
    dict
        Query name → {entity: label, list of labels, None or "*"}, as in the file.
    """
    path = Path(path)
    if not path.is_file():
        raise BidsReconError(f"--bids-filter-file {path}: no such file", EXIT_INPUT_MISSING)
    try:
        filters = json.loads(path.read_text())
    except (ValueError, RecursionError) as error:
        raise BidsReconError(f"--bids-filter-file {path} is not valid JSON: {error}") from None
    if not isinstance(filters, dict):
        raise BidsReconError(f"--bids-filter-file {path}: expected a JSON object such as "
                             '{"bold": {"session": "01"}}; got ' + type(filters).__name__)
    for query, entities in filters.items():
        if query not in FMRIPREP_QUERIES:
            raise BidsReconError(f"--bids-filter-file {path}: unknown query '{query}'; "
                                 f"allowed: {', '.join(FMRIPREP_QUERIES)} (only 'bold' is used)")
        if not isinstance(entities, dict):
            raise BidsReconError(f"--bids-filter-file {path}: '{query}' must be an object of entity filters; "
                                 f"got {entities!r}")
        for entity, value in entities.items():
            if entity in _APP_CONTROLLED:
                raise BidsReconError(f"--bids-filter-file {path}: '{query}.{entity}' is chosen with "
                                     "--participant-label; remove it from the filter file")
            if not _is_filter_value(value):
                raise BidsReconError(f"--bids-filter-file {path}: '{query}.{entity}' must be a label, a list of "
                                     f"labels, null or \"*\"; got {value!r}")
    ignored = sorted(set(filters) - {"bold"})
    if ignored:
        LOGGER.info("--bids-filter-file: %s not used (bidsrecon reads functional runs only)", ", ".join(ignored))
    return filters


def collect_runs(layout, subject, spec, task_labels=None, delay=4.0, *, session_labels=None,
                 bids_filters=None, cut_runs=False, training=True):
    """Every run of ``subject`` that a set of ``spec`` selects, with that set's trials.

    Parameters
    ----------
    layout : bids.BIDSLayout
    subject : str
        Label without ``sub-``.
    spec : bidsrecon.spec.Spec
    task_labels : sequence of str, optional
        ``--task-label``: only runs of these tasks.
    delay : float
        Haemodynamic delay (s): a trial needs data up to its end plus ``delay``.
    session_labels : sequence of str, optional
        ``--session-label``: only runs of these sessions (``ses-`` prefix optional).
    bids_filters : dict, optional
        ``--bids-filter-file`` content, from :func:`load_bids_filters`; its ``bold`` query applies.
    cut_runs : bool
        ``--cut-runs``: drop (with a warning) the trials that end past the run's last volume
        instead of stopping with an error.
    training : bool
        False when no decoder is fitted (``--decoders-dir`` applies saved ones): the training
        split is not looked at, so it may select nothing and none of its runs is read.

    Returns
    -------
    list of Run
        Runs with at least one trial, in pybids' order, one entry per (run, set).

    Raises
    ------
    BidsReconError
        Exit 18 when the training split, a required test set, or all test sets together select
        no run or no trial (the message names the set, its filters and the user's selection);
        exit 64/66 for unreadable or inconsistent inputs, and for a trial that the
        specification puts in training and in a test set.
    """
    sessions = _check_labels(session_labels, "ses-", layout.get_sessions(), "session", "--session-label")
    tasks = _check_labels(task_labels, "task-", layout.get_tasks(), "task", "--task-label")
    selection = _describe_selection(sessions, tasks, bids_filters)
    sets = spec.sets if training else spec.tests
    runs, matched = [], {trial_set.name: 0 for trial_set in sets}
    for bold, echoes in _group_echoes(_query_bold(layout, subject, bids_filters)):
        entities = _entity_labels(bold.get_entities())
        if (sessions and entities["session"] not in sessions) or (tasks and entities["task"] not in tasks):
            continue
        trial_sets = [trial_set for trial_set in sets if trial_set.matches(entities)]
        if not trial_sets:
            continue
        for trial_set in trial_sets:
            matched[trial_set.name] += 1
        runs += _read_run(layout, bold.path, entities, trial_sets, delay, cut_runs, spec.baseline, echoes)
    _check_no_leak(runs)
    _check_selection(subject, spec, sets, runs, matched, selection)
    return runs


def _read_run(layout, bold_path, entities, trial_sets, delay, cut_runs, baseline=(), echoes=()):
    """The Run entries of one bold file, one per set with trials."""
    events = events_path(layout, bold_path)
    tr = _repetition_time(layout, bold_path)
    n_volumes = bold_volumes(bold_path)
    trials = {trial_set.name: read_trials(events, trial_set) for trial_set in trial_sets}
    trials = _fit_to_run(trials, Path(bold_path).name, n_volumes, tr, delay, cut_runs)
    rest = read_baseline(events, baseline) if baseline else None
    return [Run(bold_path, events, tr, n_volumes, entities["session"], entities["task"], entities["run"],
                name, table, rest, tuple(echoes))
            for name, table in trials.items() if len(table)]


def drop_censored_trials(run, censored, delay, why):
    """``run`` without the trials whose window holds a censored volume, with a warning counting them.

    A trial's window is the one its block sample averages: ``[onset + delay, onset + duration +
    delay)``, volume ``v`` covering ``[v * tr, (v + 1) * tr)``. The same window is used with
    ``--samples lss``, where it holds the peak of the trial's modelled response.

    Parameters
    ----------
    run : Run
    censored : sequence of int
        0-based volumes to leave out.
    delay : float
        Haemodynamic delay (s).
    why : str
        What censored them, for the warning (``--confounds-strategy scrubbing``).

    Returns
    -------
    Run
        A copy whose ``trials`` may be empty.
    """
    censored = np.asarray(sorted(set(censored)), dtype=float)
    if not censored.size or not len(run.trials):
        return run
    starts = run.trials["onset"].to_numpy(dtype=float) + delay
    ends = starts + run.trials["duration"].to_numpy(dtype=float)
    # Volume v overlaps the window when it starts before the window ends and ends after it starts.
    hit = ((censored[None, :] * run.tr < ends[:, None] - 1e-6)
           & ((censored[None, :] + 1) * run.tr > starts[:, None] + 1e-6)).any(axis=1)
    if hit.any():
        shown = ", ".join(str(int(v)) for v in censored[:10]) + (f" and {censored.size - 10} more" if censored.size > 10 else "")
        LOGGER.warning("%s: dropped %d of %d '%s' trials whose window (onset + %g s delay) holds a volume that %s "
                       "censors (%d censored volume(s), 0-based: %s)", Path(run.bold).name, int(hit.sum()),
                       len(run.trials), run.set_name, delay, why, censored.size, shown)
    return replace(run, trials=run.trials[~hit].reset_index(drop=True))


def _fit_to_run(trials, run_name, n_volumes, tr, delay, cut_runs):
    """Check that every trial (plus the delay) ends within the run; drop those that do not if asked."""
    run_end = n_volumes * tr
    tables = [table for table in trials.values() if len(table)]
    if not tables:
        return trials
    needed = max(float((table["onset"] + table["duration"]).max()) for table in tables) + delay
    if needed <= run_end + 1e-6:
        return trials
    if not cut_runs:
        raise BidsReconError(
            f"{run_name}: its trials need {needed:g} s of data (last trial end plus the {delay:g}-s "
            f"haemodynamic delay) but the run holds {n_volumes} volumes x {tr:g} s = {run_end:g} s; "
            "pass --cut-runs to drop the trials that do not fit")
    kept = {}
    for name, table in trials.items():
        fits = (table["onset"] + table["duration"] + delay <= run_end + 1e-6).to_numpy()
        if not fits.all():
            LOGGER.warning("%s: dropped %d of %d '%s' trials that end past the run's %g s (%d volumes; trials "
                           "need %g s with the delay) (--cut-runs)",
                           run_name, int((~fits).sum()), len(table), name, run_end, n_volumes, needed)
        kept[name] = table[fits].reset_index(drop=True)
    return kept


def _query_bold(layout, subject, bids_filters):
    from bids.layout import Query

    query = {"datatype": "func", "suffix": "bold", "extension": [".nii.gz", ".nii"]}
    for entity, value in ((bids_filters or {}).get("bold") or {}).items():
        query[entity] = Query.NONE if value is None else Query.ANY if value == "*" else value
    query["subject"] = subject
    try:
        return layout.get(**query)
    except ValueError as error:
        raise BidsReconError(f"--bids-filter-file: {error}") from None


def _group_echoes(bolds):
    """(first echo, all echoes' paths) per run: the echoes of a multi-echo run are one run.

    Files without an ``echo-`` entity, or the only echo of their run, stand alone with no
    echoes listed.
    """
    groups = {}
    for bold in bolds:
        echo = bold.get_entities().get("echo")
        key = ECHO_ENTITY.sub("_", bold.path) if echo is not None else bold.path
        groups.setdefault(key, []).append((_echo_number(echo), bold))
    for members in groups.values():
        members.sort(key=lambda member: member[0])
        first = members[0][1]
        yield first, tuple(bold.path for _, bold in members) if len(members) > 1 else ()


def _echo_number(echo):
    if echo is None:
        return None
    return (0, int(echo), "") if str(echo).isdigit() else (1, 0, str(echo))


def _entity_labels(entities):
    # Labels as written in the file name (pybids keeps run-01's padding in str()).
    return {key: "" if entities.get(key) is None else str(entities[key])
            for key in ("session", "task", "run", "acquisition")}


def _check_labels(labels, prefix, existing, entity, option):
    """Labels without prefix; every one must exist somewhere in the dataset."""
    if not labels:
        return None
    wanted = list(dict.fromkeys(str(label).removeprefix(prefix) for label in labels))
    unknown = [label for label in wanted if label not in existing]
    if unknown:
        raise BidsReconError(f"{option} {', '.join(unknown)}: no such {entity} in the dataset; it has: "
                             f"{', '.join(sorted(existing)) or 'none'}", EXIT_NOTHING_SELECTED)
    return set(wanted)


def _describe_selection(sessions, tasks, bids_filters):
    parts = []
    if sessions:
        parts.append(f"--session-label {' '.join(sorted(sessions))}")
    if tasks:
        parts.append(f"--task-label {' '.join(sorted(tasks))}")
    if (bids_filters or {}).get("bold"):
        parts.append(f"--bids-filter-file bold {json.dumps(bids_filters['bold'])}")
    return f" (runs restricted by {'; '.join(parts)})" if parts else ""


def _check_selection(subject, spec, sets, runs, matched, selection):
    """Every required set of ``sets``, and at least one test set, must select runs and trials."""
    for trial_set in sets:
        if any(run.set_name == trial_set.name for run in runs):
            continue
        if matched[trial_set.name]:
            why = (f"its {matched[trial_set.name]} run(s) ({trial_set.describe_entities()}) hold no trial with "
                   f"{trial_set.describe_events()}")
        else:
            why = f"no run matches {trial_set.describe_entities()}"
        message = f"sub-{subject} has no {trial_set.name} trials: set '{trial_set.name}' of specification " \
                  f"'{spec.name}' selects nothing, {why}{selection}"
        if trial_set.required:
            raise BidsReconError(message, EXIT_NOTHING_SELECTED)
        LOGGER.warning("%s; the set is skipped", message)
    if all(run.set_name == TRAINING for run in runs):
        names = "; ".join(f"{t.name}: {t.describe_entities()}" for t in spec.tests)
        raise BidsReconError(f"sub-{subject} has no test trials; specification '{spec.name}' expects any of "
                             f"{names}{selection}", EXIT_NOTHING_SELECTED)


def _check_no_leak(runs):
    """No trial may be both trained on and tested on."""
    training = {(run.bold, onset) for run in runs if run.set_name == TRAINING for onset in run.trials["onset"]}
    for run in runs:
        if run.set_name == TRAINING:
            continue
        shared = sorted(onset for onset in run.trials["onset"] if (run.bold, onset) in training)
        if shared:
            raise BidsReconError(
                f"{Path(run.bold).name}: the specification puts {len(shared)} trial(s) (onsets "
                f"{', '.join(f'{o:g}' for o in shared[:10])}) in training and in test set '{run.set_name}'; "
                "make their events filters exclusive")


def _repetition_time(layout, bold_path):
    tr = layout.get_metadata(bold_path).get("RepetitionTime")
    if tr is None:
        raise BidsReconError(f"{bold_path}: no RepetitionTime in its JSON sidecar", EXIT_INPUT_MISSING)
    if isinstance(tr, bool) or not isinstance(tr, (int, float)) or not np.isfinite(tr) or tr <= 0:
        raise BidsReconError(f"{bold_path}: RepetitionTime must be a positive number of seconds; got {tr!r}")
    return float(tr)


def bold_volumes(bold_path):
    """Volumes of a functional run; a clear error when it is not a readable 4-D series."""
    try:
        shape = nib.load(bold_path).shape
    except (OSError, EOFError, nib.filebasedimages.ImageFileError) as error:
        raise BidsReconError(f"{bold_path}: cannot read it as NIfTI ({error})", EXIT_INPUT_MISSING) from None
    if len(shape) != 4 or shape[3] < 2:
        raise BidsReconError(f"{bold_path}: a functional run must be 4-D with at least 2 volumes; "
                             f"got shape {shape}")
    return int(shape[3])


def _is_filter_value(value):
    def is_label(item):
        return isinstance(item, (str, int)) and not isinstance(item, bool)

    return value is None or is_label(value) or (isinstance(value, list) and value and all(map(is_label, value)))
