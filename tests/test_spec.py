"""Decoding specifications: the JSON format, its validation, events filters, the built-in ds001506."""
import json

import numpy as np
import pandas as pd
import pytest

from bidsrecon.errors import BidsReconError
from bidsrecon.simulate.stimuli import imagery_target
from bidsrecon.spec import SPECS, builtin_spec_names, load_spec, parse_event_filter, spec_from_dict

MINIMAL = {
    "name": "mine",
    "training": {"entities": {"session": r"train\d+", "task": "view"}, "events": "trial_type == 'image'"},
    "tests": [{"name": "heldout", "entities": {"session": "test"}, "events": ["trial_type == 'image'"]}],
}


def with_changes(path, value):
    """MINIMAL with one nested key set (path: keys and list indices)."""
    data = json.loads(json.dumps(MINIMAL))
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


def test_builtin_is_a_json_file_read_by_the_same_loader(tmp_path):
    assert "ds001506" in builtin_spec_names()
    builtin = load_spec("ds001506")
    copy = tmp_path / "copy.json"
    from importlib import resources
    copy.write_text(resources.files("bidsrecon").joinpath("specs", "ds001506.json").read_text())
    assert load_spec(copy) == builtin == SPECS["ds001506"]


def test_ds001506_sets():
    spec = load_spec("ds001506")
    assert [s.name for s in spec.sets] == ["training", "natural", "shapes", "letters", "imagery"]
    assert spec.training.required and not any(test.required for test in spec.tests)
    assert spec.training.matches({"session": "perceptionNaturalImageTraining12", "task": "perception"})
    assert not spec.training.matches({"session": "perceptionNaturalImageTest01", "task": "perception"})
    assert not spec.training.matches({"session": "perceptionNaturalImageTraining01", "task": "imagery"})
    # Whole-label match: a prefix is not enough.
    assert not spec.tests[3].matches({"session": "imagery01b", "task": "imagery"})
    # ds001506 up to 1.2.1 spelled the shapes' sessions without the second i.
    for session in ("perceptionArtificialImage01", "perceptionArtificalImage01"):
        assert spec.tests[1].matches({"session": session, "task": "perception"}), session


def test_ds001506_imagery_mapping_is_the_labs():
    # The simulator encodes the lab's mapping independently (REFERENCE.md §3).
    mapping = load_spec("ds001506").tests[3].stimulus_map
    assert mapping == {str(index): imagery_target(index) for index in range(1, 27)}
    assert mapping["1"] == "colorExpStim02_red_smallring" and mapping["16"] is None
    assert mapping["17"] == "n02416519_12793" and mapping["26"] == "n04507155_21299"


def test_ds001506_excludes_one_back_repeats():
    training = load_spec("ds001506").training
    events = pd.DataFrame({"event_type": ["-1", "1", "2", "1", "-2"]})
    selected = np.logical_and.reduce([f.mask(events) for f in training.events])
    repeats = np.logical_and.reduce([f.mask(events) for f in training.repeats.events])
    assert training.repeats.action == "exclude"
    np.testing.assert_array_equal(selected & ~repeats, [False, True, False, True, False])


@pytest.mark.parametrize("text, rows", [
    ("event_type == 1", [True, False, False, False, False]),
    ("event_type != 1", [False, True, True, True, True]),
    ("event_type in [1, 2]", [True, True, False, False, False]),
    ("event_type >= 2", [False, True, True, False, False]),
    ("event_type < 2.5", [True, True, False, True, False]),
    ("event_type <= -1", [False, False, False, True, False]),
    ("event_type > 0", [True, True, True, False, False]),
    ("stimulus == 'on/a'", [False, False, False, False, True]),
    ("stimulus in ['a b', cat]", [True, False, True, False, False]),
    ("stimulus == '17'", [False, True, False, False, False]),
])
def test_event_filters(text, rows):
    events = pd.DataFrame({"event_type": ["1", "2.0", "3", "-1", "n/a"],
                           "stimulus": ["a b", "17", "cat", "n/a", "on/a"]})
    np.testing.assert_array_equal(parse_event_filter(text).mask(events), rows)


def test_object_and_string_filters_agree():
    as_object = parse_event_filter({"column": "event_type", "op": "in", "value": [1, 2]})
    assert as_object == parse_event_filter("event_type in [1, 2]")
    assert str(as_object) == "event_type in [1, 2]"


@pytest.mark.parametrize("bad, fragment", [
    ("event_type = 1", "cannot read the filter"),
    ("__import__('os').system('true')", "cannot read the filter"),
    ("event_type == ", "cannot read the filter"),
    ("trial_type === 'x'", "cannot read the value"),
    ("trial_type == a b", "cannot read the value"),
    ("event_type in 1", "needs a list in brackets"),
    ("event_type in []", "non-empty list"),
    ("stimulus > 'abc'", "compares numbers"),
    ({"column": "x", "op": "=~", "value": 1}, "unknown operator"),
    ({"column": "x", "op": "==", "value": True}, "numbers or strings"),
    ({"column": "x", "op": "==", "value": 1, "extra": 2}, "unknown key 'extra'"),
    ({"column": "x", "op": "in", "value": 3}, "non-empty list"),
    (7, "a string or an object"),
])
def test_bad_filters_are_refused(bad, fragment):
    with pytest.raises(BidsReconError, match=fragment) as error:
        parse_event_filter(bad)
    assert error.value.exit_code == 64


@pytest.mark.parametrize("path, value, fragment", [
    (("colour",), 1, "unknown key 'colour' in the specification; allowed: name, description, training, tests"),
    (("training", "sesion"), "x", "unknown key 'sesion' in training; allowed: entities, events"),
    (("tests", 0, "entities", "subject"), "01", "unknown key 'subject' in tests[0] ('heldout').entities; "
                                                "allowed: session, task, run, acquisition"),
    (("tests", 0, "repeats"), {"events": "x == 2", "mode": "drop"}, "unknown key 'mode'"),
    (("tests", 0, "repeats"), {"events": "x == 2", "action": "average"}, "action must be one of exclude, include"),
    (("training", "entities", "task"), "view(", "not a valid regular expression"),
    (("tests", 0, "name"), "training", "'training' or used twice"),
    (("tests", 0, "required"), "yes", "required must be true or false"),
    (("tests", 0, "stimulus_map"), {"1": 2}, "must be a stimulus name or null"),
    (("tests",), [], "non-empty list"),
    (("training", "events"), "trial_type === 'x'", "training.events"),
    (("training", "events"), [], "training.events is an empty list"),
    (("tests", 0, "events"), ["x == 1", "x <"], "tests[0] ('heldout').events[1]: cannot read the filter"),
    (("description",), 3, "description must be a string"),
])
def test_invalid_specs_name_the_key(path, value, fragment):
    with pytest.raises(BidsReconError) as error:
        spec_from_dict(with_changes(path, value), "my.json")
    assert error.value.exit_code == 64
    assert fragment in str(error.value) and str(error.value).startswith("my.json: ")


def test_missing_required_keys():
    data = json.loads(json.dumps(MINIMAL))
    del data["training"]["events"]
    with pytest.raises(BidsReconError, match="training lacks 'events'"):
        spec_from_dict(data)


def test_stimulus_map_keys_are_normalised():
    spec = spec_from_dict(with_changes(("tests", 0, "stimulus_map"), {"1.0": "a", "2": None}))
    assert spec.tests[0].stimulus_map == {"1": "a", "2": None}
    with pytest.raises(BidsReconError, match="twice"):
        spec_from_dict(with_changes(("tests", 0, "stimulus_map"), {"1.0": "a", "1": "b"}))


def test_load_spec_from_file_and_errors(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(MINIMAL))
    spec = load_spec(str(path))
    assert spec.name == "mine" and spec.tests[0].required and spec.training.stimulus_column == "stimulus_name"
    assert spec.training.columns() == ("stimulus_name", "trial_type")

    with pytest.raises(BidsReconError, match="not a built-in specification; give a JSON file or one of: ds001506") as error:
        load_spec("ds000000")
    assert error.value.exit_code == 64
    with pytest.raises(BidsReconError, match="no such file") as error:
        load_spec(tmp_path / "absent.json")
    assert error.value.exit_code == 66
    path.write_text("{not json")
    with pytest.raises(BidsReconError, match="is not valid JSON") as error:
        load_spec(path)
    assert error.value.exit_code == 64
