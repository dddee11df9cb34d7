"""A run's events: found by the BIDS inheritance principle, read, and turned into trials.

The events file of a run is the ``_events.tsv`` whose entities are all the run's (``echo-`` and
``part-`` aside) in the run's folder or a parent folder, the nearest and then the most specific
winning (:func:`events_path`). :func:`read_events` reads one as strings with its onsets checked;
:func:`read_trials` selects a set's trials and :func:`read_baseline` the rest rows.
"""
import re
from pathlib import Path

import numpy as np
import pandas as pd

from bidsrecon.errors import EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.spec import normalise_value

#: The echo entity of a multi-echo run's file name.
ECHO_ENTITY = re.compile(r"_echo-[a-zA-Z0-9]+_")



def read_trials(events_path, trial_set):
    """The trials of one events file that belong to ``trial_set``.

    Returns
    -------
    DataFrame
        ``onset``, ``duration`` (seconds), ``stimulus`` (the name), ``repeat`` (bool), and
        ``stim_file`` (relative to ``stimuli/``) when the events have that column and the set
        maps no values (a mapped target is another trial's image).
    """
    events = read_events(events_path)
    missing = [column for column in trial_set.columns() if column not in events.columns]
    if missing:
        raise BidsReconError(
            f"{events_path}: no column {', '.join(repr(c) for c in missing)}, which the '{trial_set.name}' set "
            f"reads (columns: {', '.join(events.columns)})")
    selected = np.logical_and.reduce([condition.mask(events) for condition in trial_set.events])
    repeat = np.zeros(len(events), dtype=bool)
    if trial_set.repeats is not None:
        repeat = np.logical_and.reduce([condition.mask(events) for condition in trial_set.repeats.events])
        if trial_set.repeats.action == "exclude":
            selected &= ~repeat
    rows = events[selected]
    stimulus = _stimulus_names(rows[trial_set.stimulus_column], trial_set, events_path)
    trials = pd.DataFrame({
        "onset": rows["onset"].astype(float).to_numpy(),
        "duration": _durations(rows, events_path),
        "stimulus": stimulus.to_numpy(),
        "repeat": repeat[selected],
    })
    if "stim_file" in events.columns and trial_set.stimulus_map is None:
        trials["stim_file"] = rows["stim_file"].where(rows["stim_file"] != "n/a", None).to_numpy()
    # A null mapping (fixation) or an n/a name has no image to reconstruct.
    keep = trials["stimulus"].notna() & (trials["stimulus"] != "n/a")
    return trials[keep.to_numpy()].reset_index(drop=True)


def read_events(events_path):
    """An events.tsv as a table of strings, its ``onset`` column checked to be numeric.

    A file with a header and no row is an error, not a run without trials: the spec selected the run,
    so its events are missing (silently dropping it would change the training or test data).
    """
    try:
        events = pd.read_csv(events_path, sep="\t", dtype=str, keep_default_na=False)
    except UnicodeDecodeError:
        raise BidsReconError(f"{events_path}: not UTF-8 text ({_first_non_utf8(events_path)}); BIDS text files "
                             "are UTF-8: save it with that encoding") from None
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise BidsReconError(f"{events_path}: cannot read it as a tab-separated table ({error})") from None
    if events.empty:
        raise BidsReconError(f"{events_path}: no events (a header and no row); add the run's events, or leave "
                             "the run out (--bids-filter-file, --session-label)", EXIT_INPUT_MISSING)
    for column in ("onset", "duration"):
        if column not in events.columns:
            raise BidsReconError(f"{events_path}: no '{column}' column (columns: {', '.join(events.columns)})")
    onsets = pd.to_numeric(events["onset"], errors="coerce")
    bad = np.flatnonzero(~np.isfinite(onsets.to_numpy(dtype=float)))
    if len(bad):
        raise BidsReconError(_bad_cells_message(events_path, "onset", events["onset"], bad))
    return events


def read_baseline(events_path, filters):
    """The rest rows of one events file that the specification's ``baseline`` filters select.

    Returns
    -------
    DataFrame
        ``onset`` and ``duration`` (s); empty when no row matches, or when the file lacks a column
        the filters test (the caller says what is missing when it needs the rest).
    """
    events = read_events(events_path)
    if any(condition.column not in events.columns for condition in filters):
        return pd.DataFrame({"onset": [], "duration": []}, dtype=float)
    rows = events[np.logical_and.reduce([condition.mask(events) for condition in filters])]
    return pd.DataFrame({"onset": rows["onset"].astype(float).to_numpy(), "duration": _durations(rows, events_path)})


def _stimulus_names(values, trial_set, events_path):
    if trial_set.stimulus_map is None:
        return values.str.strip()
    keys = values.map(normalise_value)
    unknown = sorted(set(keys) - set(trial_set.stimulus_map))
    if unknown:
        raise BidsReconError(
            f"{events_path}: '{trial_set.stimulus_column}' values {', '.join(unknown)} are not in the "
            f"'{trial_set.name}' set's stimulus_map")
    return keys.map(trial_set.stimulus_map)


def _durations(rows, events_path):
    durations = pd.to_numeric(rows["duration"], errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~(np.isfinite(durations) & (durations > 0)))
    if len(bad):
        raise BidsReconError(_bad_cells_message(events_path, "duration", rows["duration"], bad, "a positive number"))
    return durations


def _bad_cells_message(events_path, column, cells, bad, expected="a number"):
    # Line numbers as an editor shows them: the header is line 1.
    lines = [f"line {cells.index[i] + 2} ({cells.iloc[i]!r})" for i in bad[:10]]
    more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
    return f"{events_path}: '{column}' must be {expected} in every trial row; got {', '.join(lines)}{more}"


def _first_non_utf8(path):
    """Where a file stops being UTF-8, as an editor shows it: ``byte 0xe9 on line 7``."""
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        return f"byte 0x{data[error.start]:02x} on line {line}"
    return "an undecodable byte"


#: Entities of a bold file that its events do not carry: one events file serves every echo and part.
_NOT_IN_EVENTS = ("echo", "part")
#: pybids' entities that are not in a file name's key-value pairs.
_NOT_ENTITIES = ("suffix", "extension", "datatype")


def events_path(layout, bold_path):
    """The events file of a bold run, by the BIDS inheritance principle (see the module docstring)."""
    bold = layout.get_file(bold_path)
    entities = {key: value for key, value in bold.get_entities().items()
                if key not in _NOT_ENTITIES + _NOT_IN_EVENTS}
    folder = Path(bold_path).parent
    candidates = []
    for events in layout.get(suffix="events", extension=".tsv", task=entities.get("task")):
        own = {key: value for key, value in events.get_entities().items() if key not in _NOT_ENTITIES}
        where = Path(events.path).parent
        if (where == folder or where in folder.parents) and all(
                key in entities and entities[key] == value for key, value in own.items()):
            candidates.append((len(where.parts), len(own), events.path))
    expected = ECHO_ENTITY.sub("_", Path(bold_path).name)
    expected = re.sub(r"_part-[a-zA-Z0-9]+_", "_", expected)
    expected = expected[: expected.rindex("_bold")] + "_events.tsv"
    if not candidates:
        raise BidsReconError(f"{bold_path}: its events file {expected} is missing (nor does a parent folder hold one "
                             "that applies to it)", EXIT_INPUT_MISSING)
    candidates.sort(reverse=True)
    if len(candidates) > 1 and candidates[0][:2] == candidates[1][:2]:
        names = ", ".join(Path(path).name for *_, path in candidates[:2])
        raise BidsReconError(f"{bold_path}: several events files apply to it equally ({names}); keep one "
                             f"(name it {expected})")
    return candidates[0][2]
