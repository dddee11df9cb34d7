"""The group level: read only the output dataset, aggregate the participants' scores, write the report.

Outputs (under ``output_dir``)::

    group/group_desc-metrics.tsv (+ .json)     each participant's score per test set and metric, and
                                               the mean and s.e.m. over participants (tidy: one value a row)
    group/group.html                           the group report: every participant's reconstructions
                                               side by side, identification per set (mean ± s.e.m.)
    figures/sub-<label>_desc-reconstructions.png   one figure per participant

The expected participants are those of ``--participant-label``, or else every ``sub-*`` folder of
``output_dir``; if any of them lacks results, nothing is written and the error lists what is missing.
"""
from pathlib import Path

import numpy as np
import pandas as pd

from bidsrecon.bids.derivatives import atomic_write_text, write_json
from bidsrecon.errors import EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.reports.group import write_group_report
from bidsrecon.reports.montage import draw_participant_figure
from bidsrecon.reports.outputs import metrics_path, missing_outputs, read_table, subject_label

GROUP_TSV = Path("group") / "group_desc-metrics.tsv"

GROUP_COLUMNS = {
    "participant_id": "Participant of the row's value; n/a on the mean and s.e.m. rows (over participants).",
    "set": "Test set.",
    "metric": "Column of the participants' sub-<label>_desc-metrics.tsv (see Levels).",
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
    check_complete(output_dir, labels)
    wide, descriptions = read_participant_metrics(output_dir, labels)
    tidy = summarise(wide)

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


def read_participant_metrics(output_dir, labels):
    """Every participant's ``desc-metrics.tsv`` stacked, ``participant_id`` first, and the column descriptions."""
    tables, descriptions = [], {}
    for label in labels:
        table, described = read_table(metrics_path(output_dir, label))
        tables.append(table.assign(participant_id=f"sub-{label}"))
        descriptions = {**described, **descriptions}
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
