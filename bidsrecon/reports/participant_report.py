"""The participant report ``sub-<label>.html``, in the manner of fMRIPrep's: what was done, and how well.

Sections: Summary (data, decoder, encoder, optimiser, time), Warnings and errors (what the run
logged as warnings, crash files of a failed later run), one per test set (stimuli above their
reconstructions, with each item's identification score), Decoding accuracy (per layer), Preprocessing
quality (head motion per run, a tSNR mosaic) and About (the exact command, software versions). It is
made from the output folder alone; quality and provenance files that older outputs lack are said to
be "not available" rather than failing the report.
"""
import datetime
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd

from bidsrecon import __version__
from bidsrecon.bids.derivatives import PROVENANCE_FILE, WARNINGS_LOG, atomic_write_text
from bidsrecon.boilerplate import CITATION_FILE
from bidsrecon.reports import html, plots
from bidsrecon.reports.outputs import (
    crash_files,
    metrics_path,
    motion_files,
    read_items,
    read_json,
    read_table,
    read_warnings,
    subject_dir,
    subject_label,
)
from bidsrecon.run_warnings import last_error

THUMBNAIL_PX = 160  # images are shown at 112 px; 160 keeps them sharp on high-density screens


def write_participant_report(output_dir, subject):
    """Write ``output_dir/sub-<label>.html`` from the participant's outputs; returns its path."""
    output_dir, label = Path(output_dir), subject_label(subject)
    metrics, descriptions = read_table(metrics_path(output_dir, label))
    items = read_items(output_dir, label)
    decoder = read_json(subject_dir(output_dir, label) / "decoder" / f"sub-{label}_decoder.json") or {}
    provenance = read_json(subject_dir(output_dir, label) / "log" / PROVENANCE_FILE.format(subject=label))
    sidecars = [item.sidecar or {} for item in items]
    _, item_descriptions = read_table(metrics_path(output_dir, label, "items_metrics"))

    sections = [("Summary", summary_section(output_dir, label, metrics, sidecars, decoder, provenance)),
                ("Warnings and errors", warnings_section(output_dir, label))]
    for set_name in metrics["set"]:
        sections.append((f"Test set: {set_name}",
                         test_set_section(metrics[metrics["set"] == set_name], descriptions,
                                          [item for item in items if item.set == set_name], item_descriptions)))
    sections += [
        ("Decoding accuracy", decoding_section(output_dir, label, decoder)),
        ("Preprocessing quality", quality_section(output_dir, label)),
        ("Methods", methods_section(output_dir)),
        ("About", about_section(provenance)),
    ]
    footer = f"Report written by bidsrecon {html.esc(__version__)} from the outputs in this folder."
    path = output_dir / f"sub-{label}.html"
    atomic_write_text(path, html.page(f"bidsrecon: sub-{label}", sections, footer))
    return path


# --- Summary ---------------------------------------------------------------------------------------


def _run_entities(source, run=None):
    """``bids:raw:sub-01/ses-x/func/sub-01_ses-x_task-y_run-01_bold.nii.gz`` -> (session, task, run); a
    BData file (``bids:bdata:sub-01_perceptionLetterImage_original_VC.h5``) -> (its session, n/a, ``run``)."""
    name = source.rsplit("/", 1)[-1]
    if source.startswith("bids:bdata:"):
        parts = name.split("_")
        return (parts[1] if len(parts) > 2 else "n/a"), "n/a", "n/a" if run is None else str(run)
    entities = dict(re.findall(r"(ses|task|run)-([A-Za-z0-9]+)", name))
    return entities.get("ses", "n/a"), entities.get("task", "n/a"), entities.get("run", "n/a")


def runs_table(sidecars):
    """Sessions and runs of the test trials, from the reconstructions' ``SourceTrials`` (or, for BData
    input, ``SourceSamples``)."""
    sessions = {}
    for sidecar in sidecars:
        trials = (sidecar.get("SourceTrials") or sidecar.get("SourceSamples")
                  or [{"Source": source} for source in sidecar.get("Sources", [])])
        for trial in trials:
            session, task, run = _run_entities(trial["Source"], trial.get("Run"))
            row = sessions.setdefault(session, {"sets": set(), "tasks": set(), "runs": set(), "trials": 0})
            row["sets"].add(sidecar.get("TestSet", "n/a"))
            row["tasks"].add(task)
            row["runs"].add(run)
            row["trials"] += 1
    return pd.DataFrame([
        {"session": session, "test set": ", ".join(sorted(row["sets"])), "task": ", ".join(sorted(row["tasks"])),
         "runs": len(row["runs"]), "trials": row["trials"]}
        for session, row in sorted(sessions.items())
    ], columns=["session", "test set", "task", "runs", "trials"])


def _duration(seconds):
    return str(datetime.timedelta(seconds=round(float(seconds))))


def summary_section(output_dir, label, metrics, sidecars, decoder, provenance):
    first = sidecars[0] if sidecars else {}
    pairs = [
        ("Test sets", html.esc(", ".join(f"{r['set']} ({r['n_items']} items, {r.get('n_trials', 'n/a')} trials)"
                                         for r in metrics.to_dict("records")))),
        ("Training", html.esc(f"{decoder.get('TrainingSamples', 'n/a')} samples of "
                              f"{len(decoder.get('TrainingStimuli', [])) or decoder.get('TrainingImages', 'n/a')}"
                              " images")
         if decoder else html.unavailable("Decoder sidecar")),
        ("Voxels", html.esc(f"{decoder.get('Voxels', 'n/a')} (selection: "
                            f"{decoder.get('VoxelSelection', {}).get('Method', 'n/a')})") if decoder else "n/a"),
        ("Encoder", html.esc(f"{first.get('EncoderDescription') or decoder.get('EncoderDescription', 'n/a')} "
                             f"[{first.get('Encoder') or decoder.get('Encoder', 'n/a')}]")),
        ("Layers", html.esc(", ".join(first.get("Layers") or decoder.get("Layers", [])) or "n/a")),
        ("Decoder", html.esc(decoder.get("Method", "n/a"))),
        ("Optimiser", html.esc(first.get("Optimizer", "n/a"))),
        ("Optimiser settings", "<code>" + html.esc(", ".join(
            f"{key}={value}" for key, value in {**first.get("OptimizerSettings", {}), "seed": first.get("Seed", "n/a"),
                                                 "image_size": first.get("ImageSize", "n/a")}.items())) + "</code>"),
    ]
    runs = list(motion_files(output_dir, label))
    if runs:
        sessions = {_run_entities(run)[0] for run in runs}
        pairs.append(("Runs preprocessed", html.esc(f"{len(runs)} runs in {len(sessions)} sessions "
                                                    "(listed under Preprocessing quality)")))
    if provenance and provenance.get("WallSeconds") is not None:
        pairs.append(("Time taken", html.esc(f"{_duration(provenance['WallSeconds'])} (h:mm:ss), "
                                             f"{provenance.get('Started', '?')} to {provenance.get('Finished', '?')}"
                                             f" on {provenance.get('Device', 'n/a')}")))
    else:
        pairs.append(("Time taken", html.unavailable("Run time (log/ provenance file)")))
    content = html.definition_list(pairs)
    content += "<h3>Test runs</h3>"
    runs = runs_table(sidecars)
    content += html.table(runs) if len(runs) else html.unavailable("Source runs")
    content += "<h3>Decoder penalty per layer</h3>"
    if decoder.get("Alpha"):
        best = {layer: max(scores) for layer, scores in decoder.get("CrossValidationScores", {}).items()}
        # Decoders that chose an alpha per count of trials the test items average list each.
        by_trials = decoder.get("AlphaByTestTrials") or {layer: {None: alpha} for layer, alpha in decoder["Alpha"].items()}
        rows, descriptions = [], {"cross-validated correlation": "Best mean cross-validated correlation of the "
                                  "sampled units at that penalty (for the items with the most trials)."}
        for layer, by_count in by_trials.items():
            row = {"layer": layer}
            for count, alpha in by_count.items():
                column = "alpha" if count is None else f"alpha ({count} trials)"
                row[column] = alpha
                descriptions[column] = "Ridge penalty chosen by grouped cross-validation" + (
                    "." if count is None else f" for the items that average {count} trials.")
            rows.append(row | {"cross-validated correlation": best.get(layer, np.nan)})
        content += html.table(pd.DataFrame(rows), descriptions)
    else:
        content += html.unavailable("Decoder penalties")
    return content


# --- Warnings and errors ----------------------------------------------------------------------------


def warnings_section(output_dir, label):
    """What the run logged as warnings, and the crash files of a later run that failed."""
    table, crashes = read_warnings(output_dir, label), crash_files(output_dir, label)
    if table is not None and not len(table) and not crashes:
        return "<p>No warnings: the run logged none, and no step failed.</p>"
    if table is None:
        content = html.unavailable("Warnings of the run (log/ warnings file)")
    elif not len(table):
        content = "<p>No warnings.</p>"
    else:
        content = (f'<p class="note">{len(table)} warning(s) the run logged, about what it dropped, zeroed or '
                   f"worked around (also in <code>log/{html.esc(WARNINGS_LOG.format(subject=label))}</code>):</p>"
                   f'<div class="wrap-anywhere">{html.table(table)}</div>')
    return content + crash_content(crashes)


def crash_content(crashes):
    if not crashes:
        return ""
    content = (f"<h3>Failed steps</h3><p class=\"bad\">{len(crashes)} crash file(s) of a later run of this participant "
               "that failed: the results in this report are those of the last complete run.</p>")
    for path in crashes:
        text = path.read_text(encoding="utf-8", errors="replace")
        content += html.details(f"{path.name}: {last_error(text) or 'see the traceback'}",
                                f"<pre>{html.esc(text)}</pre>")
    return content


# --- Test sets --------------------------------------------------------------------------------------


def _score_lines(scores, descriptions):
    lines = []
    for column, value in scores.items():
        if html.is_identification(column) and isinstance(value, (int, float)) and not np.isnan(value):
            kind = column.removeprefix("identification").strip("_") or "identification"
            css = "good" if value > plots.CHANCE else "bad" if value < plots.CHANCE else ""
            lines.append(f'<div class="{css}" title="{html.esc(descriptions.get(column, column))}">'
                         f"{html.esc(kind)} {100 * value:.0f}%</div>")
    return "".join(lines)


def test_set_section(metrics_row, descriptions, items, item_descriptions):
    content = html.table(metrics_row.drop(columns=["set"]), descriptions)
    if not items:
        return content + html.unavailable("Reconstructions of this set")
    content += ('<p class="note">Each pair: the presented (or imagined) image above its reconstruction; '
                "below, pairwise identification of the reconstruction against the set's other items (chance 50%).</p>")
    cards = []
    for item in items:
        images = []
        for path, role in ((item.stimulus_image, "stimulus"), (item.recon, "reconstruction")):
            if path.is_file():
                images.append(html.img(html.image_file_data_uri(path, THUMBNAIL_PX), f"{role} {item.stimulus}",
                                       title=f"{role}: {item.stimulus}"))
            else:
                images.append(f'<p class="unavailable">no {role} image</p>')
        trials = item.scores.get("n_trials")
        cards.append(
            '<div class="item">' + "".join(images)
            + f'<div class="name" title="{html.esc(item.stimulus)}">{html.esc(item.stimulus)}</div>'
            + (f'<div class="muted">{html.esc(html.format_value(trials))} trial(s)</div>' if trials is not None else "")
            + _score_lines(item.scores, item_descriptions) + "</div>"
        )
    return content + f'<div class="grid">{"".join(cards)}</div>'


# --- Decoding accuracy ------------------------------------------------------------------------------


def decoding_section(output_dir, label, decoder):
    path = metrics_path(output_dir, label, "decoding_metrics")
    if not path.is_file():
        return html.unavailable("Decoding accuracy (desc-decoding_metrics.tsv)")
    table, descriptions = read_table(path)
    layers = decoder.get("Layers") or list(dict.fromkeys(table["layer"]))
    content = ('<p class="note">How well each layer\'s features were decoded from brain activity, per test set: '
               "profile correlation (each unit across items) and pattern correlation (each item across units).</p>")
    content += html.figure(plots.decoding_accuracy(table, layers, descriptions), "decoding accuracy per layer")
    return content + html.table(table, descriptions)


# --- Preprocessing quality --------------------------------------------------------------------------


def motion_summary(tables):
    rows = []
    for run, table in tables.items():
        fd = table["framewise_displacement"].to_numpy(dtype=float)
        rows.append({
            "#": len(rows) + 1, "run": run, "volumes": len(table),
            "mean FD (mm)": float(np.nanmean(fd)), "max FD (mm)": float(np.nanmax(fd)),
            f"volumes FD > {plots.FD_THRESHOLD_MM} mm": int((fd > plots.FD_THRESHOLD_MM).sum()),
            "max |translation| (mm)": float(table[["trans_x", "trans_y", "trans_z"]].abs().to_numpy().max()),
            "max |rotation| (degrees)": float(np.degrees(table[["rot_x", "rot_y", "rot_z"]].abs().to_numpy().max())),
        })
    return pd.DataFrame(rows)


def tsnr_content(output_dir, label):
    from bidsrecon.reports.volumes import load_tsnr_and_mask

    folder = subject_dir(output_dir, label)
    # Named after the reference run's task and (fMRIPrep input) space: found by their descriptions.
    path = next(iter(sorted(folder.glob(f"qc/sub-{label}_*desc-tsnr_boldmap.nii.gz"))), None)
    if path is None:
        return html.unavailable("tSNR map (qc/ folder)")
    mask_path = next(iter(sorted(folder.glob(f"func/sub-{label}_*desc-decoder_mask.nii.gz"))), None)
    tsnr, mask, note = load_tsnr_and_mask(path, mask_path)
    inside = tsnr[mask] if mask is not None and mask.any() else tsnr[tsnr > 0]
    median = f"median tSNR {np.median(inside):.1f} in the {'decoded voxels' if mask is not None else 'brain'}" \
        if inside.size else "no voxel with a tSNR"
    content = (f'<p class="note">Temporal signal-to-noise ratio (mean ÷ s.d. over time, after detrending) of the '
               f"reference run (the first training run, or with --decoders-dir the first run), axial slices from bottom to top; {html.esc(median)}. "
               f"{html.esc(note)}</p>")
    return content + html.figure(plots.tsnr_mosaic(tsnr, mask), "tSNR mosaic")


#: Runs whose motion traces are drawn (those that moved most); the overview shows every run.
MOTION_TRACES = 8


def quality_section(output_dir, label):
    content = "<h3>Head motion</h3>"
    files = motion_files(output_dir, label)
    if files:
        tables = {run: pd.read_csv(path, sep="\t", na_values=["n/a"]).fillna(0.0) for run, path in files.items()}
        content += ('<p class="note">Rigid-body motion estimated by the realignment (or read from fMRIPrep\'s '
                    "confounds), and framewise displacement (Power et al. 2012; 50-mm head radius).</p>")
        summary = motion_summary(tables)
        content += html.figure(plots.fd_overview(tables), "framewise displacement per run") + html.table(summary)
        # ds001506 has about 200 runs per participant: every run is in the overview and the table,
        # and the traces of the runs that moved most are drawn, folded away (<details>, no script)
        # under a line that already says how much each moved. Drawing all would take minutes.
        rows = sorted(zip(summary.to_dict("records"), tables.items()), key=lambda pair: -pair[0]["mean FD (mm)"])
        if len(rows) > MOTION_TRACES:
            content += (f'<p class="note">Traces of the {MOTION_TRACES} runs with the largest mean framewise '
                        f"displacement (of {len(rows)}):</p>")
        for row, (run, table) in rows[:MOTION_TRACES]:
            content += html.details(
                f"{row['#']}. {run}: mean FD {row['mean FD (mm)']:.2f} mm, max {row['max FD (mm)']:.2f} mm",
                html.figure(plots.motion(table, run), f"head motion of {run}"))
    else:
        content += html.unavailable("Motion traces (qc/ folder)")
    content += "<h3>Temporal SNR</h3>" + tsnr_content(output_dir, label)
    content += "<h3>Carpet plot, global signal and DVARS</h3>" + carpet_content(output_dir, label)
    return content


def carpet_content(output_dir, label):
    """The reference run's carpet plot (drawn by nilearn during the run), and its DVARS in numbers."""
    qc = subject_dir(output_dir, label) / "qc"
    path, table = qc / f"sub-{label}_desc-carpet_bold.png", qc / f"sub-{label}_desc-quality_timeseries.tsv"
    if not path.is_file():
        return html.unavailable("Carpet plot (qc/ folder)")
    note = ""
    if table.is_file():
        quality = pd.read_csv(table, sep="\t", na_values=["n/a"])
        spikes = int((quality["std_dvars"] > DVARS_SPIKE).sum())
        note = (f" Standardised DVARS: median {quality['std_dvars'].median():.2f}, maximum "
                f"{quality['std_dvars'].max():.2f}; {spikes} of {len(quality)} volumes above {DVARS_SPIKE}.")
    return (f'<p class="note">The run the tSNR map is of, every voxel of the brain mask over time (detrended, '
            f"z-scored; nilearn's carpet plot): motion and other artefacts show as vertical stripes where "
            f"the standardised DVARS peaks.{note}</p>"
            + html.figure(path.read_bytes(), "carpet plot, global signal and DVARS"))


#: Standardised DVARS above this marks a volume worth a look (fMRIPrep's reports use 1.5).
DVARS_SPIKE = 1.5


# --- Methods ---------------------------------------------------------------------------------------


def methods_section(output_dir):
    """The run's methods boilerplate (``logs/CITATION.md``), to paste into a paper."""
    path = Path(output_dir) / CITATION_FILE
    if not path.is_file():
        return html.unavailable(f"Methods boilerplate ({CITATION_FILE})")
    return (f"<p>Also in <code>{html.esc(CITATION_FILE)}</code>, to paste into a methods section.</p>"
            + html.markdown(path.read_text()))


# --- About ------------------------------------------------------------------------------------------


def about_section(provenance):
    if not provenance:
        return (html.unavailable("Command and software versions (log/ provenance file)")
                + f"<p>Report written by bidsrecon {html.esc(__version__)}.</p>")
    command = provenance.get("Command")
    command = shlex.join(map(str, command)) if isinstance(command, list) else str(command or "n/a")
    content = "<h3>Command</h3>" + f"<pre>{html.esc(command)}</pre>"
    preprocessing = provenance.get("Preprocessing") or {}
    content += html.definition_list([
        (key, html.esc(_plain(provenance[key])))
        for key in ("Started", "Finished", "WallSeconds", "Device") if key in provenance
    ] + ([("Preprocessing", html.esc(", ".join(f"{key}={value}" for key, value in preprocessing.items()
                                               if key != "NormalisationDescription")))] if preprocessing else []))
    versions = provenance.get("Versions") or {}
    content += "<h3>Software versions</h3>"
    content += html.table(pd.DataFrame(sorted(versions.items()), columns=["package", "version"])) if versions \
        else html.unavailable("Software versions")
    return content


def _plain(value):
    """A provenance value as text: a mapping (the device of each step) as ``key: value`` pairs."""
    return ", ".join(f"{key}: {item}" for key, item in value.items()) if isinstance(value, dict) else value
