"""Small HTML5 building blocks for the reports: a page with a navigation bar, tables and embedded images.

Everything a report shows is inside its one file (images as base64 ``data:`` URIs, the style sheet
inline, no script, no web font), so that it opens offline and still works after the output folder
is moved or copied.
"""
import base64
import html
import math
import re
from io import BytesIO
from numbers import Integral, Number
from pathlib import Path

from PIL import Image

STYLE = """
:root { --accent: #1f4e79; --muted: #666; --line: #d8dde3; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #222; background: #fff; }
nav { position: sticky; top: 0; z-index: 10; background: var(--accent); padding: 0 1em; display: flex;
      flex-wrap: wrap; align-items: center; gap: 0 1.2em; }
nav .brand { color: #fff; font-weight: 600; padding: .7em 0; }
nav a { color: #dfe9f3; text-decoration: none; padding: .7em 0; }
nav a:hover { color: #fff; text-decoration: underline; }
main { max-width: 1280px; margin: 0 auto; padding: 0 1.5em 3em; }
section { border-bottom: 1px solid var(--line); padding: .5em 0 1.5em; scroll-margin-top: 3em; }
h1 { font-size: 1.6em; margin: .8em 0 .2em; }
h2 { font-size: 1.35em; color: var(--accent); margin: .9em 0 .4em; }
h3 { font-size: 1.1em; margin: 1em 0 .4em; }
p.note, .muted { color: var(--muted); }
p.unavailable { color: var(--muted); font-style: italic; }
table { border-collapse: collapse; margin: .4em 0 1em; }
.scroll { max-width: 100%; overflow-x: auto; }
.wrap-anywhere td:last-child { overflow-wrap: anywhere; }  /* long paths in the last column */
th, td { border: 1px solid var(--line); padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f2f5f8; }
th[title] { cursor: help; text-decoration: underline dotted; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
dl.summary { display: grid; grid-template-columns: max-content 1fr; gap: .25em 1.2em; }
dl.summary dt { font-weight: 600; }
dl.summary dd { margin: 0; }
code, pre { font-family: "SFMono-Regular", Menlo, Consolas, monospace; font-size: .92em; }
pre { background: #f6f8fa; padding: .6em .8em; overflow-x: auto; white-space: pre-wrap; word-break: break-all; }
details pre { max-height: 30em; overflow-y: auto; }
img.figure { max-width: 100%; height: auto; display: block; margin: .4em 0; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
.item { width: 118px; font-size: 12px; text-align: center; }
.item img { width: 112px; height: 112px; image-rendering: pixelated; display: block; margin: 0 auto 2px;
            border: 1px solid var(--line); }
.item .name { overflow-wrap: anywhere; }
.good { color: #1a7f37; font-weight: 600; }
.bad { color: #b42318; }
.compare { overflow-x: auto; }
.compare table td, .compare table th { text-align: center; vertical-align: middle; }
.compare thead th { max-width: 120px; overflow-wrap: anywhere; font-size: 12px; font-weight: normal; }
.compare img { width: 80px; height: 80px; image-rendering: pixelated; display: block; margin: 0 auto; }
details { margin: .2em 0; }
details > summary { cursor: pointer; color: var(--accent); }
footer { color: var(--muted); font-size: .9em; padding: 1em 0; }
"""


def esc(value):
    return html.escape(str(value), quote=True)


def markdown(text):
    """The little Markdown of the methods boilerplate as HTML: ``#`` headings, paragraphs, ``- `` lists
    and ``**bold**``."""
    blocks = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.splitlines()
        if all(line.startswith("- ") for line in lines):
            blocks.append("<ul>" + "".join(f"<li>{_inline(line[2:])}</li>" for line in lines) + "</ul>")
        elif block.startswith("#"):
            level = min(len(block) - len(block.lstrip("#")) + 2, 6)
            blocks.append(f"<h{level}>{_inline(block.lstrip('#').strip())}</h{level}>")
        else:
            blocks.append(f"<p>{_inline(' '.join(lines))}</p>")
    return "\n".join(blocks)


def _inline(text):
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", esc(text))


def anchor(text):
    """An id for a section: ``"Test set: natural"`` -> ``"test-set-natural"``."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "section"


def png_data_uri(png_bytes):
    return "data:image/png;base64," + base64.b64encode(png_bytes).decode("ascii")


def image_file_data_uri(path, max_side=None):
    """A PNG file as a data URI, shrunk (never enlarged) so that its longer side is at most ``max_side``.

    Reconstructions of the real dataset are 224 px; hundreds of them at full size would make a
    report of tens of MB, and the page shows them at about 100 px anyway.
    """
    with Image.open(path) as image:
        if max_side is None or max(image.size) <= max_side:
            if image.format == "PNG":
                return png_data_uri(Path(path).read_bytes())
            small = image.convert("RGB")
        else:
            small = image.convert("RGB")
            small.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        buffer = BytesIO()
        small.save(buffer, format="PNG", optimize=True)
    return png_data_uri(buffer.getvalue())


def img(src, alt, css_class=None, title=None):
    attributes = [f'src="{src}"', f'alt="{esc(alt)}"']
    if css_class:
        attributes.append(f'class="{css_class}"')
    if title:
        attributes.append(f'title="{esc(title)}"')
    return f"<img {' '.join(attributes)}>"


def figure(png_bytes, alt):
    """A matplotlib figure (PNG bytes) shown at its natural size, shrunk to the page width."""
    return img(png_data_uri(png_bytes), alt, css_class="figure")


def format_value(value, percent=False):
    """A table cell: n/a for missing, 3 significant digits for floats, percentages where asked."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, Number):
        if percent:
            return f"{100 * float(value):.1f}%"
        if isinstance(value, Integral):
            return str(value)
        if float(value).is_integer() and abs(value) < 1e5:  # counts read back as floats; not penalties like 1.79e+06
            return str(int(value))
        return f"{float(value):.3g}"
    return str(value)


def is_identification(column):
    """Pairwise-identification accuracies (shown as %), not their p-values or counts."""
    return column.startswith("identification") and not re.search(r"(^|_)(p|pval|pvalue|p_value|n)($|_)", column)


def _header(column):
    # Long column names (identification_efficientnetlite0) may break after their underscores.
    return esc(column).replace("_", "_<wbr>")


def table(frame, descriptions=None, percent=is_identification):
    """An HTML table of a DataFrame; each header's tooltip is the column's Description from the sidecar.

    In its own scrolling box: a table of many metrics scrolls sideways there, not the whole page.
    """
    descriptions = descriptions or {}
    head = "".join(
        f'<th title="{esc(descriptions[c])}">{_header(c)}</th>' if descriptions.get(c) else f"<th>{_header(c)}</th>"
        for c in frame.columns
    )
    rows = []
    for record in frame.itertuples(index=False):
        cells = []
        for column, value in zip(frame.columns, record):
            numeric = isinstance(value, Number) and not isinstance(value, bool)
            text = format_value(value, percent=numeric and percent(column))
            cells.append(f'<td class="number">{esc(text)}</td>' if numeric else f"<td>{esc(text)}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def definition_list(pairs):
    """``[(term, html)]`` as a two-column summary; the values are HTML already (escape them first)."""
    return '<dl class="summary">' + "".join(f"<dt>{esc(term)}</dt><dd>{value}</dd>" for term, value in pairs) + "</dl>"


def details(summary, content):
    """A foldable block (HTML5 <details>): closed at first, opened by a click, no script."""
    return f"<details><summary>{esc(summary)}</summary>{content}</details>"


def unavailable(what):
    return f'<p class="unavailable">{esc(what)}: not available in these outputs.</p>'


def page(title, sections, footer=""):
    """A whole HTML5 document: a navigation bar over ``sections``, a list of ``(heading, body html)``."""
    nav = "".join(f'<a href="#{anchor(heading)}">{esc(heading)}</a>' for heading, _ in sections)
    body = "".join(f'<section id="{anchor(heading)}"><h2>{esc(heading)}</h2>{content}</section>'
                   for heading, content in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f'<nav><span class="brand">{esc(title)}</span>{nav}</nav>\n'
        f"<main>\n<h1>{esc(title)}</h1>\n{body}\n<footer>{footer}</footer>\n</main>\n</body>\n</html>\n"
    )
