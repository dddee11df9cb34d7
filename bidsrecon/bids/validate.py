"""Run the BIDS validator (bids-validator-deno) on a dataset and sort its errors into fatal and not.

The validator's report is read as JSON (``--format json``; warnings are not asked for). Each error
names its file (``location``), its code and, for one field of a JSON file or one column of a TSV,
the field (``subCode``). An error stops the run (exit 16) only when it concerns something
bidsrecon reads; every other error is logged as a warning, naming its file and field, and the run
goes on. bidsrecon reads:

- the functional runs: ``*_bold.nii[.gz]``, ``*_bold.json``, ``*_events.tsv`` and ``*_events.json``
  of the participants being processed (every participant when ``--participant-label`` is not
  given), limited to the ``--session-label``/``--task-label`` sessions and tasks when these are
  given. Sidecars outside any ``sub-*`` folder (``task-perception_bold.json``) are inherited by
  every run and always count;
- the dataset's ``stimuli/`` folder, unless ``--stimuli-dir`` stands in for it;
- ``dataset_description.json`` as a file: it is what makes the folder a BIDS dataset (bidsrecon
  requires it, pybids reads it), so an error about the file as a whole (not valid JSON, say) is
  fatal; an error about one of its fields (the validator names it: ``Funding``, ``Authors``,
  ``BIDSVersion``…) is not, as bidsrecon reads none of them;
- an error without a file (about the dataset as a whole) is fatal: its reach is unknown.

So the published ds001506, whose ``dataset_description.json`` has ``"Funding": ""`` (the schema
wants a list), runs with a warning; an error in ``README``, ``CHANGES``, ``participants.tsv``, a
``scans.tsv``, an anatomical or field-map file, or in another participant's runs is a warning too.
ROI masks in ``sourcedata/`` and ``--derivatives`` folders are not validated (the validator skips
them).
"""
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from bidsrecon.errors import EXIT_INPUT_MISSING, EXIT_VALIDATION_FAILED, BidsReconError

LOGGER = logging.getLogger("bidsrecon")
# File name endings of what bidsrecon reads of a functional run.
RUN_FILE_SUFFIXES = ("_bold.nii.gz", "_bold.nii", "_bold.json", "_events.tsv", "_events.json")
# How many files an issue shared by many files names in a message.
_SHOWN_LOCATIONS = 3


@dataclass(frozen=True)
class ValidatorIssue:
    """One error of the validator's report."""

    code: str
    location: str = ""  # "/sub-01/.../x_bold.json", relative to the dataset; "" for the dataset as a whole
    field: str = ""  # the validator's subCode: a JSON field or a TSV column, when it names one
    message: str = ""  # the first line of the validator's message

    def describe(self):
        where = self.location.lstrip("/") or "the dataset as a whole"
        field = f", field {self.field}" if self.field else ""
        message = f": {self.message}" if self.message else ""
        return f"{where}{field}{message} ({self.code})"


@dataclass(frozen=True)
class ReadSelection:
    """What of a dataset bidsrecon reads, as far as the validator's issues can tell."""

    participants: tuple = ()  # labels without "sub-"; empty: every participant
    sessions: tuple = ()  # labels without "ses-"; empty: every session
    tasks: tuple = ()  # labels without "task-"; empty: every task
    dataset_stimuli: bool = True  # the dataset's stimuli/ folder (False with --stimuli-dir)

    @classmethod
    def from_labels(cls, participants=(), sessions=(), tasks=(), dataset_stimuli=True):
        return cls(tuple(str(label).removeprefix("sub-") for label in participants or ()),
                   tuple(str(label).removeprefix("ses-") for label in sessions or ()),
                   tuple(str(label).removeprefix("task-") for label in tasks or ()),
                   bool(dataset_stimuli))


def validator_executable():
    """Path of ``bids-validator-deno``: next to this Python first, then on PATH."""
    beside = Path(sys.executable).parent / "bids-validator-deno"
    found = str(beside) if beside.exists() else shutil.which("bids-validator-deno")
    if found is None:
        raise BidsReconError(
            "bids-validator-deno is not installed; install it (pip install bids-validator-deno) "
            "or pass --skip-bids-validation",
            EXIT_INPUT_MISSING,
        )
    return found


def run_validator(dataset_dir):
    """Validate ``dataset_dir``; returns its errors (warnings are not asked for).

    Returns
    -------
    list of ValidatorIssue

    Raises
    ------
    BidsReconError
        Exit 1 when the validator gives no readable report (it crashed or was killed): that says
        nothing about the dataset.
    """
    result = subprocess.run(
        [validator_executable(), str(dataset_dir), "--format", "json", "--ignoreWarnings"],
        capture_output=True,
        text=True,
        env=_validator_env(),
    )
    report = _parse_report(result.stdout)
    if report is None:
        how = f"killed by signal {-result.returncode}" if result.returncode < 0 else f"exit {result.returncode}"
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise BidsReconError(
            f"bids-validator-deno gave no report on {dataset_dir} ({how}: {tail}); run it again, "
            "or pass --skip-bids-validation", 1)
    issues = report.get("issues", {})
    code_messages = issues.get("codeMessages", {}) if isinstance(issues, dict) else {}
    issues = issues.get("issues", []) if isinstance(issues, dict) else issues
    return [_issue(entry, code_messages) for entry in issues
            if isinstance(entry, dict) and str(entry.get("severity", "error")).lower() == "error"]


def check_dataset(dataset_dir, selection=ReadSelection()):
    """Validate ``dataset_dir``: stop on errors in what bidsrecon reads, warn about the others.

    Parameters
    ----------
    dataset_dir : path-like
    selection : ReadSelection
        The participants, sessions and tasks this run processes, and whether the dataset's
        ``stimuli/`` folder is read.

    Returns
    -------
    list of ValidatorIssue
        The errors that do not concern what bidsrecon reads (each logged as a warning).

    Raises
    ------
    BidsReconError
        Exit 16 naming the file, field and code of every error in what bidsrecon reads.
    """
    fatal, ignored = split_issues(run_validator(dataset_dir), selection)
    for text in _grouped(ignored):
        LOGGER.warning("bids-validator-deno reports an error in what bidsrecon does not read, so the run goes on: %s",
                       text)
    if fatal:
        unfetched = _unfetched_annexed(dataset_dir, fatal)
        fetch = (f"; {len(unfetched)} of these file(s) are git-annex/DataLad links whose content is not fetched: "
                 f"run `datalad get {' '.join(shlex.quote(path) for path in unfetched)}` (or `git annex get` on "
                 f"them) in {dataset_dir}") if unfetched else ""
        raise BidsReconError(
            f"{dataset_dir} does not pass bids-validator-deno in what bidsrecon reads: "
            f"{'; '.join(_grouped(fatal))}{fetch}; fix the dataset, or pass --skip-bids-validation",
            EXIT_VALIDATION_FAILED,
        )
    return ignored


def _unfetched_annexed(dataset_dir, issues):
    """Locations of ``issues`` that are links into a ``.git/annex/objects`` with nothing behind them."""
    found = []
    for location in dict.fromkeys(issue.location.strip("/") for issue in issues if issue.location.strip("/")):
        path = Path(dataset_dir) / location
        if path.is_symlink() and not path.exists() and "/.git/annex/objects/" in f"/{os.readlink(path)}":
            found.append(location)
    return found


def split_issues(issues, selection=ReadSelection()):
    """``(fatal, ignored)``: the issues that concern what bidsrecon reads, and the others.

    The rule is the module docstring's.
    """
    fatal, ignored = [], []
    for issue in issues:
        (fatal if is_fatal(issue, selection) else ignored).append(issue)
    return fatal, ignored


def is_fatal(issue, selection=ReadSelection()):
    """Whether an error of the validator concerns something bidsrecon reads (see the module docstring)."""
    location = PurePosixPath("/" + issue.location.strip("/"))
    parts = location.parts[1:]
    if not parts:
        return True  # the dataset as a whole
    if parts == ("dataset_description.json",):
        return not issue.field
    if parts[0] == "stimuli":
        return selection.dataset_stimuli
    if not location.name.endswith(RUN_FILE_SUFFIXES):
        return False
    entities = _entities(location)
    folders = [part for part in parts[:-1] if part.startswith("sub-")]
    if folders and selection.participants and folders[0].removeprefix("sub-") not in selection.participants:
        return False
    if "sub" in entities and selection.participants and entities["sub"] not in selection.participants:
        return False
    if "ses" in entities and selection.sessions and entities["ses"] not in selection.sessions:
        return False
    if "task" in entities and selection.tasks and entities["task"] not in selection.tasks:
        return False
    return True


def _entities(location):
    """BIDS entities of a file name (``sub-01_ses-x_task-y_bold.json`` → sub, ses, task)."""
    return dict(re.findall(r"(?:^|_)([a-zA-Z]+)-([a-zA-Z0-9+]+)(?=_|\.)", location.name))


def _issue(entry, code_messages):
    code = str(entry.get("code") or "UNKNOWN")
    lines = str(entry.get("issueMessage") or "").strip().splitlines()
    message = lines[0].strip() if lines else ""
    if not message or message.startswith("Field description"):
        # That line describes the field, not what is wrong with it: the code's own message does.
        message = str(code_messages.get(code) or "").strip()
    return ValidatorIssue(code=code, location=str(entry.get("location") or ""),
                          field=str(entry.get("subCode") or ""), message=" ".join(message.split()))


def _grouped(issues):
    """One text per code, field and message, naming the first few files it concerns."""
    groups = {}
    for issue in issues:
        groups.setdefault((issue.code, issue.field, issue.message), []).append(issue)
    texts = []
    for same in groups.values():
        text = same[0].describe()
        if len(same) > 1:
            others = ", ".join(issue.location.lstrip("/") for issue in same[1:_SHOWN_LOCATIONS])
            more = len(same) - _SHOWN_LOCATIONS
            text += f"; also {others}" + (f" and {more} more file(s)" if more > 0 else "")
        texts.append(text)
    return texts


def _parse_report(stdout):
    """The validator's JSON report, or None when its output holds none."""
    text = stdout.strip()
    for candidate in (text, text[text.find("{"):] if "{" in text else ""):
        try:
            report = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(report, dict):
            return report
    return None


def _validator_env():
    # deno keeps a cache; point it at a writable place so read-only homes and containers work.
    env = dict(os.environ)
    env.setdefault("DENO_DIR", str(Path(tempfile.gettempdir()) / "bidsrecon-deno"))
    env["NO_COLOR"] = "1"
    return env
