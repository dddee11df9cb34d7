"""Reading one participant's results back from the output dataset.

The reports and the group level read only what the participant level wrote into ``output_dir``
(never the work directory or the input dataset), so that they run anywhere the outputs are copied.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bidsrecon.bids.derivatives import WARNINGS_LOG, item_files


def subject_label(subject):
    """``"sub-01"``, ``"01"`` -> ``"01"``."""
    return str(subject).removeprefix("sub-")


def subject_dir(output_dir, subject):
    return Path(output_dir) / f"sub-{subject_label(subject)}"


def read_json(path):
    """A JSON file's content, or None when there is no such file (optional outputs)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def read_table(tsv_path):
    """A BIDS TSV and its column descriptions (from the JSON sidecar next to it).

    Only ``n/a`` means missing: a stimulus called ``NA`` or ``null`` stays a name, and the
    ``set``/``stimulus`` columns stay text even when every name is a number.
    """
    tsv_path = Path(tsv_path)
    table = pd.read_csv(tsv_path, sep="\t", na_values=["n/a"], keep_default_na=False,
                        dtype={"set": str, "stimulus": str, "layer": str, "encoder": str})
    sidecar = read_json(tsv_path.with_suffix(".json")) or {}
    descriptions = {column: entry.get("Description", "") for column, entry in sidecar.items()
                    if isinstance(entry, dict)}
    return table, descriptions


def metrics_path(output_dir, subject, desc="sets_metrics"):
    label = subject_label(subject)
    return subject_dir(output_dir, label) / f"sub-{label}_desc-{desc}.tsv"


@dataclass
class Item:
    """One reconstructed test item: its two images, its sidecar and its scores (items table row)."""

    set: str
    stimulus: str
    recon: Path
    stimulus_image: Path
    scores: dict = field(default_factory=dict)

    @property
    def sidecar(self):
        return read_json(self.recon.with_suffix(".json"))


def read_items(output_dir, subject):
    """Every item of the items table, in its order, with the paths of its images."""
    label = subject_label(subject)
    table, _ = read_table(metrics_path(output_dir, label, "items_metrics"))
    items = []
    for row in table.to_dict("records"):
        files = item_files(subject_dir(output_dir, label), label, row["set"], row["stimulus"])
        items.append(Item(set=row["set"], stimulus=row["stimulus"], recon=files["recon"],
                          stimulus_image=files["stimulus"],
                          scores={k: v for k, v in row.items() if k not in ("set", "stimulus")}))
    return items


def missing_outputs(output_dir, subject):
    """What a participant's results lack for the group level, as short phrases (empty: complete)."""
    label = subject_label(subject)
    folder = subject_dir(output_dir, label)
    if not folder.is_dir():
        return [f"the folder {folder.name}/ (run the participant level for it)"]
    tables = (metrics_path(output_dir, label), metrics_path(output_dir, label, "items_metrics"))
    missing = [path.name for path in tables if not path.is_file()]
    if not metrics_path(output_dir, label, "items_metrics").is_file():
        return missing
    absent = [item.recon.name for item in read_items(output_dir, label) if not item.recon.is_file()]
    if absent:
        shown = ", ".join(absent[:3]) + (f" and {len(absent) - 3} more" if len(absent) > 3 else "")
        missing.append(f"{len(absent)} reconstruction(s) listed in its items table ({shown})")
    return missing


def motion_files(output_dir, subject):
    """``{run label: motion TSV}`` of the quality folder, in run order (empty when absent)."""
    label = subject_label(subject)
    prefix, suffix = f"sub-{label}_", "_desc-motion_timeseries.tsv"
    files = sorted((subject_dir(output_dir, label) / "qc").glob(f"{prefix}*{suffix}"))
    return {path.name[len(prefix):-len(suffix)]: path for path in files}


def read_warnings(output_dir, subject):
    """The warnings of the participant's run (``log/sub-XX_desc-warnings_log.tsv``), or None for outputs
    of versions that did not record them."""
    label = subject_label(subject)
    path = subject_dir(output_dir, label) / "log" / WARNINGS_LOG.format(subject=label)
    if not path.is_file():
        return None
    return pd.read_csv(path, sep="\t", dtype=str, na_values=["n/a"], keep_default_na=False).fillna("n/a")


def crash_files(output_dir, subject):
    """The Nipype crash files (text) that a failed run copied into the participant's ``log/``, by name
    (the time they were written comes first in it)."""
    return sorted((subject_dir(output_dir, subject) / "log").glob("crash-*.txt"))
