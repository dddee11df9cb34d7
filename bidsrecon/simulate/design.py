"""The experiment: sessions, runs and events.tsv tables laid out like ds001506.

Timings (REFERENCE.md §3): every run opens with a 32-s rest (event_type −1) and closes
with a 6-s rest (−2); perception blocks last 8 s (letters 12 s, each followed by a
12-s rest, −3, which gives ds001506's 302-s letter runs); one-back repeats (event_type 2)
show the previous block's image again, about one per ten blocks. Imagery trials are a
4-s cue (1), 8 s of imagery (2), a 3-s vividness rating (3) and a 1-s interval (4).
"""
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bidsrecon.simulate.stimuli import FIXATION_INDEX

TR = 2.0
INITIAL_REST = 32.0
FINAL_REST = 6.0
BLOCK_DURATION = 8.0
LETTER_BLOCK_DURATION = 12.0
LETTER_REST_DURATION = 12.0
IMAGERY_PHASES = ((1, 4.0), (2, 8.0), (3, 3.0), (4, 1.0))
PERCEPTION_COLUMNS = ("onset", "duration", "event_type", "stimulus_id", "stimulus_name",
                      "category_index", "image_index", "response_time")
IMAGERY_COLUMNS = ("onset", "duration", "trial_no", "event_type", "category_id",
                   "category_name", "category_index", "response_time", "evaluation")
SESSION_PREFIXES = {
    "training": "perceptionNaturalImageTraining",
    "test": "perceptionNaturalImageTest",
    "shape": "perceptionArtificialImage",
    "letter": "perceptionLetterImage",
    "imagery": "imagery",
}


@dataclass(frozen=True)
class RunPlan:
    """One functional run: where it goes and what happened in it.

    Attributes
    ----------
    session : str
        Session label without ``ses-``.
    run : int
        Run number within the session, from 1.
    task : str
        ``perception`` or ``imagery``.
    events : pandas.DataFrame
        The events.tsv table, columns in ds001506's order, ``None`` for n/a.
    n_volumes : int
        Volumes in the run; ``n_volumes * TR`` is the end of the last event.
    """

    session: str
    run: int
    task: str
    events: pd.DataFrame
    n_volumes: int


def n_one_back_repeats(n_blocks):
    """One-back repeats for a run of ``n_blocks`` images: about one per ten, at least one."""
    return max(1, int(round(n_blocks / 10)))


def one_back_sequence(names, rng):
    """Insert one-back repeats after randomly chosen blocks.

    Parameters
    ----------
    names : sequence of str
        Stimulus names in presentation order.
    rng : numpy.random.Generator

    Returns
    -------
    list of tuple (str, int)
        (stimulus name, event_type) with event_type 1 for a new image, 2 for a repeat.
    """
    repeated = set(rng.choice(len(names), size=n_one_back_repeats(len(names)), replace=False).tolist())
    sequence = []
    for position, name in enumerate(names):
        sequence.append((name, 1))
        if position in repeated:
            sequence.append((name, 2))
    return sequence


def _rest_row(onset, duration, event_type):
    return {"onset": onset, "duration": duration, "event_type": event_type}


def perception_events(sequence, catalogue, letters, rng):
    """The events.tsv table of one perception run.

    Parameters
    ----------
    sequence : list of tuple (str, int)
        From :func:`one_back_sequence`.
    catalogue : dict of str to Stimulus
    letters : bool
        Letter runs: 12-s blocks, each followed by a 12-s rest (event_type −3).
    rng : numpy.random.Generator
        Draws the button-press times of the one-back repeats.

    Returns
    -------
    pandas.DataFrame
    """
    duration = LETTER_BLOCK_DURATION if letters else BLOCK_DURATION
    rows = [_rest_row(0.0, INITIAL_REST, -1)]
    onset = INITIAL_REST
    for name, event_type in sequence:
        stimulus = catalogue[name]
        rows.append({
            "onset": onset, "duration": duration, "event_type": event_type,
            "stimulus_id": stimulus.stimulus_id, "stimulus_name": name,
            "category_index": stimulus.category_index, "image_index": stimulus.image_index,
            "response_time": round(float(rng.uniform(0.4, 1.2)), 3) if event_type == 2 else None,
        })
        onset += duration
        if letters:
            rows.append(_rest_row(onset, LETTER_REST_DURATION, -3))
            onset += LETTER_REST_DURATION
    rows.append(_rest_row(onset, FINAL_REST, -2))
    return pd.DataFrame(rows, columns=list(PERCEPTION_COLUMNS), dtype=object)


def imagery_sequence(available, n_trials, rng):
    """Category indices of one imagery run's trials.

    With enough trials every available category is used equally often (ds001506: each
    of the 26 once per run); with fewer, fixation and alternating shape and natural
    targets are picked so that each kind appears.

    Parameters
    ----------
    available : list of int
        From :func:`bidsrecon.simulate.stimuli.available_imagery_categories`.
    n_trials : int
    rng : numpy.random.Generator

    Returns
    -------
    list of int
    """
    if n_trials >= len(available):
        repeats = -(-n_trials // len(available))
        pool = np.concatenate([rng.permutation(available) for _ in range(repeats)])[:n_trials]
        return [int(index) for index in pool]
    shapes = [int(i) for i in rng.permutation([i for i in available if i < FIXATION_INDEX])]
    naturals = [int(i) for i in rng.permutation([i for i in available if i > FIXATION_INDEX])]
    chosen = [FIXATION_INDEX]
    while len(chosen) < n_trials:
        for pool in (shapes, naturals):
            if pool and len(chosen) < n_trials:
                chosen.append(pool.pop())
    return [int(index) for index in rng.permutation(chosen)]


def imagery_events(category_indices, category_labels, rng):
    """The events.tsv table of one imagery run.

    Parameters
    ----------
    category_indices : list of int
        One per trial, 1–26 in the lab's mapping.
    category_labels : dict of int to tuple (str, str)
        category_index → (category_id, category_name) as written in ds001506, which
        does not name the imagined target.
    rng : numpy.random.Generator
        Draws ratings and their response times.

    Returns
    -------
    pandas.DataFrame
    """
    rows = [_rest_row(0.0, INITIAL_REST, -1)]
    onset = INITIAL_REST
    for trial_no, category_index in enumerate(category_indices, start=1):
        category_id, category_name = category_labels[category_index]
        evaluation = int(rng.choice([1, 2, 3, 4, 5], p=[0.05, 0.15, 0.3, 0.3, 0.2]))
        for event_type, duration in IMAGERY_PHASES:
            rows.append({
                "onset": onset, "duration": duration, "trial_no": trial_no,
                "event_type": event_type, "category_id": category_id,
                "category_name": category_name, "category_index": category_index,
                "response_time": round(float(rng.uniform(0.5, 2.5)), 3) if event_type == 3 else None,
                "evaluation": evaluation,
            })
            onset += duration
    rows.append(_rest_row(onset, FINAL_REST, -2))
    return pd.DataFrame(rows, columns=list(IMAGERY_COLUMNS), dtype=object)


def run_volumes(events):
    """Volumes that cover a run's events exactly (the timeline ends on a TR boundary)."""
    end = float(events["onset"].iloc[-1] + events["duration"].iloc[-1])
    n_volumes = int(round(end / TR))
    if not np.isclose(n_volumes * TR, end):
        raise ValueError(f"run length {end} s is not a multiple of TR {TR} s")
    return n_volumes


def _sessions(kind, runs, runs_per_session, task):
    """Group a kind's event tables into numbered sessions, runs numbered per session."""
    per_session = len(runs) if kind == "letter" else runs_per_session
    plans = []
    for index, events in enumerate(runs):
        session = f"{SESSION_PREFIXES[kind]}{index // per_session + 1:02d}"
        plans.append(RunPlan(session, index % per_session + 1, task, events, run_volumes(events)))
    return plans


def _chunks(items, size):
    return [items[start:start + size] for start in range(0, len(items), size)]


def plan_subject(preset, stimulus_set, category_indices_available, category_labels, rng):
    """Every run of one subject, in ds001506's sessions.

    Parameters
    ----------
    preset : SimulationPreset
    stimulus_set : StimulusSet
    category_indices_available : list of int
        Imagery categories whose target exists.
    category_labels : dict of int to tuple (str, str)
        Misleading imagery labels, see :func:`imagery_events`.
    rng : numpy.random.Generator
        Presentation orders, repeats, responses and ratings of this subject.

    Returns
    -------
    list of RunPlan
    """
    catalogue = {stimulus.name: stimulus for stimulus in stimulus_set.stimuli}

    def names(kind):
        return [stimulus.name for stimulus in stimulus_set.of_kind(kind)]

    def shuffled(kind):
        return [names(kind)[index] for index in rng.permutation(len(names(kind)))]

    training_orders = []
    for _ in range(preset.n_training_presentations):
        training_orders += _chunks(shuffled("training"), preset.training_blocks_per_run)
    plans = []
    for kind, orders in (
        ("training", training_orders),
        ("test", [shuffled("test") for _ in range(preset.n_test_runs)]),
        ("shape", [shuffled("shape") for _ in range(preset.n_shape_runs)]),
        ("letter", [shuffled("letter") for _ in range(preset.n_letter_runs)]),
    ):
        tables = [perception_events(one_back_sequence(order, rng), catalogue, kind == "letter", rng)
                  for order in orders]
        if kind == "letter" and tables:
            # ds001506's first letter run carries a stray "on/a" in a rest row.
            first_rest = tables[0].index[tables[0]["event_type"] == -3][0]
            tables[0].loc[first_rest, "stimulus_id"] = "on/a"
        plans += _sessions(kind, tables, preset.runs_per_session, "perception")
    imagery_tables = [
        imagery_events(imagery_sequence(category_indices_available, preset.n_imagery_trials, rng),
                       category_labels, rng)
        for _ in range(preset.n_imagery_runs)
    ]
    plans += _sessions("imagery", imagery_tables, preset.runs_per_session, "imagery")
    return plans
