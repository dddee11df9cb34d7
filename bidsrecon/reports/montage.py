"""One PNG per participant: every test set's stimuli above their reconstructions (``figures/``)."""
from io import BytesIO
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from bidsrecon.bids.derivatives import FIGURE_FILE, atomic_write_bytes
from bidsrecon.reports.outputs import read_items, subject_label

COLUMNS_PER_ROW = 10
TILE_GAP = 4
LABEL_HEIGHT = 18


def draw_participant_figure(output_dir, subject, sets):
    """Write ``figures/sub-<label>_desc-reconstructions_figure.png`` for the test ``sets``; returns its path
    (None when the sets have no item)."""
    output_dir, label = Path(output_dir), subject_label(subject)
    items = read_items(output_dir, label)
    font = ImageFont.load_default(size=12)
    rows = []
    for set_name in sets:
        pairs = [(Image.open(item.stimulus_image).convert("RGB"), Image.open(item.recon).convert("RGB"))
                 for item in items if item.set == set_name]
        for start in range(0, len(pairs), COLUMNS_PER_ROW):
            rows.append((f"{set_name} (top: presented, bottom: reconstructed)" if start == 0 else "",
                         pairs[start:start + COLUMNS_PER_ROW]))
    if not rows:
        return None
    size = rows[0][1][0][0].width
    sidecar = items[0].sidecar or {}
    title = f"sub-{label} - encoder: {sidecar.get('EncoderDescription', 'n/a')}"
    width = max(COLUMNS_PER_ROW * (size + TILE_GAP), int(font.getlength(title))) + TILE_GAP
    height = sum(LABEL_HEIGHT + 2 * (size + TILE_GAP) for _ in rows) + LABEL_HEIGHT
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((TILE_GAP, 2), title, fill="black", font=font)
    y = LABEL_HEIGHT
    for text, pairs in rows:
        draw.text((TILE_GAP, y + 2), text, fill="black", font=font)
        y += LABEL_HEIGHT
        for column, (stimulus, recon) in enumerate(pairs):
            x = TILE_GAP + column * (size + TILE_GAP)
            canvas.paste(stimulus, (x, y))
            canvas.paste(recon, (x, y + size + TILE_GAP))
        y += 2 * (size + TILE_GAP)
    path = output_dir / "figures" / FIGURE_FILE.format(subject=label)
    buffer = BytesIO()
    canvas.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path
