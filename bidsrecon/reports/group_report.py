"""The group report ``group/group.html``: the participants' results side by side.

Sections: Summary (participants, with links to their own reports, each metric's mean ± s.e.m.
per test set, and each participant's count of warnings and crash files), Identification (a panel
per measure; bars: mean ± s.e.m. over participants, a dot per participant, chance dashed), one
section per test set (a row of presented images, then one row of reconstructions per participant,
each with its identification score), and the per-participant table.
"""
from pathlib import Path

import pandas as pd

from bidsrecon import __version__
from bidsrecon.bids.derivatives import atomic_write_text
from bidsrecon.reports import html, plots
from bidsrecon.reports.outputs import crash_files, read_items, read_warnings
from bidsrecon.reports.participant_report import methods_section

THUMBNAIL_PX = 128  # shown at 80 px; many participants x items must keep the file small
REPORT = Path("group") / "group.html"


def write_group_report(output_dir, labels, wide, tidy, descriptions):
    """Write ``output_dir/group/group.html``; returns its path.

    ``wide`` is the participants' metrics stacked (``participant_id`` first), ``tidy`` the group
    table of `bidsrecon.group_level.summarise`, ``descriptions`` the metrics' column descriptions.
    """
    output_dir = Path(output_dir)
    sets = list(dict.fromkeys(wide["set"]))
    items = {label: read_items(output_dir, label) for label in labels}
    # Measures no participant has (the evaluation networks not installed) get no panel.
    identification = [c for c in wide.columns if html.is_identification(c) and pd.api.types.is_numeric_dtype(wide[c])
                      and wide[c].notna().any()]

    sections = [("Summary", summary_section(output_dir, labels, wide, tidy, descriptions))]
    if identification:
        sections.append(("Identification", (
            '<p class="note">Pairwise identification of each reconstruction against the other items of its set, '
            "one panel per measure (chance 50%, dashed): bars are the mean over participants with the standard "
            "error of the mean, dots the participants.</p>"
            + html.figure(plots.identification_bars(wide, identification, sets), "pairwise identification per set"))))
    for set_name in sets:
        sections.append((f"Test set: {set_name}", comparison_table(set_name, items)))
    sections.append(("Participants", html.table(wide, descriptions)))
    sections.append(("Methods", methods_section(output_dir)))
    path = output_dir / REPORT
    atomic_write_text(path, html.page("bidsrecon: group", sections,
                                      f"Report written by bidsrecon {html.esc(__version__)} from the outputs in "
                                      "this folder."))
    return path


def summary_section(output_dir, labels, wide, tidy, descriptions):
    # Links are relative, so they keep working when the output folder is moved.
    links = ", ".join(
        f'<a href="../sub-{label}.html">sub-{label}</a>' if (output_dir / f"sub-{label}.html").is_file()
        else f"sub-{label}" for label in labels)
    encoders = ", ".join(sorted(set(wide["encoder"].astype(str)))) if "encoder" in wide.columns else "n/a"
    content = html.definition_list([("Participants", f"{len(labels)}: {links}"), ("Encoder", html.esc(encoders))])
    content += "<h3>Mean ± s.e.m. over participants</h3>"
    content += html.table(mean_sem_table(tidy), descriptions, percent=lambda column: False)
    content += ('<h3>Warnings and errors</h3><p class="note">Per participant, the warnings its run logged and the '
                "crash files of a later run that failed; each participant's report lists them.</p>")
    return content + html.table(problems_table(output_dir, labels), PROBLEM_COLUMNS)


PROBLEM_COLUMNS = {"warnings": "Warnings the participant's run logged (n/a: outputs of a version that did not "
                               "record them).",
                   "crash files": "Crash files of failed steps, from a run after the one whose results are shown."}


def problems_table(output_dir, labels):
    rows = []
    for label in labels:
        warnings = read_warnings(output_dir, label)
        rows.append({"participant": f"sub-{label}", "warnings": len(warnings) if warnings is not None else "n/a",
                     "crash files": len(crash_files(output_dir, label))})
    return pd.DataFrame(rows, columns=["participant", *PROBLEM_COLUMNS])


def mean_sem_table(tidy):
    """One row per set, one column per metric: ``mean ± sem (n)`` as text (percent for identification)."""
    summary = tidy[tidy["statistic"].isin(["mean", "sem"])]
    rows = []
    for set_name, in_set in summary.groupby("set", sort=False):
        row = {"set": set_name}
        for metric, values in in_set.groupby("metric", sort=False):
            stats = dict(zip(values["statistic"], values["value"]))
            percent = html.is_identification(metric)
            mean, sem = html.format_value(stats["mean"], percent), html.format_value(stats["sem"], percent)
            row[metric] = f"{mean} ± {sem} (n={values['n_participants'].iloc[0]})"
        rows.append(row)
    return pd.DataFrame(rows)


def _score(item):
    scores = [(column, value) for column, value in item.scores.items()
              if html.is_identification(column) and isinstance(value, (int, float)) and value == value]
    return "<br>".join(f'<span title="{html.esc(column)}">{100 * value:.0f}%</span>' for column, value in scores)


def comparison_table(set_name, items):
    """Presented images on top, one row of reconstructions per participant, aligned by stimulus.

    Participants may have different items of a set (imagery targets differ): the columns are the
    union, in order of first appearance, and a participant without an item has an empty cell.
    """
    in_set = {label: {item.stimulus: item for item in subject_items if item.set == set_name}
              for label, subject_items in items.items()}
    stimuli = list(dict.fromkeys(stimulus for by_stimulus in in_set.values() for stimulus in by_stimulus))
    if not stimuli:
        return html.unavailable("Reconstructions of this set")
    header = "".join(f'<th title="{html.esc(s)}">{html.esc(s)}</th>' for s in stimuli)  # wrapped by the style sheet
    presented = []
    for stimulus in stimuli:
        item = next(by_stimulus[stimulus] for by_stimulus in in_set.values() if stimulus in by_stimulus)
        presented.append(f"<td>{html.img(html.image_file_data_uri(item.stimulus_image, THUMBNAIL_PX), stimulus)}</td>")
    rows = [f"<tr><th>presented</th>{''.join(presented)}</tr>"]
    for label, by_stimulus in in_set.items():
        cells = []
        for stimulus in stimuli:
            item = by_stimulus.get(stimulus)
            if item is None:
                cells.append("<td></td>")
                continue
            image = html.img(html.image_file_data_uri(item.recon, THUMBNAIL_PX), f"sub-{label} {stimulus}")
            cells.append(f"<td>{image}{_score(item)}</td>")
        rows.append(f"<tr><th>sub-{html.esc(label)}</th>{''.join(cells)}</tr>")
    return ('<p class="note">Top row: the presented (or imagined) images; below, each participant\'s reconstructions '
            "with their pairwise identification.</p>"
            f'<div class="compare"><table><thead><tr><th></th>{header}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")
