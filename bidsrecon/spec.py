"""What is trained on and what is reconstructed: the decoding specification.

A specification is a JSON file (``--spec FILE``) or the name of a built-in one (``--spec
ds001506``, shipped in ``bidsrecon/specs/``); both go through :func:`load_spec`. It names the
training split and each test set by

- ``entities``: regular expressions that the whole BIDS label must match, on ``session``,
  ``task``, ``run`` (as written in the file name, e.g. ``01``) and ``acquisition``; a run without
  the entity is matched as the empty string; an entity left out is not constrained;
- ``events``: which events.tsv rows are trials, as one filter or a list that must all hold. A
  filter is ``"event_type == 1"`` or ``{"column": "event_type", "op": "==", "value": 1}``, with
  ``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=`` or ``in`` (a list: ``"event_type in [1, 2]"``).
  Numbers compare numerically (a cell that is not a number matches only ``!=``), strings compare
  as text; quote strings that look like numbers (``"stimulus_id == '17'"``). Filters are parsed,
  never evaluated as code;
- ``stimulus_column``: the events column naming the stimulus (default ``stimulus_name``);
- ``stimulus_map`` (optional): events value → stimulus name, ``null`` for a trial without target
  (dropped); a value missing from the map is an error. Numeric values are compared as integers
  when they are whole (``17`` and ``17.0`` are the same key);
- ``repeats`` (optional): ``{"events": <filters>, "action": "exclude" | "include"}``, the rows that
  repeat an earlier presentation and whether they are dropped or kept as extra trials (kept ones
  are marked in the trial table's ``repeat`` column);
- ``required`` (test sets, default true): whether a test set that selects nothing for a
  participant is an error (exit 18) or only a warning.

At the top level, ``baseline`` (optional): ``{"events": <filters>}``, the events.tsv rows that are
rest, to which ``--normalise rest`` (the default when the key is there) expresses every voxel of a
run in percent signal change (the volumes inside those events, after ``--discard-seconds``;
REFERENCE.md §2). ds001506's is the 32-s rest that opens every run and the 12-s rests between
letter blocks, ``"event_type in [-1, -3]"`` (the paper names the opening rest only;
``docs/validity.md``, "Normalising to the rest"). A
specification without it normalises by z-scoring each run (``--normalise zscore``).

Example::

    {"name": "mine",
     "training": {"entities": {"session": "train\\\\d+", "task": "view"},
                  "events": "trial_type == 'image'", "stimulus_column": "stim"},
     "tests": [{"name": "heldout", "entities": {"session": "test\\\\d+", "task": "view"},
                "events": ["trial_type == 'image'", "onset >= 10"], "stimulus_column": "stim"}]}
"""
import json
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.names import check_label

ENTITY_KEYS = ("session", "task", "run", "acquisition")
OPERATORS = ("==", "!=", "<", "<=", ">", ">=", "in")
REPEAT_ACTIONS = ("exclude", "include")
TRAINING = "training"
_SPEC_KEYS = ("name", "description", "training", "tests", "baseline")
_BASELINE_KEYS = ("events",)
NORMALISATIONS = ("rest", "zscore")
_SET_KEYS = ("entities", "events", "stimulus_column", "stimulus_map", "repeats")
_TEST_KEYS = ("name", "required", *_SET_KEYS)
_REPEAT_KEYS = ("events", "action")
_FILTER_KEYS = ("column", "op", "value")
_FILTER_PATTERN = re.compile(
    r"\s*(?P<column>[A-Za-z_][\w.\-]*)\s*(?P<op>==|!=|<=|>=|<|>|(?<=\s)in(?=[\s\[]))\s*(?P<value>.*?)\s*")
_VALUE_TOKEN = re.compile(r"\s*(?:'(?P<single>[^']*)'|\"(?P<double>[^\"]*)\"|(?P<bare>[^\s,'\"\[\]=<>!]+))\s*(?:,|$)")


@dataclass(frozen=True)
class EventFilter:
    """One condition on an events column.

    Parameters
    ----------
    column : str
    op : str
        One of :data:`OPERATORS`.
    value : int, float, str, or tuple of them
        A tuple for ``in``; a number for the ordering operators.
    """

    column: str
    op: str
    value: object

    def __str__(self):
        if self.op == "in":
            return f"{self.column} in [{', '.join(_format_value(v) for v in self.value)}]"
        return f"{self.column} {self.op} {_format_value(self.value)}"

    def mask(self, events):
        """Rows of ``events`` (a table of strings) that satisfy the filter, as a boolean array."""
        cells = events[self.column].astype(str).str.strip()
        if self.op == "in":
            return np.logical_or.reduce([_compare(cells, "==", value) for value in self.value])
        return _compare(cells, self.op, self.value)


@dataclass(frozen=True)
class RepeatRule:
    """Which rows repeat an earlier presentation, and whether they are kept (``include``)."""

    events: tuple
    action: str = "exclude"


@dataclass(frozen=True)
class TrialSet:
    """One set of trials: the training split or one named test set.

    Parameters
    ----------
    name : str
        ``training`` or the test set's name (``natural``, ``shapes``...); used in output names.
    entities : dict of str to str
        Regular expression per entity of :data:`ENTITY_KEYS` that the whole label must match.
    events : tuple of EventFilter
        Conditions that every trial row satisfies.
    stimulus_column : str
        Events column naming the stimulus.
    stimulus_map : dict or None
        Normalised events value → stimulus name (None: no target, the trial is dropped).
    repeats : RepeatRule or None
    required : bool
        Whether selecting nothing for a participant is an error.
    """

    name: str
    entities: dict = field(hash=False)
    events: tuple
    stimulus_column: str = "stimulus_name"
    stimulus_map: dict = field(default=None, hash=False)
    repeats: RepeatRule = None
    required: bool = True

    def matches(self, entities):
        """Whether a run with these entity labels (a dict; missing means absent) belongs to the set."""
        return all(re.fullmatch(pattern, str(entities.get(key) or "")) is not None
                   for key, pattern in self.entities.items())

    def columns(self):
        """Events columns the set reads: the stimulus column and those its filters test."""
        conditions = self.events + (self.repeats.events if self.repeats else ())
        return tuple(dict.fromkeys([self.stimulus_column, *(condition.column for condition in conditions)]))

    def describe_entities(self):
        """The entity filters in words, for messages: ``session ~ 'x\\d+', task ~ 'perception'``."""
        if not self.entities:
            return "any run"
        return ", ".join(f"{key} ~ '{pattern}'" for key, pattern in self.entities.items())

    def describe_events(self):
        """The events filters in words, for messages."""
        text = " and ".join(str(condition) for condition in self.events) or "every row"
        if self.repeats is not None:
            repeat = " and ".join(str(condition) for condition in self.repeats.events)
            text += f" (repeats: {repeat}, {self.repeats.action}d)"
        return text


@dataclass(frozen=True)
class Spec:
    """A decoding specification: the training split and the test sets."""

    name: str
    training: TrialSet
    tests: tuple
    description: str = ""
    baseline: tuple = ()  # EventFilters of the rest rows (all must hold); () when not named

    @property
    def sets(self):
        """The training split then every test set."""
        return (self.training, *self.tests)

    def describe_baseline(self):
        """The baseline filters in words, for messages."""
        return " and ".join(str(condition) for condition in self.baseline) or "none"


def default_normalisation(spec):
    """``rest`` when ``spec`` names the rest events (its ``baseline``), else ``zscore``."""
    return "rest" if spec.baseline else "zscore"


def resolve_normalisation(normalise, spec):
    """``--normalise`` as given, or the specification's default when it was not given (None)."""
    if normalise is None:
        return default_normalisation(spec)
    if normalise not in NORMALISATIONS:
        raise BidsReconError(f"--normalise must be one of {', '.join(NORMALISATIONS)}; got {normalise!r}",
                             EXIT_BAD_ARGUMENTS)
    if normalise == "rest" and not spec.baseline:
        raise BidsReconError(f"--normalise rest needs a specification that names the rest events, and "
                             f"specification '{spec.name}' has no \"baseline\"; add one, e.g. "
                             '"baseline": {"events": "event_type == -1"}, or pass --normalise zscore',
                             EXIT_BAD_ARGUMENTS)
    return normalise


def builtin_spec_names():
    """Names of the specifications shipped with bidsrecon (``--spec NAME``)."""
    folder = resources.files("bidsrecon").joinpath("specs")
    return sorted(entry.name[: -len(".json")] for entry in folder.iterdir() if entry.name.endswith(".json"))


def load_spec(name_or_path):
    """Read a decoding specification: a built-in name or a JSON file.

    Parameters
    ----------
    name_or_path : str or pathlib.Path
        A name of :func:`builtin_spec_names` or the path of a JSON file.

    Returns
    -------
    Spec

    Raises
    ------
    BidsReconError
        Exit 64 for an unknown name, invalid JSON or an invalid specification (the message
        names the offending key and what is allowed); exit 66 for a file that does not exist.
    """
    text = str(name_or_path)
    if text in builtin_spec_names():
        source = f"built-in specification '{text}'"
        content = resources.files("bidsrecon").joinpath("specs", f"{text}.json").read_text()
    else:
        path = Path(text)
        if not path.is_file():
            looks_like_path = path.suffix.lower() == ".json" or len(path.parts) > 1
            raise BidsReconError(
                f"--spec {text}: {'no such file' if looks_like_path else 'not a built-in specification'}; "
                f"give a JSON file or one of: {', '.join(builtin_spec_names())}",
                EXIT_INPUT_MISSING if looks_like_path else EXIT_BAD_ARGUMENTS,
            )
        source = str(path)
        try:
            content = path.read_text()
        except UnicodeDecodeError as error:
            raise BidsReconError(f"{source} is not UTF-8 text ({error}); save it as UTF-8 JSON") from None
    try:
        data = json.loads(content)
    except (ValueError, RecursionError) as error:
        raise BidsReconError(f"{source} is not valid JSON: {error}") from None
    return spec_from_dict(data, source)


def spec_from_dict(data, source="specification"):
    """Check and convert the JSON content of a specification.

    Parameters
    ----------
    data : dict
        Parsed JSON (see the module docstring for the keys).
    source : str
        Where it came from, for messages.

    Returns
    -------
    Spec
    """
    _check_object(data, _SPEC_KEYS, ("name", "training", "tests"), source, "the specification")
    name = _check_text(data["name"], source, "name")
    training = _trial_set(data["training"], TRAINING, True, source, "training")
    tests = data["tests"]
    if not isinstance(tests, list) or not tests:
        raise BidsReconError(f"{source}: 'tests' must be a non-empty list of test sets; got {tests!r}")
    test_sets = []
    for index, entry in enumerate(tests):
        where = f"tests[{index}]"
        _check_object(entry, _TEST_KEYS, ("name",), source, where)
        test_name = check_label(_check_text(entry["name"], source, f"{where}.name"), f"{source}: {where}.name")
        if test_name == TRAINING or test_name in (t.name for t in test_sets):
            raise BidsReconError(f"{source}: {where}.name '{test_name}' is 'training' or used twice; "
                                 "give every test set its own name")
        required = entry.get("required", True)
        if not isinstance(required, bool):
            raise BidsReconError(f"{source}: {where}.required must be true or false; got {required!r}")
        test_sets.append(_trial_set(entry, test_name, required, source, f"{where} ('{test_name}')"))
    description = data.get("description", "")
    if not isinstance(description, str):
        raise BidsReconError(f"{source}: description must be a string; got {description!r}")
    baseline = ()
    if "baseline" in data:
        _check_object(data["baseline"], _BASELINE_KEYS, _BASELINE_KEYS, source, "baseline")
        baseline = _filters(data["baseline"]["events"], source, "baseline.events")
    return Spec(name, training, tuple(test_sets), description, baseline)


def parse_event_filter(condition, where="events"):
    """One events filter from its string or object form.

    Parameters
    ----------
    condition : str or dict
        ``"event_type == 1"`` or ``{"column": "event_type", "op": "==", "value": 1}``.
    where : str
        Where it was written, for messages.

    Returns
    -------
    EventFilter
    """
    if isinstance(condition, str):
        match = _FILTER_PATTERN.fullmatch(condition)
        if match is None or not match["value"]:
            raise BidsReconError(
                f"{where}: cannot read the filter {condition!r}; write 'COLUMN OP VALUE' with OP one of "
                f"{' '.join(OPERATORS)} (e.g. \"event_type == 1\", \"event_type in [1, 2]\")")
        column, op = match["column"], match["op"]
        value = _parse_list(match["value"], where) if op == "in" else _parse_value(match["value"], where)
    elif isinstance(condition, dict):
        _check_object(condition, _FILTER_KEYS, _FILTER_KEYS, where, "the filter")
        column, op, value = condition["column"], condition["op"], condition["value"]
        if not isinstance(column, str) or not column:
            raise BidsReconError(f"{where}: 'column' must be a column name; got {column!r}")
        if op == "in":
            if not isinstance(value, list) or not value:
                raise BidsReconError(f"{where}: 'in' needs a non-empty list as value; got {value!r}")
            value = tuple(value)
    else:
        raise BidsReconError(f"{where}: a filter is a string or an object; got {condition!r}")
    if op not in OPERATORS:
        raise BidsReconError(f"{where}: unknown operator {op!r}; allowed: {', '.join(OPERATORS)}")
    for item in value if op == "in" else (value,):
        if isinstance(item, bool) or not isinstance(item, (int, float, str)) or (
                isinstance(item, float) and not math.isfinite(item)):
            raise BidsReconError(f"{where}: filter values are numbers or strings; got {item!r}")
    if op in ("<", "<=", ">", ">=") and isinstance(value, str):
        raise BidsReconError(f"{where}: '{op}' compares numbers; got the string {value!r}")
    return EventFilter(column, op, value)


def normalise_value(value):
    """An events cell as a mapping key: whole numbers written ``17`` or ``17.0`` become ``"17"``."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if math.isfinite(number) and number == int(number) else text


def _trial_set(data, name, required, source, where):
    _check_object(data, _TEST_KEYS if name != TRAINING else _SET_KEYS, ("events",), source, where)
    entities = data.get("entities", {})
    _check_object(entities, ENTITY_KEYS, (), source, f"{where}.entities")
    for key, pattern in entities.items():
        if not isinstance(pattern, str):
            raise BidsReconError(f"{source}: {where}.entities.{key} must be a regular expression string; got {pattern!r}")
        try:
            re.compile(pattern)
        except re.error as error:
            raise BidsReconError(f"{source}: {where}.entities.{key} {pattern!r} is not a valid regular expression "
                                 f"({error})") from None
    events = _filters(data["events"], source, f"{where}.events")
    stimulus_column = _check_text(data.get("stimulus_column", "stimulus_name"), source, f"{where}.stimulus_column")
    return TrialSet(name, dict(entities), events, stimulus_column,
                    _stimulus_map(data.get("stimulus_map"), source, where),
                    _repeats(data.get("repeats"), source, where), required)


def _filters(conditions, source, where):
    if conditions == []:
        raise BidsReconError(f"{source}: {where} is an empty list; give at least one filter")
    if not isinstance(conditions, list):
        return (parse_event_filter(conditions, f"{source}: {where}"),)
    return tuple(parse_event_filter(entry, f"{source}: {where}[{index}]") for index, entry in enumerate(conditions))


def _stimulus_map(mapping, source, where):
    if mapping is None:
        return None
    if not isinstance(mapping, dict) or not mapping:
        raise BidsReconError(f"{source}: {where}.stimulus_map must be a non-empty object; got {mapping!r}")
    normalised = {}
    for key, name in mapping.items():
        if name is not None and (not isinstance(name, str) or not name):
            raise BidsReconError(f"{source}: {where}.stimulus_map['{key}'] must be a stimulus name or null; got {name!r}")
        if normalise_value(key) in normalised:
            raise BidsReconError(f"{source}: {where}.stimulus_map has '{key}' twice (as {normalise_value(key)})")
        normalised[normalise_value(key)] = name
    return normalised


def _repeats(rule, source, where):
    if rule is None:
        return None
    _check_object(rule, _REPEAT_KEYS, ("events",), source, f"{where}.repeats")
    action = rule.get("action", "exclude")
    if action not in REPEAT_ACTIONS:
        raise BidsReconError(f"{source}: {where}.repeats.action must be one of {', '.join(REPEAT_ACTIONS)}; "
                             f"got {action!r}")
    return RepeatRule(_filters(rule["events"], source, f"{where}.repeats.events"), action)


def _check_object(data, allowed, required, source, where):
    if not isinstance(data, dict):
        raise BidsReconError(f"{source}: {where} must be a JSON object; got {data!r}")
    for key in data:
        if key not in allowed:
            raise BidsReconError(f"{source}: unknown key '{key}' in {where}; allowed: {', '.join(allowed)}")
    missing = [key for key in required if key not in data]
    if missing:
        raise BidsReconError(f"{source}: {where} lacks {', '.join(repr(k) for k in missing)}")


def _check_text(value, source, where):
    if not isinstance(value, str) or not value.strip():
        raise BidsReconError(f"{source}: {where} must be a non-empty string; got {value!r}")
    return value


def _parse_value(text, where):
    match = _VALUE_TOKEN.fullmatch(text)
    if match is None or text.rstrip().endswith(","):
        raise BidsReconError(f"{where}: cannot read the value {text!r}; write a number, a word, or a quoted string")
    return _token_value(match)


def _token_value(match):
    """A quoted token is a string; a bare one a number when it reads as one, else a string."""
    if match["single"] is not None or match["double"] is not None:
        return match["single"] if match["single"] is not None else match["double"]
    token = match["bare"]
    try:
        number = float(token)
    except ValueError:
        return token
    if not math.isfinite(number):
        return token
    return int(number) if re.fullmatch(r"[+-]?\d+", token) else number


def _parse_list(text, where):
    if not (text.startswith("[") and text.endswith("]")):
        raise BidsReconError(f"{where}: 'in' needs a list in brackets, e.g. [1, 2]; got {text!r}")
    inner = text[1:-1]
    items, position = [], 0
    while position < len(inner):
        match = _VALUE_TOKEN.match(inner, position)
        if match is None or match.end() == position:
            raise BidsReconError(f"{where}: cannot read the list {text!r}")
        items.append(_token_value(match))
        position = match.end()
    if not items:
        raise BidsReconError(f"{where}: 'in' needs a non-empty list; got {text!r}")
    return tuple(items)


def _format_value(value):
    return repr(value) if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)


def _compare(cells, op, value):
    """Cells (strings) against one value: numerically for a number, as text for a string."""
    if isinstance(value, str):
        left, right = cells, value
    else:
        left, right = pd.to_numeric(cells, errors="coerce"), value
    result = {"==": left == right, "!=": left != right, "<": left < right, "<=": left <= right,
              ">": left > right, ">=": left >= right}[op]
    return np.asarray(result, dtype=bool)


SPECS = {name: load_spec(name) for name in builtin_spec_names()}
"""The built-in specifications by name, read through :func:`load_spec` like any file."""
