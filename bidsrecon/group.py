"""The group level: read only the output dataset, aggregate the participants' scores and draw figures."""
import json
from io import BytesIO
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from bidsrecon.bids.derivatives import atomic_write_bytes, atomic_write_text, write_json
from bidsrecon.errors import EXIT_INPUT_MISSING, BidsReconError

COLUMNS_PER_ROW = 10
TILE_GAP = 4
LABEL_HEIGHT = 18


def run_group_level(config):
    """Write ``group/group_desc-identification_metrics.tsv`` and ``figures/sub-<label>_desc-reconstructions.png``."""
    output_dir = Path(config.output_dir)
    metrics_files = sorted(output_dir.glob("sub-*/sub-*_desc-metrics.tsv"))
    if config.participant_labels:
        wanted = {f"sub-{label.removeprefix('sub-')}" for label in config.participant_labels}
        metrics_files = [path for path in metrics_files if path.parent.name in wanted]
    if not metrics_files:
        raise BidsReconError(
            f"no participant results (sub-*/sub-*_desc-metrics.tsv) in {output_dir}; run the participant level first",
            EXIT_INPUT_MISSING,
        )
    table = pd.concat(
        [pd.read_csv(path, sep="\t").assign(participant_id=path.parent.name) for path in metrics_files],
        ignore_index=True,
    )
    table = table[["participant_id", *[c for c in table.columns if c != "participant_id"]]]
    group_tsv = output_dir / "group" / "group_desc-identification_metrics.tsv"
    atomic_write_text(group_tsv, table.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.6g"))
    sidecar = json.loads((metrics_files[0].with_suffix(".json")).read_text())
    sidecar["participant_id"] = {"Description": "Participant whose trials were decoded."}
    write_json(group_tsv.with_suffix(".json"), sidecar)
    print(f"group table: {group_tsv}")
    for path in metrics_files:
        figure = draw_participant_figure(path.parent, list(pd.read_csv(path, sep="\t")["set"]))
        print(f"figure: {figure}")
    return group_tsv


def draw_participant_figure(subject_dir, sets):
    """One PNG of the test ``sets``: stimuli on top, reconstructions below (from the output folder only)."""
    subject_dir = Path(subject_dir)
    subject = subject_dir.name
    sidecars = sorted((subject_dir / "recon").glob("*_desc-recon_image.json"))
    items = [(json.loads(path.read_text()), path) for path in sidecars]
    font = ImageFont.load_default(size=12)
    rows = []
    for set_name in sets:
        pairs = [
            (Image.open(str(path).replace("_desc-recon_image.json", "_desc-stimulus_image.png")).convert("RGB"),
             Image.open(str(path).replace(".json", ".png")).convert("RGB"))
            for info, path in items if info["TestSet"] == set_name
        ]
        for start in range(0, len(pairs), COLUMNS_PER_ROW):
            rows.append((f"{set_name} (top: presented, bottom: reconstructed)" if start == 0 else "", pairs[start:start + COLUMNS_PER_ROW]))
    size = rows[0][1][0][0].width
    title = f"{subject} - encoder: {items[0][0]['EncoderDescription']}"
    width = max(COLUMNS_PER_ROW * (size + TILE_GAP), int(font.getlength(title))) + TILE_GAP
    height = sum(LABEL_HEIGHT + 2 * (size + TILE_GAP) for _ in rows) + LABEL_HEIGHT
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((TILE_GAP, 2), title, fill="black", font=font)
    y = LABEL_HEIGHT
    for label, pairs in rows:
        draw.text((TILE_GAP, y + 2), label, fill="black", font=font)
        y += LABEL_HEIGHT
        for column, (stimulus, recon) in enumerate(pairs):
            x = TILE_GAP + column * (size + TILE_GAP)
            canvas.paste(stimulus, (x, y))
            canvas.paste(recon, (x, y + size + TILE_GAP))
        y += 2 * (size + TILE_GAP)
    path = subject_dir.parent / "figures" / f"{subject}_desc-reconstructions.png"
    buffer = BytesIO()
    canvas.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path
