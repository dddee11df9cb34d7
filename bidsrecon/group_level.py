"""The group level: read only the output dataset, aggregate the participants' scores, write the report.

Outputs (under ``output_dir``)::

    group/group_desc-sets_metrics.tsv (+ .json)  each participant's score per test set and metric, and
                                               the mean and s.e.m. over participants (tidy: one value a row)
    group/group.html                           the group report: every participant's reconstructions
                                               side by side, identification per set (mean ± s.e.m.)
    figures/sub-<label>_desc-reconstructions_figure.png   one figure per participant

The expected participants are those of ``--participant-label``, or else every ``sub-*`` folder of
``output_dir``; if any of them lacks results, nothing is written and the error lists what is missing.

Hostile tables: a participant's table that is not UTF-8 tab-separated text (or its JSON sidecar
not a JSON object), or that lacks its ``set`` column, or a metrics table with none of the
`EXPECTED_METRICS`, is refused (exit 66, one line naming every such file) before anything is
written; a metrics table that lacks some of them is summarised with a warning naming the file
and the columns.
"""
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from bidsrecon.bids.derivatives import atomic_write_text, write_json
from bidsrecon.errors import EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.reports.group_report import write_group_report
from bidsrecon.reports.montage import draw_participant_figure
from bidsrecon.reports.outputs import metrics_path, missing_outputs, read_table, subject_label

LOGGER = logging.getLogger("bidsrecon")
GROUP_TSV = Path("group") / "group_desc-sets_metrics.tsv"
# The set-level metrics every participant's desc-sets_metrics.tsv has (bidsrecon.interfaces.reconstruction.Evaluate).
EXPECTED_METRICS = ("identification_pixel", "pixel_correlation", "ssim")
# Columns without which a table cannot be read back (bidsrecon.reports.outputs.read_items).
REQUIRED_COLUMNS = {"sets_metrics": ("set",), "items_metrics": ("set", "stimulus")}

GROUP_COLUMNS = {
    "participant_id": "Participant of the row's value; n/a on the mean and s.e.m. rows (over participants).",
    "set": "Test set.",
    "metric": "Column of the participants' sub-<label>_desc-sets_metrics.tsv (see Levels).",
    "statistic": "What the value is (see Levels).",
    "value": "The participant's value, or the mean or s.e.m. over participants.",
    "n_participants": "Participants with a value (not n/a) for this set and metric; the mean and s.e.m. are over "
                      "them. n/a on the participants' own rows.",
    "encoder": "Encoder whose features were decoded (on the mean and s.e.m. rows: every participant's, "
               "comma-separated if they differ).",
}
STATISTICS = {
    "value": "The participant's own value.",
    "mean": "Mean over participants.",
    "sem": "Standard error of the mean over participants: sample s.d. (n - 1) / sqrt(n); n/a with one participant.",
}


def run_group_level(config):
    """Check every expected participant's results, then write the group table, report and figures."""
    output_dir = Path(config.output_dir)
    labels = expected_participants(output_dir, config.participant_labels)
    check_tables(output_dir, labels)
    check_complete(output_dir, labels)
    wide, descriptions = read_participant_metrics(output_dir, labels)
    tidy = summarise(wide)
    if tidy.empty:
        files = ", ".join(str(metrics_path(output_dir, label)) for label in labels)
        raise BidsReconError(f"no metric has a value in any participant's table ({files}); rerun the participant "
                             "level for them", EXIT_INPUT_MISSING)

    table_path = output_dir / GROUP_TSV
    atomic_write_text(table_path, tidy.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.6g"))
    write_json(table_path.with_suffix(".json"), group_sidecar(tidy, descriptions))
    print(f"group table: {table_path}")
    report = write_group_report(output_dir, labels, wide, tidy, descriptions)
    print(f"group report: {report}")
    for label in labels:
        sets = list(wide.loc[wide["participant_id"] == f"sub-{label}", "set"])
        print(f"figure: {draw_participant_figure(output_dir, label, sets)}")
    return table_path


def expected_participants(output_dir, participant_labels=()):
    """Labels (``"01"``) of the participants the group level must include."""
    if participant_labels:
        return sorted({subject_label(label) for label in participant_labels})
    return sorted(path.name.removeprefix("sub-") for path in Path(output_dir).glob("sub-*") if path.is_dir())


def check_complete(output_dir, labels):
    """Refuse (exit 66) unless every expected participant has its tables and reconstructions."""
    if not labels:
        raise BidsReconError(f"no participant results (sub-*/) in {output_dir}; run the participant level first",
                             EXIT_INPUT_MISSING)
    problems = {label: missing_outputs(output_dir, label) for label in labels}
    problems = {label: missing for label, missing in problems.items() if missing}
    if problems:
        listing = "; ".join(f"sub-{label} lacks {', '.join(missing)}" for label, missing in problems.items())
        raise BidsReconError(
            f"incomplete participant results in {output_dir}: {listing}. Run (or finish) the participant level for "
            f"them, or leave them out with --participant-label", EXIT_INPUT_MISSING)


def check_tables(output_dir, labels):
    """Refuse (exit 66, one line naming every file) participants' tables that cannot be read back.

    Checked: each participant's ``desc-sets_metrics.tsv`` and ``desc-items_metrics.tsv`` (and their
    JSON sidecars, when there) are UTF-8 text, parse as tab-separated tables with the columns the
    group level reads, and the metrics table has at least one of `EXPECTED_METRICS`. Missing files
    are `check_complete`'s; this runs on the files that are there, before anything reads them.
    """
    problems = []
    for label in labels:
        for desc, required in REQUIRED_COLUMNS.items():
            path = metrics_path(output_dir, label, desc)
            if path.is_file():
                problem = table_problem(path, required, EXPECTED_METRICS if desc == "sets_metrics" else ())
                if problem:
                    problems.append(problem)
    if problems:
        raise BidsReconError(
            f"unusable participant tables: {'; '.join(problems)}. Rerun the participant level for them (or restore "
            f"the files), or leave them out with --participant-label", EXIT_INPUT_MISSING)


def table_problem(path, required=(), metrics=()):
    """What makes a participant's TSV (or its sidecar) unreadable, as ``"<file>: <reason>"``; None when fine.

    ``metrics``: the table must have at least one of these columns (numeric), or it is refused too.
    """
    path = Path(path)
    sidecar = path.with_suffix(".json")
    for file in (path, sidecar):
        if file is sidecar and not file.is_file():
            continue
        try:
            text = file.read_bytes().decode("utf-8")
        except UnicodeDecodeError as error:
            return f"{file}: not UTF-8 text (byte {error.start}; a binary or wrongly encoded file?)"
        except OSError as error:
            return f"{file}: cannot be read ({error.strerror or error})"
        if file is sidecar:
            try:
                content = json.loads(text)
            except (ValueError, RecursionError) as error:
                return f"{file}: not valid JSON ({_first_line(error)})"
            if not isinstance(content, dict):
                return f"{file}: not a JSON object (column descriptions)"
    try:
        table, _ = read_table(path)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        return f"{path}: not a tab-separated table ({_first_line(error)})"
    absent = [column for column in required if column not in table.columns]
    if absent:
        return f"{path}: no {', '.join(absent)} column (columns: {', '.join(map(str, table.columns)) or 'none'})"
    if metrics and not [column for column in metrics if _is_metric(table, column)]:
        return f"{path}: none of the metric columns {', '.join(metrics)}"
    return None


def _first_line(error):
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _is_metric(table, column):
    return column in table.columns and pd.api.types.is_numeric_dtype(table[column])


def check_metric_columns(output_dir, labels, tables):
    """Warn once per metrics table that lacks some `EXPECTED_METRICS` or has text in them; returns the tables.

    Text in a metric column becomes n/a (the numbers in it are kept), so that one participant's
    bad value does not take the metric out of everyone's summary.
    """
    checked = []
    for label, table in zip(labels, tables):
        absent = [column for column in EXPECTED_METRICS if column not in table.columns]
        text = [column for column in EXPECTED_METRICS if column in table.columns and not _is_metric(table, column)]
        if absent or text:
            what = "; ".join(part for part in (f"lacks {', '.join(absent)}" if absent else "",
                                               f"has non-numbers in {', '.join(text)}" if text else "") if part)
            LOGGER.warning("%s: %s; the group summary has n/a there for sub-%s (rerun the participant level for it "
                           "to have them)", metrics_path(output_dir, label), what, label)
            table = table.assign(**{column: pd.to_numeric(table[column], errors="coerce") for column in text})
        checked.append(table)
    return checked


def read_participant_metrics(output_dir, labels):
    """Every participant's ``desc-sets_metrics.tsv`` stacked, ``participant_id`` first, and the column descriptions."""
    tables, descriptions = [], {}
    for label in labels:
        table, described = read_table(metrics_path(output_dir, label))
        tables.append(table.assign(participant_id=f"sub-{label}"))
        descriptions = {**described, **descriptions}
    tables = check_metric_columns(output_dir, labels, tables)
    wide = pd.concat(tables, ignore_index=True)
    return wide[["participant_id", *[c for c in wide.columns if c != "participant_id"]]], descriptions


def metric_columns(wide):
    """The numeric columns of the participants' tables: every one is summarised, whatever is added later.

    A metric nobody has (a network whose weights were not there: n/a, with the reason in the
    participants' sidecars) is left out rather than summarised as empty rows.
    """
    return [c for c in wide.columns if c not in ("participant_id", "set") and pd.api.types.is_numeric_dtype(wide[c])
            and wide[c].notna().any()]


def summarise(wide):
    """The tidy group table: per set and metric, one row per participant, then the mean and s.e.m. rows."""
    encoders = wide["encoder"] if "encoder" in wide.columns else pd.Series("n/a", index=wide.index)
    rows = []
    for set_name in dict.fromkeys(wide["set"]):  # the participants' order of the sets
        in_set = wide["set"] == set_name
        set_encoders = ", ".join(sorted(set(encoders[in_set].astype(str))))
        # Per set: a metric no participant has for this set (shape identification of natural
        # images) is left out of it.
        for metric in metric_columns(wide[in_set]):
            for participant, value, encoder in zip(wide.loc[in_set, "participant_id"], wide.loc[in_set, metric],
                                                   encoders[in_set]):
                rows.append({"participant_id": participant, "set": set_name, "metric": metric, "statistic": "value",
                             "value": value, "n_participants": np.nan, "encoder": encoder})
            values = wide.loc[in_set, metric].dropna().to_numpy(dtype=float)
            mean = values.mean() if values.size else np.nan
            # s.e.m. with the unbiased s.d.; undefined for a single participant (not 0: no spread was measured).
            sem = values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else np.nan
            for statistic, value in (("mean", mean), ("sem", sem)):
                rows.append({"participant_id": np.nan, "set": set_name, "metric": metric, "statistic": statistic,
                             "value": value, "n_participants": values.size, "encoder": set_encoders})
    tidy = pd.DataFrame(rows, columns=list(GROUP_COLUMNS))
    tidy["n_participants"] = tidy["n_participants"].astype("Int64")
    return tidy


def group_sidecar(tidy, descriptions):
    """The JSON sidecar: every column described, the metrics and statistics as Levels."""
    sidecar = {column: {"Description": text} for column, text in GROUP_COLUMNS.items()}
    sidecar["metric"]["Levels"] = {metric: descriptions.get(metric, "") for metric in dict.fromkeys(tidy["metric"])}
    sidecar["statistic"]["Levels"] = dict(STATISTICS)
    return sidecar
