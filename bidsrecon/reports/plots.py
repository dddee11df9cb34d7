"""The reports' figures, drawn with matplotlib and returned as PNG bytes.

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly, not pyplot: no
global figure state, no GUI backend, nothing left open between reports.
"""
import os
import tempfile
from io import BytesIO

import numpy as np

CHANCE = 0.5
FD_THRESHOLD_MM = 0.5  # Power et al. (2012)'s usual censoring threshold, drawn for reference
SET_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _new_figure(width, height, layout="constrained"):
    """A matplotlib Figure; matplotlib's caches go under the temporary folder unless MPLCONFIGDIR is usable.

    Matplotlib writes a font cache on first import, to ~/.config/matplotlib by default: in a
    read-only container (``docker run --read-only --tmpfs /tmp``) or with an unwritable
    MPLCONFIGDIR that home may not be writable, so it goes to the temporary folder then.
    """
    configured = os.environ.get("MPLCONFIGDIR")
    if not (configured and os.path.isdir(configured) and os.access(configured, os.W_OK)):
        folder = os.path.join(tempfile.gettempdir(), f"bidsrecon-matplotlib-{os.getuid()}")
        os.makedirs(folder, exist_ok=True)
        os.environ["MPLCONFIGDIR"] = folder
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout=layout)


def to_png(fig):
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def decoding_accuracy(table, layers, descriptions=None):
    """Per-layer decoding accuracy: one panel per correlation column, one line per test set.

    Parameters
    ----------
    table : DataFrame
        The participant's ``desc-decoding_metrics.tsv`` (columns ``set``, ``layer`` and scores).
    layers : list of str
        Layers in the encoder's order (the x axis).
    """
    descriptions = descriptions or {}
    columns = [c for c in table.columns if "correlation" in c and np.issubdtype(table[c].dtype, np.number)]
    fig = _new_figure(4.2 * max(len(columns), 1), 3.2)
    axes = fig.subplots(1, max(len(columns), 1), squeeze=False)[0]
    positions = {layer: index for index, layer in enumerate(layers)}
    for axis, column in zip(axes, columns):
        for colour_index, (set_name, rows) in enumerate(table.groupby("set", sort=False)):
            rows = rows[rows["layer"].isin(positions)].sort_values("layer", key=lambda s: s.map(positions))
            axis.plot(rows["layer"].map(positions), rows[column], marker="o", label=set_name,
                      color=SET_COLOURS[colour_index % len(SET_COLOURS)])
        axis.axhline(0, color="grey", linewidth=0.8)
        crowded = len(layers) > 6
        axis.set_xticks(range(len(layers)), layers, rotation=45 if crowded else 0, ha="right" if crowded else "center")
        axis.set_title(column.replace("_", " "), fontsize=11)
        axis.set_ylabel("correlation")
        axis.set_xlabel("layer")
    if columns:
        axes[-1].legend(fontsize=8, title="test set", title_fontsize=8)
    return to_png(fig)


def motion(table, run_label):
    """Translations, rotations and framewise displacement of one run, stacked over time (volumes)."""
    # Fixed margins: the layout engine would double the drawing time of a figure drawn per run.
    fig = _new_figure(9, 4.2, layout=None)
    fig.subplots_adjust(left=0.11, right=0.99, top=0.93, bottom=0.11, hspace=0.12)
    top, middle, bottom = fig.subplots(3, 1, sharex=True)
    volumes = np.arange(len(table))
    for axis_name in ("x", "y", "z"):
        top.plot(volumes, table[f"trans_{axis_name}"], label=axis_name, linewidth=1)
        # Degrees read better than radians; the TSV keeps radians (BIDS, fMRIPrep).
        middle.plot(volumes, np.degrees(table[f"rot_{axis_name}"]), label=axis_name, linewidth=1)
    top.set_ylabel("translation\n(mm)")
    middle.set_ylabel("rotation\n(degrees)")
    top.legend(fontsize=8, ncols=3, loc="upper right")
    fd = table["framewise_displacement"].to_numpy(dtype=float)
    bottom.plot(volumes, fd, color="black", linewidth=1)
    bottom.axhline(FD_THRESHOLD_MM, color="#b42318", linestyle="--", linewidth=0.8, label=f"{FD_THRESHOLD_MM} mm")
    bottom.set_ylabel("FD (mm)")
    bottom.set_xlabel("volume")
    bottom.legend(fontsize=8, loc="upper right")
    top.set_title(run_label, fontsize=10)
    return to_png(fig)


def fd_overview(tables):
    """Framewise displacement of every run side by side (a box per run, numbered as in the table)."""
    labels = list(tables)
    fig = _new_figure(min(max(4.0, 0.35 * len(labels) + 1.5), 12.5), 2.6)
    axis = fig.subplots()
    # The first row is 0 by definition (no previous volume): left out of the boxes.
    data = [tables[label]["framewise_displacement"].to_numpy(dtype=float)[1:] for label in labels]
    axis.boxplot([values if values.size else [0.0] for values in data], positions=range(1, len(labels) + 1),
                 widths=0.6, showfliers=True, flierprops={"markersize": 2})
    axis.axhline(FD_THRESHOLD_MM, color="#b42318", linestyle="--", linewidth=0.8, label=f"{FD_THRESHOLD_MM} mm")
    axis.set_xticks(range(1, len(labels) + 1), [str(i) for i in range(1, len(labels) + 1)],
                    fontsize=7 if len(labels) > 30 else 9)
    axis.set_xlabel("run (numbered as in the table)")
    axis.set_ylabel("FD (mm)")
    axis.legend(fontsize=8, loc="upper right")
    return to_png(fig)


def tsnr_mosaic(tsnr, mask=None, columns=8):
    """Axial slices (bottom to top) of a tSNR map, with the decoded voxels outlined.

    ``tsnr`` and ``mask`` are 3-D arrays already in RAS+ orientation on the same grid.
    """
    slices = list(range(tsnr.shape[2]))
    if len(slices) > 4 * columns:  # at most four rows, evenly spread
        slices = list(np.linspace(0, tsnr.shape[2] - 1, 4 * columns).round().astype(int))
    rows = int(np.ceil(len(slices) / columns))
    columns = min(columns, len(slices))
    aspect = tsnr.shape[1] / tsnr.shape[0]
    fig = _new_figure(1.3 * columns + 1.0, 1.3 * rows * aspect + 0.3)
    axes = fig.subplots(rows, columns, squeeze=False)
    inside = tsnr[np.isfinite(tsnr) & (tsnr > 0)]
    vmax = float(np.percentile(inside, 99)) if inside.size else 1.0
    image = None
    for axis, z in zip(axes.flat, slices):
        # RAS+ array transposed, origin at the bottom: anterior is up and the subject's left on the
        # left (neurological convention, as in fMRIPrep's reports).
        image = axis.imshow(np.nan_to_num(tsnr[:, :, z]).T, origin="lower", cmap="inferno", vmin=0, vmax=vmax,
                            interpolation="nearest")
        if mask is not None and mask[:, :, z].any():
            axis.contour(mask[:, :, z].T.astype(float), levels=[0.5], colors="#38bdf8", linewidths=0.8)
        axis.set_title(f"z={z}", fontsize=7, pad=2)
    for axis in axes.flat:
        axis.set_axis_off()
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="tSNR")
    return to_png(fig)


#: Panels per row of `identification_bars`: three 4-inch panels are 1200 px, shown unscaled in a 1280-px window.
BAR_PANELS_PER_ROW = 3


def identification_bars(table, metrics, set_order):
    """Pairwise identification, one panel per metric: per test set the mean ± s.e.m. over participants
    (a bar), each participant a dot, chance dashed.

    One panel per metric rather than grouped bars in one: the metrics apply to different sets (the
    shape measure to shapes and letters only), and one wide figure was shrunk to unreadable labels.

    Parameters
    ----------
    table : DataFrame
        One row per participant and set (columns ``participant_id``, ``set`` and ``metrics``).
    metrics : list of str
        Identification columns.
    set_order : list of str
    """
    columns = min(max(len(metrics), 1), BAR_PANELS_PER_ROW)
    rows = -(-max(len(metrics), 1) // columns)
    fig = _new_figure(4.0 * columns, 3.2 * rows)
    axes = list(fig.subplots(rows, columns, squeeze=False).flat)
    rng = np.random.default_rng(0)  # the dots' horizontal jitter only; fixed so reports are reproducible
    for axis, metric in zip(axes, metrics):
        _identification_panel(axis, table, metric, set_order, rng)
    for axis in axes[len(metrics):]:
        axis.set_axis_off()
    return to_png(fig)


def _identification_panel(axis, table, metric, set_order, rng):
    """One metric's bars, for the sets that have it."""
    sets = [name for name in set_order if table.loc[table["set"] == name, metric].notna().any()]
    for index, set_name in enumerate(sets):
        values = table.loc[table["set"] == set_name, metric].dropna().to_numpy(dtype=float)
        sem = values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else 0.0
        axis.bar(index, 100 * values.mean(), 0.7, yerr=100 * sem, capsize=4, alpha=0.55,
                 color=SET_COLOURS[set_order.index(set_name) % len(SET_COLOURS)])
        axis.scatter(index + rng.uniform(-0.15, 0.15, values.size), 100 * values, s=16, color="black", zorder=3)
    axis.axhline(100 * CHANCE, color="grey", linestyle="--", linewidth=1)
    crowded = len(sets) > 4
    axis.set_xticks(range(len(sets)), sets, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    axis.set_xlim(-0.6, max(len(sets), 1) - 0.4)
    axis.set_ylim(0, 105)
    axis.set_ylabel("identification (%)")
    axis.set_title(metric.removeprefix("identification_").replace("_", " "), fontsize=11)
    axis.tick_params(labelsize=10)


def carpet(bold_file, mask_file, tr, quality):
    """Global signal and standardised DVARS above nilearn's carpet plot of the run, as PNG bytes.

    The carpet (nilearn.plotting.plot_carpet) shows every voxel of the mask over time, each
    detrended and z-scored: motion and other artefacts are vertical stripes, where DVARS peaks.
    """
    from nilearn.plotting import plot_carpet

    fig = _new_figure(9.0, 5.5, layout=None)
    grid = fig.add_gridspec(3, 1, height_ratios=(1, 1, 4), hspace=0.35, left=0.08, right=0.98, top=0.95,
                            bottom=0.11)
    seconds = np.arange(len(quality)) * tr
    for row, (column, label) in enumerate((("global_signal", "global signal"), ("std_dvars", "std. DVARS"))):
        axis = fig.add_subplot(grid[row])
        axis.plot(seconds, quality[column], color=SET_COLOURS[row], linewidth=0.9)
        axis.set_ylabel(label, fontsize=8)
        axis.set_xlim(0, seconds[-1] if len(seconds) > 1 else 1)
        axis.tick_params(labelsize=7, labelbottom=False)
    plot_carpet(str(bold_file), mask_img=str(mask_file), t_r=tr, figure=fig, axes=fig.add_subplot(grid[2]),
                title=None)
    return to_png(fig)
