"""Find what one participant has: runs, their events, and the trials of each set."""
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from bidsrecon.errors import EXIT_INPUT_MISSING, EXIT_NOTHING_SELECTED, BidsReconError


@dataclass
class Run:
    """One functional run and the trials it contributes to one set."""

    bold: str
    events: str
    tr: float
    n_volumes: int
    session: str
    task: str
    run: str
    set_name: str
    trials: pd.DataFrame  # onset, duration, stimulus

    @property
    def label(self):
        """A short name for messages and node names: ``ses-X_task-Y_run-Z``."""
        parts = [f"ses-{self.session}" if self.session else "", f"task-{self.task}", f"run-{self.run}" if self.run else ""]
        return "_".join(p for p in parts if p)


def load_layout(bids_dir):
    """Index a BIDS dataset with pybids; a clear error when it is not one."""
    from bids import BIDSLayout

    bids_dir = Path(bids_dir)
    if not (bids_dir / "dataset_description.json").is_file():
        raise BidsReconError(
            f"{bids_dir} is not a BIDS dataset: it has no dataset_description.json. "
            "Pass the root folder of a BIDS dataset as bids_dir.",
            EXIT_INPUT_MISSING,
        )
    return BIDSLayout(str(bids_dir), validate=False, derivatives=False)


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


def collect_runs(layout, subject, spec, task_labels=None, delay=4.0):
    """Every run of ``subject`` that belongs to a set of ``spec``, with its trials.

    Runs that match no set are skipped. A run whose events run past its last volume
    (after the haemodynamic ``delay``) is an error naming it.
    """
    query = {"subject": subject, "suffix": "bold", "datatype": "func", "extension": [".nii.gz", ".nii"]}
    if task_labels:
        query["task"] = list(task_labels)
    runs = []
    for bold in layout.get(**query):
        entities = bold.get_entities()
        session, task = entities.get("session"), entities.get("task")
        trial_set = spec.trial_set_of(session, task)
        if trial_set is None:
            continue
        events = _events_path(bold.path)
        tr = layout.get_metadata(bold.path).get("RepetitionTime")
        if tr is None:
            raise BidsReconError(f"{bold.path}: no RepetitionTime in its JSON sidecar", EXIT_INPUT_MISSING)
        n_volumes = nib.load(bold.path).shape[-1]
        trials = read_trials(events, trial_set)
        run_end = n_volumes * float(tr)
        needed = float((trials["onset"] + trials["duration"]).max()) + delay if len(trials) else 0.0
        if needed > run_end + 1e-6:
            raise BidsReconError(
                f"{events}: the events need {needed:g} s of data (with the {delay:g}-s delay) but the run "
                f"has {n_volumes} volumes x {float(tr):g} s = {run_end:g} s"
            )
        run_label = entities.get("run")
        runs.append(Run(bold.path, events, float(tr), n_volumes, session, task,
                        f"{int(run_label):02d}" if run_label is not None else "", trial_set.name, trials))
    return runs


def _events_path(bold_path):
    name = Path(bold_path).name
    stem = name[: name.rindex("_bold")]
    events = Path(bold_path).with_name(f"{stem}_events.tsv")
    if not events.is_file():
        raise BidsReconError(f"{bold_path}: its events file {events.name} is missing", EXIT_INPUT_MISSING)
    return str(events)


def read_trials(events_path, trial_set):
    """The trials of one events file that belong to ``trial_set``.

    Returns
    -------
    DataFrame with columns ``onset``, ``duration`` (seconds) and ``stimulus`` (the name).
    """
    events = pd.read_csv(events_path, sep="\t", dtype=str, keep_default_na=False)
    for column in ("onset", "duration", "event_type", trial_set.stimulus_column):
        if column not in events.columns:
            raise BidsReconError(f"{events_path}: no '{column}' column (columns: {', '.join(events.columns)})")
    event_type = pd.to_numeric(events["event_type"], errors="coerce")
    events = events[event_type.isin(trial_set.event_types)]
    values = events[trial_set.stimulus_column].map(_normalise_value)
    if trial_set.stimulus_map is not None:
        unknown = sorted(set(values) - set(trial_set.stimulus_map))
        if unknown:
            raise BidsReconError(
                f"{events_path}: '{trial_set.stimulus_column}' values {', '.join(unknown[:5])} are not in the "
                f"'{trial_set.name}' mapping"
            )
        values = values.map(trial_set.stimulus_map)
    trials = pd.DataFrame({
        "onset": events["onset"].astype(float).to_numpy(),
        "duration": events["duration"].astype(float).to_numpy(),
        "stimulus": values.to_numpy(),
    })
    return trials[trials["stimulus"].notna() & (trials["stimulus"] != "n/a")].reset_index(drop=True)


def _normalise_value(value):
    # Numeric labels are written as "17" or "17.0" by different tools; compare them as integers.
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if np.isfinite(number) and number == int(number) else value
