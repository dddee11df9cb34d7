"""The published ds001506, copied from its real metadata, runs from the README's command.

`bidsrecon.simulate.published.copy_published` copies one subject of the published tree (events
files and bold sidecars byte for byte, a run or two of each kind of session; the published
``dataset_description.json`` with ``"Funding": ""``; no ``participants.tsv``) and adds small
synthetic bold runs, ROI masks under ds001506's names and stimulus images in a folder of their own.
The README's command for ds001506 must then run to the end, with the validator on.
"""
import os
import re
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path, PurePosixPath

import pandas as pd
import pytest
from checks import checksums

from bidsrecon.simulate.stimuli import imagery_target
from bidsrecon.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
# The published metadata (CC0), next to the repository: ../shared/datasets (see its README).
METADATA = Path(os.environ.get("BIDSRECON_DS001506_METADATA",
                               ROOT.parent / "shared" / "datasets" / "ds001506-metadata.tar.gz"))
SETS = {"natural", "shapes", "letters", "imagery"}
# The README's command as it stands takes about 6 minutes on this copy on our 2 shared cores, 5 of
# them reconstructing its 125 test items (200 L-BFGS iterations in 16 batches at ~10 iterations/s,
# measured); with 10 iterations the test takes 40-70 s. Nothing else is added: what is read,
# validated, preprocessed and decoded is the README's.
FAST = ["--iterations", "10"]

pytestmark = pytest.mark.skipif(not METADATA.is_file(), reason=f"the published metadata is not at {METADATA}")


def readme_command():
    """The README's participant-level command for ds001506, as a list of arguments."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Running on OpenNeuro ds001506"):]
    match = re.search(r"^\s*(bidsrecon /data/ds001506 .*?)\n\s*```", section, flags=re.M | re.S)
    return shlex.split(match.group(1).replace("\\\n", " "))


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    from bidsrecon.simulate.published import copy_published

    root = tmp_path_factory.mktemp("ds001506")
    # The stimuli as a DataLad dataset holds them: links into the folder's own .git/annex.
    return copy_published(METADATA, root / "ds001506", root / "stimuli", subject="01", annex_stimuli=True)


def expected_items(copy):
    """Test items per set, from the copied events: the images shown, and the imagery targets."""
    items = {name: set() for name in SETS}
    prefixes = {"perceptionNaturalImageTest": "natural", "perceptionArtificialImage": "shapes",
                "perceptionLetterImage": "letters"}
    for session, task, run in copy.runs:
        events = pd.read_csv(copy.bids_dir / f"sub-01/ses-{session}/func/sub-01_ses-{session}_task-{task}_run-{run}"
                             "_events.tsv", sep="\t", na_values=["n/a"], keep_default_na=False)
        if task == "imagery":
            targets = (imagery_target(int(index)) for index in events.loc[events["event_type"] == 2, "category_index"])
            items["imagery"] |= {target for target in targets if target is not None}
            continue
        for prefix, name in prefixes.items():
            if session.startswith(prefix):
                items[name] |= set(events.loc[events["event_type"] == 1, "stimulus_name"])
    return items


def test_the_copy_is_the_published_tree(published):
    bids = published.bids_dir
    assert b'"Funding": ""' in (bids / "dataset_description.json").read_bytes()
    assert not (bids / "participants.tsv").exists() and not (bids / ".bidsignore").exists()
    kinds = {re.sub(r"\d+$", "", session) for session, _, _ in published.runs}
    assert kinds == {"perceptionNaturalImageTraining", "perceptionNaturalImageTest", "perceptionArtificialImage",
                     "perceptionLetterImage", "imagery"}
    # The glitch of sub-01's first letter run is there as published.
    letters = bids / ("sub-01/ses-perceptionLetterImage01/func/"
                      "sub-01_ses-perceptionLetterImage01_task-perception_run-01_events.tsv")
    assert "\ton/a\t" in letters.read_text()
    assert len(list((bids / "sourcedata/sub-01/anat").glob("sub-01_mask_*.nii.gz"))) == 22
    # Every published file kept is copied byte for byte.
    with tarfile.open(METADATA) as archive:
        published_files = {PurePosixPath(member.name).parts: archive.extractfile(member).read()
                           for member in archive.getmembers() if member.isfile()}
    prefix = next(parts[:parts.index("dataset_description.json")] for parts in published_files
                  if parts[-1] == "dataset_description.json")
    copied = [path for path in bids.rglob("*") if path.is_file() and not path.name.endswith(".nii.gz")]
    assert len(copied) == 4 + 2 * len(published.runs)  # dataset_description, README, CHANGES, sourcedata/README
    for path in copied:
        assert path.read_bytes() == published_files[prefix + path.relative_to(bids).parts], path
    # The stimuli are annexed: links into their own dataset's annex.
    links = [path for path in published.stimuli_dir.iterdir() if path.name != ".git"]
    assert len(links) == len(published.stimuli) and all(path.is_symlink() for path in links)
    assert all(".git/annex/objects/" in os.readlink(path) for path in links)


@pytest.mark.slow
def test_readme_command_runs_the_published_tree(published, tmp_path):
    command = readme_command()
    assert command[:3] == ["bidsrecon", "/data/ds001506", "/data/out"], command
    out, work = tmp_path / "out", tmp_path / "work"
    # The README's paths, here: the dataset, the output, the stimuli and the work directory.
    places = {"/data/ds001506": published.bids_dir, "/data/out": out, "/data/stimuli": published.stimuli_dir,
              "/scratch/work": work}
    arguments = [str(places.get(argument, argument)) for argument in command[1:]]
    assert "--skip-bids-validation" not in arguments and str(work) in arguments
    before = (checksums(published.bids_dir), checksums(published.stimuli_dir))

    result = subprocess.run([str(Path(sys.executable).parent / "bidsrecon"), *arguments, *FAST],
                            capture_output=True, text=True, timeout=1200)
    log = "\n".join(line for line in (result.stdout + result.stderr).splitlines()
                    if "iter/s" not in line and "image/s" not in line)
    assert result.returncode == 0, log[-6000:]

    # The validator ran: the published Funding error is a warning naming its file and field.
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line and "bids-validator" in line]
    assert any("dataset_description.json" in line and "Funding" in line for line in warnings), log[-6000:]

    # All four test sets are reconstructed, every item of each.
    assert {test.name for test in load_spec("ds001506").tests} == SETS
    metrics = pd.read_csv(out / "sub-01" / "sub-01_desc-sets_metrics.tsv", sep="\t")
    assert set(metrics["set"]) == SETS
    items = expected_items(published)
    for row in metrics.itertuples():
        recons = list((out / "sub-01" / "recon").glob(f"sub-01_acq-{row.set}_desc-*_recon.png"))
        assert row.n_items == len(items[row.set]) == len(recons), row.set
    assert (out / "sub-01.html").is_file()

    # The input, dataset and stimuli, is unchanged to the byte.
    assert (checksums(published.bids_dir), checksums(published.stimuli_dir)) == before
