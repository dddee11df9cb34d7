"""The HTML reports: opened in headless Chromium (no broken image, no console error, a screenshot),
self-contained valid HTML5, and still whole after the output folder is moved.

Screenshots are saved under pytest's tmp folder; their paths are printed (``pytest -s`` shows them).
"""
import base64
import datetime
import html
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from io import BytesIO

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from chromium import CHROMIUM, Chromium
from PIL import Image
from test_group import FAST, participant_outputs

from bidsrecon.cli import main
from bidsrecon.reports import write_participant_report
from bidsrecon.reports.participant_report import MOTION_TRACES

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
# Elements that may not sit inside a <p> (the parser would close the <p> before them).
BLOCK = {"address", "article", "aside", "div", "dl", "fieldset", "figure", "footer", "form", "h1", "h2", "h3", "h4",
         "h5", "h6", "header", "hr", "main", "nav", "ol", "p", "pre", "section", "table", "ul"}


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is not installed (Debian package 'chromium'); CI installs it")
    with Chromium() as chromium:
        yield chromium


@pytest.fixture(scope="session")
def outputs(tmp_path_factory):
    return participant_outputs(tmp_path_factory)


@pytest.fixture
def out(outputs, tmp_path):
    """A private copy of the participant outputs (the reports are written into it)."""
    return shutil.copytree(outputs[1], tmp_path / "bidsrecon")


def check_in_browser(browser, page, screenshot=None, measure=None):
    result = browser.check_page(page, screenshot=screenshot, measure=measure)
    assert result.images > 0
    assert result.broken_images == [], f"{page}: broken images {result.broken_images}"
    assert result.errors == [], f"{page}: console errors {result.errors}"
    if screenshot is not None:
        assert Image.open(screenshot).size[0] > 0
        print(f"screenshot of {page.name}: {screenshot}")
    return result


@pytest.mark.slow
def test_participant_report_in_the_browser(browser, out, tmp_path):
    path = write_participant_report(out, "sub-01")
    assert path == out / "sub-01.html"
    result = check_in_browser(browser, path, screenshot=tmp_path / "sub-01.png")
    assert result.title == "bidsrecon: sub-01"

    text = path.read_text()
    items = (out / "sub-01" / "sub-01_desc-items_metrics.tsv").read_text().splitlines()[1:]
    motion_runs = list((out / "sub-01" / "qc").glob("*_desc-motion_timeseries.tsv"))
    # Stimulus and reconstruction per item, the decoding plot, the FD overview, one motion plot per run
    # (folded in <details>, loaded all the same), the tSNR mosaic, the reference run's carpet plot.
    assert result.images == 2 * len(items) + 1 + 1 + min(len(motion_runs), MOTION_TRACES) + 1 + 1
    for section in ("summary", "test-set-natural", "test-set-shapes", "test-set-letters", "test-set-imagery",
                    "decoding-accuracy", "preprocessing-quality", "about"):
        assert f'id="{section}"' in text and f'href="#{section}"' in text
    for line in items:
        assert line.split("\t")[1].replace("&", "&amp;") in text  # every stimulus is named
    assert "block1" in text and "alpha" in text  # the decoder's penalty per layer
    assert "not available in these outputs" not in text  # sub-01 has every optional file
    assert 'id="warnings-and-errors"' in text and "No warnings: the run logged none, and no step failed." in text
    provenance = json.loads((out / "sub-01" / "log" / "sub-01_desc-provenance_log.json").read_text())
    assert html.escape(shlex.join(provenance["Command"])) in text  # the exact command
    for package, version in provenance["Versions"].items():  # every version
        assert f"<td>{html.escape(package)}</td><td>{html.escape(str(version))}</td>" in text
    assert str(datetime.timedelta(seconds=round(provenance["WallSeconds"]))) in text  # the time taken


@pytest.mark.slow
def test_participant_report_without_optional_files(browser, out):
    """Outputs of older versions have no qc/ or log/ folder: the report says so and still works."""
    shutil.rmtree(out / "sub-02" / "qc", ignore_errors=True)
    shutil.rmtree(out / "sub-02" / "log", ignore_errors=True)
    path = write_participant_report(out, "02")
    check_in_browser(browser, path)
    text = path.read_text()
    for what in ("Motion traces (qc/ folder)", "tSNR map (qc/ folder)", "Carpet plot (qc/ folder)",
                 "Command and software versions", "Run time", "Warnings of the run (log/ warnings file)"):
        assert f"{what}" in text
    assert text.count("not available in these outputs") == 6


@pytest.mark.slow
def test_group_report_in_the_browser(browser, outputs, out, tmp_path):
    for label in ("01", "02"):
        write_participant_report(out, label)
    assert main([str(outputs[0]), str(out), "group"]) == 0
    report = out / "group" / "group.html"
    result = check_in_browser(browser, report, screenshot=tmp_path / "group.png")
    text = report.read_text()
    n_items = sum(len((out / f"sub-{label}" / f"sub-{label}_desc-items_metrics.tsv").read_text().splitlines()) - 1
                  for label in ("01", "02"))
    # Every reconstruction, the presented images once per set, and the identification bars.
    assert n_items < result.images <= 2 * n_items + 1
    # The participants' reports are linked relatively, and the links lead somewhere.
    for link in re.findall(r'href="([^"#]+)"', text):
        assert (report.parent / link).resolve().is_file(), link
    assert 'href="../sub-01.html"' in text


@pytest.mark.slow
def test_reports_still_work_after_moving_the_outputs(browser, outputs, out, tmp_path):
    write_participant_report(out, "01")
    assert main([str(outputs[0]), str(out), "group"]) == 0
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.move(out, moved)
    for page in (moved / "sub-01.html", moved / "group" / "group.html"):
        check_in_browser(browser, page)
        assert str(out) not in page.read_text()  # no absolute path to where the outputs were


@pytest.mark.slow
def test_the_reports_show_the_warnings_and_crash_files_of_log(browser, outputs, out):
    log = out / "sub-01" / "log"
    (log / "sub-01_desc-warnings_log.tsv").write_text(
        "step\tsource\tmessage\ninputs\tbidsrecon\trun-01_bold.nii.gz: dropped 1 of 2 'training' trials\n")
    crash = log / "crash-20250101-120000-user-decode-0a1b.txt"
    crash.write_text("Node: sub_01_wf.decode_wf.decode\nWorking directory: /work/sub_01_wf/decode_wf/decode\n\n"
                     "Traceback (most recent call last):\n  File \"x.py\", line 1\nMemoryError: <too> & big\n")
    path = write_participant_report(out, "01")
    check_in_browser(browser, path)
    text = path.read_text()
    assert "1 warning(s) the run logged" in text and "<td>run-01_bold.nii.gz: dropped 1 of 2 &#x27;training&#x27; trials" \
        "</td>" in text
    assert f"<details><summary>{crash.name}: MemoryError: &lt;too&gt; &amp; big</summary><pre>Node: sub_01_wf." in text
    assert main([str(outputs[0]), str(out), "group"]) == 0
    group = (out / "group" / "group.html").read_text()
    for label, warnings, crashes in (("01", 1, 1), ("02", 0, 0)):
        assert f'<tr><td>sub-{label}</td><td class="number">{warnings}</td><td class="number">{crashes}</td></tr>' \
            in group


@pytest.mark.slow
def test_the_participant_level_records_its_warnings_and_crash_files(outputs, tmp_path):
    """A raw run with a voxel without data: its warning reaches log/ and the report, and stays there
    when the step is cached; a step that fails leaves its crash file (text) in log/."""
    bids = shutil.copytree(outputs[0], tmp_path / "bids")
    bold = sorted(bids.glob("sub-01/ses-*/func/*_bold.nii.gz"))[0]
    image = nib.load(bold)
    data = image.get_fdata(dtype=np.float32)
    data[tuple(np.argwhere(data.mean(axis=3) > data.mean())[0])] = np.nan
    image.header.set_data_dtype(np.float32)
    nib.save(nib.Nifti1Image(data, image.affine, image.header), bold)
    out = tmp_path / "bidsrecon"
    command = [str(bids), str(out), "participant", "-w", str(tmp_path / "work"), "--participant-label", "01", *FAST]
    log = out / "sub-01" / "log"
    for _ in ("run", "rerun, every step cached"):
        assert main(command) == 0
        table = pd.read_csv(log / "sub-01_desc-warnings_log.tsv", sep="\t")
        realign = table[table["step"] == "motion correction"]
        assert len(realign) == 1 and f"{bold.name}: 1 of " in realign["message"].iloc[0], table
    text = (out / "sub-01.html").read_text()
    assert f"{len(table)} warning(s) the run logged" in text and html.escape(realign["message"].iloc[0]) in text

    assert main([*command, "--mem", "200M", "--seed", "2"]) == 1  # decoding cannot start under 0.2 GB
    crashes = list(log.glob("crash-*.txt"))
    assert len(crashes) == 1 and crashes[0].read_text().startswith("Node: sub_01_wf.decode_wf.decode\n")
    assert not list(out.rglob("*.pklz"))
    text = write_participant_report(out, "01").read_text()
    assert f"<details><summary>{crashes[0].name}: bidsrecon.errors.BidsReconError: A memory limit" in text


# What a 1280-px window shows: the page's width, the stimulus names cut off or shortened (participant
# report: under the images; group report: over the columns), and the identification figure's size.
PAGE_WIDTH = "document.documentElement.scrollWidth"
CLIPPED_NAMES = """
Array.from(document.querySelectorAll('.item .name, .compare thead th[title]'))
  .filter(name => name.scrollWidth > name.clientWidth || name.textContent !== name.title)
  .map(name => name.title)
"""
NAMES = "document.querySelectorAll('.item .name, .compare thead th[title]').length"
BARS = """
(() => { const image = document.querySelector('img[alt="pairwise identification per set"]');
         return [image.width, image.height, image.naturalWidth]; })()
"""


@pytest.mark.slow
def test_reports_are_readable_in_a_1280_px_window(browser, outputs, out):
    """No page scrolls sideways (wide tables scroll in their own box), every stimulus name is shown
    whole, and the group's identification figure is shown at its own size (its 10-pt labels stay 10 pt)."""
    for label in ("01", "02"):
        write_participant_report(out, label)
    assert main([str(outputs[0]), str(out), "group"]) == 0
    measure = {"width": PAGE_WIDTH, "clipped": CLIPPED_NAMES, "names": NAMES}
    participant = check_in_browser(browser, out / "sub-01.html", measure=measure).measured
    group = check_in_browser(browser, out / "group" / "group.html", measure={**measure, "bars": BARS}).measured
    for measured in (participant, group):
        assert measured["width"] <= 1280 and measured["names"] > 0 and measured["clipped"] == [], measured
    width, height, natural_width = group["bars"]
    assert width == natural_width <= 1280 and 250 <= height and width / height <= 4, group["bars"]


class Html5Checker(HTMLParser):
    """The structure rules the reports must follow: a doctype, balanced tags, unique ids, no <p> around
    blocks, alt text on every image, and nothing loaded from outside the file."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.doctype, self.stack, self.ids, self.problems, self.images = None, [], set(), [], []

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag in BLOCK and "p" in self.stack:
            self.problems.append(f"<{tag}> inside <p>")
        if "id" in attributes:
            if attributes["id"] in self.ids:
                self.problems.append(f"duplicate id {attributes['id']}")
            self.ids.add(attributes["id"])
        if tag in ("script", "iframe", "object", "embed", "link"):
            self.problems.append(f"<{tag}>: reports have no script and no external resource")
        for name in ("src", "href"):
            value = attributes.get(name)
            if value is None:
                continue
            # Only data: images, #anchors and relative links (to the participants' reports).
            if re.match(r"(?i)[a-z]+:|//|/", value) and not value.startswith("data:image/png;base64,") \
                    or (name == "src" and not value.startswith("data:")):
                self.problems.append(f"{tag} {name}={value[:60]!r} is not embedded")
        if tag == "img":
            if not attributes.get("alt"):
                self.problems.append("img without alt")
            self.images.append(attributes.get("src", ""))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()


@pytest.mark.slow
def test_reports_are_self_contained_html5(outputs, out):
    write_participant_report(out, "01")
    assert main([str(outputs[0]), str(out), "group"]) == 0
    for page in (out / "sub-01.html", out / "group" / "group.html"):
        text = page.read_text(encoding="utf-8")
        assert text.startswith("<!DOCTYPE html>\n<html lang=\"en\">")
        assert '<meta charset="utf-8">' in text and re.search(r"<title>[^<]+</title>", text)
        checker = Html5Checker()
        checker.feed(text)
        checker.close()
        assert checker.doctype == "DOCTYPE html"
        assert checker.problems == [] and checker.stack == [], (page, checker.problems[:5], checker.stack)
        for src in checker.images:
            header, data = src.split(",", 1)
            assert header == "data:image/png;base64"
            assert Image.open(BytesIO(base64.b64decode(data))).format == "PNG"


@pytest.mark.slow
def test_no_matplotlib_cache_outside_tmp(outputs, out, tmp_path):
    """In a read-only container only /tmp is writable: matplotlib's font cache must not go to HOME."""
    home = tmp_path / "home"
    home.mkdir()
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    environment["HOME"] = str(home)
    code = f"from bidsrecon.reports import write_participant_report; write_participant_report({str(out)!r}, '01')"
    subprocess.run([sys.executable, "-c", code], env=environment, check=True, timeout=120)
    assert (out / "sub-01.html").is_file()
    assert list(home.iterdir()) == []


@pytest.mark.slow
def test_reports_only_writes_the_report_again(out, capsys):
    from bidsrecon.cli import main

    (out / "sub-01.html").unlink(missing_ok=True)
    assert main([str(out.parent / "no-input"), str(out), "participant", "--reports-only"]) == 0
    assert (out / "sub-01.html").is_file() and "sub-01: report written" in capsys.readouterr().out
