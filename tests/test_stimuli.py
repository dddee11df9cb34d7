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


# --- git-annex / DataLad ----------------------------------------------------------------------

def annex_object(dataset, key, content=b"image"):
    """A fetched git-annex object: ``.git/annex/objects/xx/yy/KEY/KEY``."""
    return touch_bytes(dataset / ".git" / "annex" / "objects" / "Xx" / "Yy" / key / key, content)


def touch_bytes(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def annex_link(link, target):
    """A relative symbolic link, as git-annex makes them."""
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(target, link.parent), link)
    return link


@pytest.fixture
def annexed(tmp_path):
    """A DataLad-like dataset: stimuli/ holds links into its own .git/annex/objects."""
    dataset = tmp_path / "ds"
    (dataset / ".git").mkdir(parents=True)
    for name in ("a", "b"):
        key = f"MD5E-s5--{name * 32}.png"
        annex_link(dataset / "stimuli" / f"{name}.png", annex_object(dataset, key))
    return dataset


def test_annexed_stimuli_are_accepted(annexed):
    folder = annexed / "stimuli"
    assert os.readlink(folder / "a.png").startswith("../.git/annex/objects/")
    assert find_stimuli(["a", "b"], [folder]) == {"a": str(folder / "a.png"), "b": str(folder / "b.png")}
    assert find_stimuli(["x"], [folder], stim_files={"x": "b.png"}) == {"x": str(folder / "b.png")}
    # The dataset root as the folder: the annex's own files (named by key) are not searched.
    assert find_stimuli(["a"], [annexed]) == {"a": str(folder / "a.png")}
    with pytest.raises(BidsReconError, match="not found"):
        find_stimuli([f"MD5E-s5--{'a' * 32}"], [annexed])


def test_a_link_into_another_datasets_annex_is_refused(annexed, tmp_path):
    other = tmp_path / "other"
    (other / ".git").mkdir(parents=True)
    annex_link(annexed / "stimuli" / "c.png", annex_object(other, "MD5E-s5--" + "c" * 32 + ".png"))
    with pytest.raises(BidsReconError, match="would reach outside") as error:
        find_stimuli(["a", "c"], [annexed / "stimuli"])
    assert error.value.exit_code == 64 and "c -> " in str(error.value) and "a -> " not in str(error.value)
    with pytest.raises(BidsReconError, match="would reach outside"):
        find_stimuli(["x"], [annexed / "stimuli"], stim_files={"x": "c.png"})


def test_a_link_into_an_enclosing_repositorys_annex_is_refused(tmp_path):
    # The nearest repository is the folder's own dataset: a superdataset's annex is someone else's.
    outer = tmp_path / "outer"
    dataset = outer / "ds"
    (dataset / ".git").mkdir(parents=True)
    (outer / ".git").mkdir()
    annex_link(dataset / "stimuli" / "a.png", annex_object(outer, "MD5E-s5--" + "a" * 32 + ".png"))
    with pytest.raises(BidsReconError, match="would reach outside"):
        find_stimuli(["a"], [dataset / "stimuli"])


def test_a_git_folder_that_is_a_link_is_not_trusted(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    key = "MD5E-s5--" + "a" * 32 + ".png"
    target = annex_object(elsewhere, key)
    dataset = tmp_path / "ds"
    dataset.mkdir()
    os.symlink(elsewhere / ".git", dataset / ".git")
    annex_link(dataset / "stimuli" / "a.png", dataset / ".git" / "annex" / "objects" / "Xx" / "Yy" / key / key)
    assert (dataset / "stimuli" / "a.png").resolve() == target.resolve()
    with pytest.raises(BidsReconError, match="would reach outside"):
        find_stimuli(["a"], [dataset / "stimuli"])


def test_an_annexed_stimulus_not_fetched_names_the_get_command(annexed):
    folder = annexed / "stimuli"
    # Not fetched: the link points at an object that is not there.
    key = "MD5E-s5--" + "d" * 32 + ".png"
    annex_link(folder / "d.png", annexed / ".git" / "annex" / "objects" / "Zz" / "Ww" / key / key)
    assert (folder / "d.png").is_symlink() and not (folder / "d.png").exists()
    # An unlocked annexed file without its content holds git-annex's pointer.
    touch_bytes(folder / "e.png", f"/annex/objects/MD5E-s5--{'e' * 32}.png\n".encode())
    for names, stim_files in ((["a", "d", "e"], None), (["x"], {"x": "d.png"})):
        with pytest.raises(BidsReconError) as error:
            find_stimuli(names, [folder], stim_files=stim_files)
        message = str(error.value)
        assert error.value.exit_code == 66
        assert "not fetched" in message and "datalad get" in message and "git annex get" in message
        assert str(folder / "d.png") in message
        assert (str(folder / "e.png") in message) == (stim_files is None)
        assert str(folder / "a.png") not in message


def test_a_broken_link_out_of_the_folder_is_still_refused(annexed, tmp_path):
    annex_link(annexed / "stimuli" / "f.png", tmp_path / "nowhere" / "f.png")
    with pytest.raises(BidsReconError, match="would reach outside") as error:
        find_stimuli(["f"], [annexed / "stimuli"])
    assert error.value.exit_code == 64
