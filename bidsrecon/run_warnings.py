"""What went wrong or was worked around during a participant's run, kept for its report.

The warnings the run logs (bidsrecon's log and Python's ``warnings``, as the console shows them)
go to ``sub-XX/log/sub-XX_desc-warnings_log.tsv``; the Nipype crash files of a failed run are
copied as text into ``sub-XX/log/``, so that they outlive the work directory.

A warning logged inside a workflow step is written into that step's folder of the work directory
(`STEP_FILE`), not kept in memory: Nipype empties the folder when the step runs again and keeps it
when the step is cached, so a rerun that reuses a step still reports its warnings, and never stale
ones. It also reaches the file from MultiProc's worker processes, which are forked with the recorder
installed. (A cluster plugin's jobs start afresh: their warnings stay in their own logs.)
"""
import contextlib
import json
import logging
import re
import warnings
from pathlib import Path

import pandas as pd

from bidsrecon.bids.derivatives import WARNINGS_LOG, atomic_write_bytes, atomic_write_text, write_json
from bidsrecon.console import STAGES

STEP_FILE = "_bidsrecon_warnings.jsonl"
# Where the run's warnings are logged: bidsrecon's loggers propagate to the root; the steps' data
# checks log to Nipype's interface logger, which does not (bidsrecon.cli turns it off).
LOGGERS = ("", "nipype.interface")
COLUMNS = {
    "step": "What the run was doing: validation (bids-validator-deno), inputs (collecting the runs and "
            "trials), or the workflow step that warned.",
    "source": "The logger that logged it, or the Python warning's category.",
    "message": "The warning's text (line breaks as spaces).",
}


class WarningsRecorder(logging.Handler):
    """Records every warning logged or shown while `recording_warnings` has it installed."""

    def __init__(self, step, steps_root=None):
        super().__init__(logging.WARNING)
        self.step, self.rows, self.last = step, [], None
        self.steps_root = Path(steps_root).resolve() if steps_root else None

    def emit(self, record):
        # Where Nipype's interface logger propagates (bidsrecon used as a library), its records reach
        # this handler twice: once from it, once from the root.
        if record is self.last:
            return
        self.last = record
        # Nipype's workflow lines (a step failed, ...) are left out: a failed step has its crash file.
        if record.name == "nipype.interface" or not record.name.startswith("nipype"):
            self.add(record.name, record.getMessage())

    def add(self, source, message):
        row = {"step": self.step, "source": source, "message": " ".join(str(message).split())}
        folder = Path.cwd()
        if self.steps_root and folder.is_relative_to(self.steps_root):
            # One line, appended whole. Failing to record a warning must not fail the step: it is
            # kept in memory then (lost if the step runs in a worker process).
            with contextlib.suppress(OSError), open(folder / STEP_FILE, "a", encoding="utf-8") as stream:
                stream.write(json.dumps(row) + "\n")
                return
        self.rows.append(row)


@contextlib.contextmanager
def recording_warnings(step, steps_root=None):
    """Record the warnings of the ``with`` block; yields the `WarningsRecorder` (its ``rows``).

    Python's warnings are recorded through `warnings.showwarning`, which then shows them as
    before, rather than `logging.captureWarnings`, which would change how the console prints them.
    ``steps_root`` is the participant's workflow folder: warnings logged in it go to the steps' files.
    """
    recorder = WarningsRecorder(step, steps_root)
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        recorder.add(category.__name__, message)
        shown(message, category, filename, lineno, file, line)

    for name in LOGGERS:
        logging.getLogger(name).addHandler(recorder)
    warnings.showwarning = show
    try:
        yield recorder
    finally:
        warnings.showwarning = shown
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(recorder)


def step_warnings(execution_graph):
    """The warnings recorded in the folders of the steps of a workflow's run (`STEP_FILE`)."""
    rows = []
    for node in execution_graph.nodes():
        folder = Path(node.output_dir())
        # A map step's elements run in mapflow/_<name><index>/.
        for path in [folder / STEP_FILE, *sorted(folder.glob(f"mapflow/*/{STEP_FILE}"), key=_natural)]:
            if path.is_file():
                step = _step_name(path.parent.name)
                rows += [{**json.loads(line), "step": step} for line in path.read_text().splitlines() if line]
    return rows


def _natural(path):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def _step_name(folder):
    """``realign`` and its elements' ``_realign3`` -> ``motion correction`` (the messages name the run)."""
    name = re.sub(r"^_(.+?)\d+$", r"\1", folder)
    return STAGES.get(name, name)


def write_warnings_log(log_dir, subject, rows):
    """``log/sub-XX_desc-warnings_log.tsv`` (and its sidecar); written with no row when nothing warned."""
    table = pd.DataFrame(rows, columns=list(COLUMNS)).drop_duplicates()
    path = Path(log_dir) / WARNINGS_LOG.format(subject=subject)
    atomic_write_text(path, table.to_csv(sep="\t", index=False, na_rep="n/a"))
    write_json(path.with_suffix(".json"), {column: {"Description": text} for column, text in COLUMNS.items()})
    return path


def copy_crash_files(crash_dir, subject, since, log_dir):
    """Copy the text crash files of ``sub-<subject>``'s steps written since ``since`` (seconds since
    the epoch) into ``log_dir``; returns the copies. Pickled crash files are never copied."""
    copies = []
    for path in sorted(Path(crash_dir).glob("crash-*.txt")):
        # The crash folder is shared by every participant and every run: the first line names the
        # step, and the time leaves out earlier runs' (2 s: some file systems round times to that).
        if path.stat().st_mtime >= since - 2 and _first_line(path).startswith(f"Node: sub_{subject}_wf."):
            copies.append(Path(log_dir) / path.name)
            atomic_write_bytes(copies[-1], path.read_bytes())
    return copies


def _first_line(path):
    with open(path, encoding="utf-8", errors="replace") as stream:
        return stream.readline()


def last_error(crash_text):
    """The last ``...Error: ...`` or ``...Exception...`` line of a crash file's text, or None."""
    lines = [line.strip() for line in crash_text.splitlines() if re.match(r"^\s*[\w.]*(Error|Exception)\b", line)]
    return lines[-1] if lines else None
