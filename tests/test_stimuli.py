"""Stimulus lookup: by name or stim_file, every missing name listed, nothing read outside its folder."""
import os

import pandas as pd
import pytest

from bidsrecon.bids.stimuli import find_stimuli, stim_file_map
from bidsrecon.errors import BidsReconError


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"image")
    return path


@pytest.fixture
def stimuli(tmp_path):
    folder = tmp_path / "stimuli"
    touch(folder / "a.png")
    touch(folder / "nested" / "b.JPEG")
    touch(folder / "images" / "c.jpg")
    touch(folder / "notes.txt")
    return folder


def test_by_name_any_extension_any_depth(stimuli):
    found = find_stimuli(["a", "b"], [stimuli])
    assert found == {"a": str(stimuli / "a.png"), "b": str(stimuli / "nested" / "b.JPEG")}


def test_first_folder_wins(stimuli, tmp_path):
    other = tmp_path / "other"
    touch(other / "a.bmp")
    assert find_stimuli(["a"], [other, stimuli]) == {"a": str(other / "a.bmp")}
    assert find_stimuli(["a"], [stimuli, other]) == {"a": str(stimuli / "a.png")}


def test_stim_file_relative_to_the_folder(stimuli):
    found = find_stimuli(["cat", "a"], [stimuli], stim_files={"cat": "images/c.jpg"})
    assert found == {"cat": str(stimuli / "images" / "c.jpg"), "a": str(stimuli / "a.png")}


def test_every_missing_name_is_listed(stimuli):
    names = [f"missing{index:02d}" for index in range(12)]
    with pytest.raises(BidsReconError) as error:
        find_stimuli(["a", *names, "gone"], [stimuli], stim_files={"gone": "images/gone.png"})
    message = str(error.value)
    assert error.value.exit_code == 66
    assert message.startswith(f"13 stimulus image(s) not found under {stimuli}: ")
    assert all(name in message for name in names) and "gone (stim_file images/gone.png)" in message
    assert "notes" not in message and "a," not in message


@pytest.mark.parametrize("stim_file", ["../secret.png", "images/../../secret.png", "/etc/passwd",
                                       "C:\\secret.png", "..\\secret.png"])
def test_stim_file_escaping_is_refused(stimuli, stim_file):
    touch(stimuli.parent / "secret.png")
    with pytest.raises(BidsReconError, match="would reach outside") as error:
        find_stimuli(["x"], [stimuli], stim_files={"x": stim_file})
    assert error.value.exit_code == 64 and stim_file in str(error.value)


@pytest.mark.parametrize("name", ["../secret", "sub/secret", "..", "/secret"])
def test_name_escaping_is_refused(stimuli, name):
    with pytest.raises(BidsReconError, match="would reach outside") as error:
        find_stimuli([name], [stimuli])
    assert error.value.exit_code == 64 and repr(name) in str(error.value)


def test_symlink_out_of_the_folder_is_refused(stimuli):
    secret = touch(stimuli.parent / "private" / "secret.png")
    os.symlink(secret, stimuli / "leak.png")
    os.symlink(secret.parent, stimuli / "linked_folder")
    with pytest.raises(BidsReconError, match="would reach outside") as error:
        find_stimuli(["leak"], [stimuli])
    assert "leak" in str(error.value)
    with pytest.raises(BidsReconError, match="would reach outside"):
        find_stimuli(["x"], [stimuli], stim_files={"x": "linked_folder/secret.png"})
    # A symbolic link that stays inside the folder is fine.
    os.symlink(stimuli / "a.png", stimuli / "alias.png")
    assert find_stimuli(["alias"], [stimuli]) == {"alias": str(stimuli / "alias.png")}


def test_a_name_matching_two_images_is_ambiguous(stimuli):
    touch(stimuli / "other" / "a.jpg")
    with pytest.raises(BidsReconError, match="match several images") as error:
        find_stimuli(["a"], [stimuli])
    assert str(stimuli / "a.png") in str(error.value) and str(stimuli / "other" / "a.jpg") in str(error.value)


def test_stim_file_map():
    trials = pd.DataFrame({"stimulus": ["a", "b", "a", "c"], "stim_file": ["x/a.png", None, "x/a.png", "c.png"]})
    assert stim_file_map(trials) == {"a": "x/a.png", "c": "c.png"}
    assert stim_file_map(trials.drop(columns="stim_file")) == {}
    trials.loc[2, "stim_file"] = "y/a.png"
    with pytest.raises(BidsReconError, match=r"a \(x/a.png, y/a.png\)"):
        stim_file_map(trials)
