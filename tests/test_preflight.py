"""The pre-flight stage: bad stimuli, bold files, events and output names stop the run in seconds,
all listed at once, before any output is written (bidsrecon.preflight, issue 14).

Each case copies the tiny dataset, breaks one thing (or several), runs the app and checks the exit
code, that the broken file is named, that the input is unchanged and that no output folder appears.
With PREFLIGHT_TIMINGS=<file> set, each case appends its row (case, exit code, seconds from start
to failure, the message's first line) to that file: the table the issue asks for.
"""
import gzip
import os
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from checks import checksums, without_console
from PIL import Image
from test_end_to_end import FAST
from test_images import png_claiming_size

from bidsrecon.cli import main
from bidsrecon.images import read_rgb
from bidsrecon.preflight import check_bold, check_nifti, check_output_names, check_stimulus, check_trials

NATURAL = "sub-01/ses-perceptionNaturalImageTest01/func/sub-01_ses-perceptionNaturalImageTest01_task-perception"
RUN1_BOLD, RUN2_BOLD = f"{NATURAL}_run-01_bold.nii.gz", f"{NATURAL}_run-02_bold.nii.gz"
RUN1_EVENTS = f"{NATURAL}_run-01_events.tsv"
# Stimuli of the natural test set (RUN1_EVENTS shows them at 48, 56 and 64 s).
STIMULUS_48, STIMULUS_56, STIMULUS_64 = ("stimuli/n02416519_12793.png", "stimuli/n02128385_20264.png",
                                         "stimuli/n01443537_22563.png")


@pytest.fixture
def dataset(tiny_dataset, tmp_path):
    """A private copy of the session's tiny dataset, free to break."""
    copy = tmp_path / "bids"
    shutil.copytree(tiny_dataset, copy, symlinks=True)
    return copy


def run_app(dataset, tmp_path, capsys, case, *options):
    """Run the participant level on ``dataset``; check that nothing was written; return (code, stderr)."""
    before = checksums(dataset)
    out = tmp_path / "out"
    start = time.perf_counter()
    code = main([str(dataset), str(out), "participant", "-w", str(tmp_path / "work"), *FAST, *options])
    seconds = time.perf_counter() - start
    stderr = without_console(capsys.readouterr().err)
    assert checksums(dataset) == before, "the input dataset changed"
    assert not out.exists(), "the output folder was created"
    if os.environ.get("PREFLIGHT_TIMINGS"):
        first = stderr.strip().splitlines()[0] if stderr.strip() else ""
        with open(os.environ["PREFLIGHT_TIMINGS"], "a") as table:
            table.write(f"{case}\t{code}\t{seconds:.2f}\t{first}\n")
    return code, stderr


def edit_events(path, edit):
    events = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    edit(events)
    events.to_csv(path, sep="\t", index=False)


def set_header_tr(path, tr):
    image = nib.load(path)
    header = image.header.copy()
    header.set_zooms(header.get_zooms()[:3] + (tr,))
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine, header), path)


def truncate(path, fraction):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * fraction)])


TRAINING_RUN1_BOLD = ("sub-01/ses-perceptionNaturalImageTraining01/func/"
                      "sub-01_ses-perceptionNaturalImageTraining01_task-perception_run-01_bold.nii.gz")


def zero_reference(root):
    """The first training run, whose middle volume every run is realigned to, all zero."""
    image = nib.load(root / TRAINING_RUN1_BOLD)
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.int16), image.affine, image.header), root / TRAINING_RUN1_BOLD)


def not_an_image(root):
    (root / STIMULUS_48).write_text("not a picture\n")
    return STIMULUS_48


def truncated_bold(root):
    truncate(root / RUN1_BOLD, 0.6)
    return RUN1_BOLD


def tr_mismatch(root):
    set_header_tr(root / RUN2_BOLD, 2.5)
    return RUN2_BOLD


def move_block_56(root, onset):
    """The natural test block at 56 s starts at ``onset`` instead."""
    def move(events):
        events.loc[events["onset"] == "56.0", "onset"] = onset
    edit_events(root / RUN1_EVENTS, move)
    return RUN1_EVENTS


def overlapping(root):
    return move_block_56(root, "52.0")  # 52-60 s overlaps 48-56 s


def latin1_events(root):
    text = (root / RUN1_EVENTS).read_text().replace("1.174", "caf\u00e9")
    (root / RUN1_EVENTS).write_bytes(text.encode("latin-1"))


def header_only_events(root):
    lines = (root / RUN1_EVENTS).read_text().splitlines()
    (root / RUN1_EVENTS).write_text(lines[0] + "\n")


def colliding_names(root):
    """The block at 56 s shows 'n02416519-12793', a copy of 'n02416519_12793' (at 48 s): one output name."""
    def rename(events):
        events.loc[events["onset"] == "56.0", "stimulus_name"] = "n02416519-12793"
    edit_events(root / RUN1_EVENTS, rename)
    shutil.copy(root / STIMULUS_48, root / "stimuli/n02416519-12793.png")


CASES = [
    # case, break the dataset, exit code, what stderr must name, what it must say
    ("stimulus not an image", not_an_image, 66, STIMULUS_48, "Cannot read image"),
    ("truncated stimulus", lambda root: truncate(root / STIMULUS_64, 0.5), 66, STIMULUS_64, "truncated"),
    ("decompression bomb", lambda root: png_claiming_size(root / STIMULUS_56, 100000, 100000), 64, STIMULUS_56,
     "too large to be a stimulus"),
    ("stimulus over 8192x8192", lambda root: png_claiming_size(root / STIMULUS_56, 9000, 9000), 64, STIMULUS_56,
     "9000 x 9000 pixels is too large"),
    ("truncated bold", truncated_bold, 66, RUN1_BOLD, "the file is truncated or corrupt"),
    ("header TR != JSON RepetitionTime", tr_mismatch, 64, RUN2_BOLD,
     "header's TR is 2.5 s (pixdim[4] in sec) but the JSON sidecar's RepetitionTime is 2 s"),
    ("overlapping onsets", overlapping, 64, RUN1_EVENTS, "1 pair(s) of 'natural' trials overlap: 48-56 s and 52-60 s"),
    ("duplicate onsets", lambda root: move_block_56(root, "48.0"), 64, RUN1_EVENTS, "(the same onset)"),
    ("non-UTF-8 events", latin1_events, 64, RUN1_EVENTS, "not UTF-8 text (byte 0xe9 on line 4)"),
    ("header-only events", header_only_events, 66, RUN1_EVENTS, "no events (a header and no row)"),
    ("all-zero motion reference run", zero_reference, 64, TRAINING_RUN1_BOLD, "is all zero"),
    ("two stimuli, one output name", colliding_names, 64, "n02416519-12793",
     "would both be written as sub-01_acq-natural_desc-n0241651912793_recon.png"),
]


@pytest.mark.parametrize("case, breaks, code, names, says", CASES, ids=[c[0] for c in CASES])
def test_a_bad_input_stops_the_run_before_anything_is_written(dataset, tmp_path, capsys, case, breaks, code,
                                                                names, says):
    breaks(dataset)
    exit_code, stderr = run_app(dataset, tmp_path, capsys, case)
    assert exit_code == code, stderr
    assert names in stderr and says in stderr, stderr
    assert "Traceback" not in stderr


def test_a_truncated_roi_mask_stops_the_run(dataset, tmp_path, capsys):
    mask = dataset / "sourcedata/sub-01/anat/sub-01_mask_LH_V1v.nii.gz"
    truncate(mask, 0.6)  # masks compress to ~100 bytes: the header goes too, nibabel cannot read it
    exit_code, stderr = run_app(dataset, tmp_path, capsys, "truncated ROI mask", "--roi", "V1")
    assert exit_code == 66, stderr
    assert f"{mask}: cannot read it as NIfTI" in stderr


def test_every_problem_is_listed_at_once(dataset, tmp_path, capsys):
    broken = [not_an_image(dataset), truncated_bold(dataset), tr_mismatch(dataset), overlapping(dataset)]
    exit_code, stderr = run_app(dataset, tmp_path, capsys, "four problems at once")
    assert exit_code == 66, stderr  # one of them is a file that cannot be read
    lines = stderr.strip().splitlines()
    assert "4 problems in the inputs, found before any processing" in lines[0]
    assert len(lines) == 5
    for path in broken:
        assert sum(path in line for line in lines[1:]) == 1, (path, stderr)


def test_a_16_bit_grey_stimulus_passes(tmp_path):
    """What the loader converts is a valid stimulus: a 16-bit PNG passes, read as grey, not white."""
    Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(tmp_path / "grey16.png")
    assert check_stimulus(tmp_path / "grey16.png") == []
    assert read_rgb(tmp_path / "grey16.png").getpixel((0, 0)) == (156, 156, 156)  # 40000 * 255 / 65535


# The checks on their own, for what the app-level cases do not reach.

def _bold(path, n_volumes=3, tr=2.0, units="sec"):
    data = np.arange(8 * 8 * 8 * n_volumes, dtype=np.int16).reshape(8, 8, 8, n_volumes)
    image = nib.Nifti1Image(data, np.eye(4))
    image.header.set_zooms((2.0, 2.0, 2.0, tr))
    image.header.set_xyzt_units("mm", units)
    nib.save(image, path)
    return path


def test_a_complete_multi_member_gzip_passes(tmp_path):
    # Its trailer records only the last member's length: the last volume is read instead.
    whole = gzip.decompress(_bold(tmp_path / "one.nii.gz").read_bytes())
    path = tmp_path / "two_members.nii.gz"
    path.write_bytes(gzip.compress(whole[:360]) + gzip.compress(whole[360:]))  # header in the first
    assert check_bold(str(path), 2.0) == []
    truncate(path, 0.9)
    assert "truncated or corrupt" in str(check_bold(str(path), 2.0)[0])


def test_a_short_uncompressed_nifti_is_found(tmp_path):
    path = _bold(tmp_path / "run.nii")
    assert check_bold(str(path), 2.0) == []
    truncate(path, 0.95)
    [problem] = check_bold(str(path), 2.0)
    assert "truncated or corrupt" in str(problem) and problem.exit_code == 66


def test_a_truncated_3d_mask_is_found(tmp_path):
    path = tmp_path / "mask.nii.gz"
    noise = np.random.default_rng(0).integers(0, 2, (16, 16, 16), dtype=np.uint8)  # incompressible enough
    nib.save(nib.Nifti1Image(noise, np.eye(4)), path)
    assert check_nifti(str(path)) == []
    truncate(path, 0.8)
    [problem] = check_nifti(str(path))
    assert "truncated or corrupt" in str(problem) and problem.exit_code == 66


@pytest.mark.parametrize("tr, units, json_tr, problem", [
    (2000.0, "msec", 2.0, None),
    (2.0004, "sec", 2.0, None),  # float32 rounding is not a disagreement
    (1.0, "unknown", 2.0, None),  # no TR in the header: nothing to compare
    (0.0, "sec", 2.0, None),
    (1.5, "unknown", 2.0, "1.5 s (pixdim[4] in unknown units, read as seconds)"),
    (1500.0, "msec", 2.0, "1.5 s (pixdim[4] in msec)"),
])
def test_header_tr_units(tmp_path, tr, units, json_tr, problem):
    problems = check_bold(str(_bold(tmp_path / "run.nii.gz", tr=tr, units=units)), json_tr)
    if problem is None:
        assert problems == []
    else:
        assert problem in str(problems[0]) and problems[0].exit_code == 64


def test_touching_trials_do_not_overlap():
    trials = pd.DataFrame({"onset": [8.0, 0.0, 4.0], "duration": [4.0, 4.0, 4.0]})
    assert check_trials("events.tsv", "natural", trials) == []
    trials.loc[0, "onset"] = 7.0
    assert "4-8 s and 7-11 s" in str(check_trials("events.tsv", "natural", trials)[0])


def test_output_names_collide_across_sets_not_in_training():
    assert check_output_names("01", [("training", ["a_1", "a1"]), ("natural", ["a_1"]), ("shapes", ["a1"])]) == []
    [problem] = check_output_names("01", [("nat-1", ["red_+"]), ("nat1", ["redplus"])])
    assert "stimulus 'red_+' of set 'nat-1' and stimulus 'redplus' of set 'nat1'" in str(problem)
