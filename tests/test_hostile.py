"""Hostile and faulty set-ups: nothing outside the output is touched, no foreign work dir is trusted.

Every case checks the exit code, that the message is one line naming the file or folder at
fault, and that the input dataset (and, where one exists, the output) is byte for byte what it
was. Cases that depend on who runs them are run as an unprivileged user when the tests run as
root, and skipped with the reason otherwise.
"""
import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from checks import checksums, one_line_error

from bidsrecon.bids.derivatives import publish_participant, staging_dir
from bidsrecon.folders import participant_locks, prepare_work_dir

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--encoder", "efficientnet-lite0-random", "--image-size", "32", "--iterations", "10", "--skip-bids-validation"]
IS_ROOT = os.geteuid() == 0


def run_cli(*args):
    """``bidsrecon.cli.main(args)`` in this process: the exit code and what it printed."""
    from bidsrecon.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([str(arg) for arg in args])
    result = subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())
    result.seconds = time.monotonic() - started
    return result


NOBODY = 65534
UNPRIVILEGED = pytest.mark.skipif(not IS_ROOT, reason="switching to an unprivileged user needs root")


def run_main_as(uid, *args):
    """``bidsrecon.cli.main(args)`` in a forked child that has dropped to ``uid``; (exit code, stderr).

    Forked rather than run through ``runuser``: the interpreter may live where that user cannot read
    (a pyenv under /root), while the already imported modules come along with the fork.
    """
    import codecs

    import nipype  # noqa: F401  (imported while the interpreter's files are readable)

    import bidsrecon.participant_level  # noqa: F401
    from bidsrecon.cli import main

    for encoding in ("ascii", "latin-1", "utf-8", "idna"):
        codecs.lookup(encoding)
    reader, writer = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 70
        try:
            os.dup2(writer, 2)
            sys.stderr = os.fdopen(2, "w", closefd=False)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            code = main([str(arg) for arg in args])
        except BaseException:  # shown in the test's failure, not raised into pytest's copy
            import traceback

            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(writer)
    with os.fdopen(reader) as stream:
        stderr = stream.read()
    _, status = os.waitpid(pid, 0)
    return subprocess.CompletedProcess(args, os.waitstatus_to_exitcode(status), "", stderr), time.monotonic() - started


@pytest.fixture
def shared_tmp():
    """A folder any user can enter (pytest's tmp_path is private to its user)."""
    folder = Path(tempfile.mkdtemp(prefix="bidsrecon-hostile-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


# --- the work dir ------------------------------------------------------------------------------

def test_default_work_dir_is_private(tmp_path, monkeypatch):
    from bidsrecon.cli import parse_args

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    tempfile.tempdir = None  # re-read TMPDIR
    try:
        config = parse_args([str(tmp_path / "bids"), str(tmp_path / "out"), "participant"])
    finally:
        tempfile.tempdir = None
    assert config.work_dir == tmp_path / f"bidsrecon-work-{os.geteuid()}"
    prepare_work_dir(config.work_dir)
    assert config.work_dir.stat().st_mode & 0o777 == 0o700


def test_work_dir_writable_by_others_is_refused(tiny_dataset, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)
    before = checksums(tiny_dataset)
    result = run_cli(tiny_dataset, tmp_path / "out", "participant", "-w", work, *FAST)
    one_line_error(result, 64, str(work), "writable by its group and others", "chmod go-w")
    assert not (tmp_path / "out").exists() and checksums(tiny_dataset) == before


@pytest.mark.skipif(not IS_ROOT, reason="giving a file to another user needs root")
def test_planted_result_in_the_work_dir_is_refused(tiny_dataset, tmp_path):
    """Another user's file inside our work dir (say a replaced Nipype result) stops the run unread."""
    work = tmp_path / "work"
    planted = work / "sub_01_wf" / "decode_wf" / "decode" / "result_decode.pklz"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"not a pickle anyone may load")
    os.chown(planted, 65534, 65534)
    result = run_cli(tiny_dataset, tmp_path / "out", "participant", "-w", work, *FAST)
    one_line_error(result, 64, str(planted), "belongs to user id 65534")
    assert not (tmp_path / "out").exists()


@UNPRIVILEGED
def test_work_dir_of_another_user_is_refused_for_an_unprivileged_user(tiny_dataset, shared_tmp):
    dataset = shared_tmp / "bids"
    shutil.copytree(tiny_dataset, dataset, symlinks=True)
    # Another user's work dir that anybody may write into: what a shared default in /tmp allowed.
    work = shared_tmp / "work"
    work.mkdir()
    work.chmod(0o777)
    mine = shared_tmp / "mine"
    mine.mkdir()
    os.chown(mine, NOBODY, NOBODY)
    result, _ = run_main_as(NOBODY, dataset, mine / "out", "participant", "-w", work, *FAST)
    one_line_error(result, 64, str(work), f"belongs to user id 0, not to you ({NOBODY})")


@UNPRIVILEGED
def test_read_only_output_for_an_unprivileged_user(tiny_dataset, shared_tmp):
    dataset = shared_tmp / "bids"
    shutil.copytree(tiny_dataset, dataset, symlinks=True)
    locked = shared_tmp / "locked"  # root's, 0755: nobody may write there
    locked.mkdir(mode=0o755)
    result, _ = run_main_as(NOBODY, dataset, locked / "out", "participant", "-w", shared_tmp / "nobody-work", *FAST)
    one_line_error(result, 73, str(locked), "read-only")


def test_output_path_that_is_a_file(tiny_dataset, tmp_path):
    output = tmp_path / "out"
    output.write_text("keep me")
    one_line_error(run_cli(tiny_dataset, output, "participant", "-w", tmp_path / "work", *FAST), 64,
                   str(output), "is a file")
    assert output.read_text() == "keep me"


def test_disk_full_is_one_line(tmp_path, monkeypatch, capsys):
    from bidsrecon import cli, participant_level

    def full(config):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "x.png"))

    monkeypatch.setattr(participant_level, "run_participant_level", full)
    assert cli.main([str(tmp_path / "bids"), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w")]) == 73
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "No space left on device" in error and "x.png" in error and "resumes" in error


def test_second_run_of_one_participant_on_one_work_dir(tiny_dataset, tmp_path):
    work = tmp_path / "work"
    prepare_work_dir(work)
    with participant_locks(work, ["01"]):
        result = run_cli(tiny_dataset, tmp_path / "out", "participant", "-w", work, *FAST)
    one_line_error(result, 75, "sub-01", str(work), f"process {os.getpid()}")
    assert not (tmp_path / "out").exists()


# --- folders that overlap ------------------------------------------------------------------------

def test_output_may_not_be_a_derivatives_input(tiny_fmriprep_dataset, tmp_path):
    fmriprep = tmp_path / "fmriprep"
    shutil.copytree(tiny_fmriprep_dataset / "derivatives" / "fmriprep", fmriprep, symlinks=True)
    before = checksums(fmriprep)
    result = run_cli(tiny_fmriprep_dataset, fmriprep, "participant", "--derivatives", f"fmriprep={fmriprep}", *FAST)
    one_line_error(result, 64, "the output_dir", "is --derivatives fmriprep")
    result = run_cli(tiny_fmriprep_dataset, tmp_path / "out", "participant", "--derivatives", f"fmriprep={fmriprep}",
                     "-w", fmriprep / "work", *FAST)
    one_line_error(result, 64, "the work directory", "inside --derivatives fmriprep")
    assert checksums(fmriprep) == before


def test_work_dir_may_not_be_or_hold_the_output(tiny_dataset, tmp_path):
    one_line_error(run_cli(tiny_dataset, tmp_path / "out", "participant", "-w", tmp_path / "out", *FAST), 64,
                   "the work directory")
    one_line_error(run_cli(tiny_dataset, tmp_path / "out", "participant", "-w", tmp_path, *FAST), 64,
                   "the output_dir", "is inside the work directory")
    one_line_error(run_cli(tiny_dataset, tmp_path / "out", "participant", "--stimuli-dir", tmp_path / "out" / "s",
                           *FAST), 64, "contains --stimuli-dir")


# --- names read from files are labels -----------------------------------------------------------

def test_decoder_sidecar_cannot_point_outside(tiny_dataset, tmp_path):
    """A ``--decoders-dir`` sidecar naming ``../../x`` as its mask is refused before anything is written."""
    decoders = tmp_path / "decoders"
    folder = decoders / "sub-01" / "decoder"
    folder.mkdir(parents=True)
    (decoders / "dataset_description.json").write_text("{}")
    (folder / "sub-01_decoder.safetensors").write_bytes(b"")
    victim = tmp_path / "victim.nii.gz"
    victim.write_bytes(b"precious")
    sidecar = {"Format": "bidsrecon-kernel-ridge-decoder", "FormatVersion": 1, "Encoder": "efficientnet-lite0-random",
               "EncoderWeightsSHA256": None, "ImageSize": 32, "Layers": ["stem"], "TrainingStimuli": [],
               "TrainingStimulusSHA256": [], "Voxels": 1, "ArraysSHA256": "0",
               "VoxelMask": {"File": "../../../victim.nii.gz"}}
    (folder / "sub-01_decoder.json").write_text(json.dumps(sidecar))
    args = [tiny_dataset, tmp_path / "out", "participant", "-w", tmp_path / "work", "--decoders-dir", decoders, *FAST]
    one_line_error(run_cli(*args), 64, "VoxelMask.File", "not a plain file name")
    del sidecar["Encoder"]
    (folder / "sub-01_decoder.json").write_text(json.dumps(sidecar))
    one_line_error(run_cli(*args), 64, "sub-01_decoder.json", 'lacks the field "Encoder"')
    assert victim.read_bytes() == b"precious" and not (tmp_path / "out").exists()


def test_spec_set_name_is_a_label(tiny_dataset, tmp_path):
    from bidsrecon.spec import SPECS

    spec = json.loads((ROOT / "bidsrecon" / "specs" / "ds001506.json").read_text())
    assert SPECS["ds001506"].sets
    spec["tests"][0]["name"] = "../../escaped"
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    result = run_cli(tiny_dataset, tmp_path / "out", "participant", "-w", tmp_path / "work", "--spec", spec_file, *FAST)
    one_line_error(result, 64, str(spec_file), "tests[0].name", "not a label")
    assert not any(tmp_path.rglob("*escaped*")) and not (tmp_path.parent / "escaped").exists()


def test_deeply_nested_json_is_one_line(tiny_dataset, tmp_path):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text("[" * 100000 + "]" * 100000)
    one_line_error(run_cli(tiny_dataset, tmp_path / "out", "participant", "-w", tmp_path / "work", "--spec",
                           spec_file, *FAST), 64, str(spec_file), "not valid JSON")
    spec_file.write_bytes(b"\xff\xfe{}")
    one_line_error(run_cli(tiny_dataset, tmp_path / "out", "participant", "-w", tmp_path / "work", "--spec",
                           spec_file, *FAST), 64, str(spec_file), "not UTF-8")


# --- outputs replaced as a whole ----------------------------------------------------------------

def test_publish_replaces_a_participant_as_a_whole(tmp_path):
    output = tmp_path / "out"
    old = output / "sub-01" / "recon" / "sub-01_acq-letters_desc-A_recon.png"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"old")
    staged = staging_dir(output) / "sub-01" / "recon" / "sub-01_acq-natural_desc-x_recon.png"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(b"new")
    publish_participant(output, "01")
    assert checksums(output) == {"sub-01": "dir", "sub-01/recon": "dir",
                                 "sub-01/recon/sub-01_acq-natural_desc-x_recon.png":
                                 hashlib.sha256(b"new").hexdigest()}
    assert not staging_dir(output).exists()


# --- signals ---------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_every_worker_and_says_how_to_resume(tiny_dataset, tmp_path, signum):
    command = [sys.executable, str(ROOT / "run.py"), str(tiny_dataset), str(tmp_path / "out"), "participant",
               "-w", str(tmp_path / "work"), *FAST, "--nprocs", "2", "--iterations", "2000"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(process.pid)
    deadline = time.monotonic() + 240
    workers = []
    while time.monotonic() < deadline and process.poll() is None:
        workers = parent.children(recursive=True)
        # MultiProc's pool is up once the workflow runs; wait for a step to be busy in it.
        if len(workers) >= 2 and (tmp_path / "work" / "sub_01_wf").exists():
            break
        time.sleep(0.5)
    assert process.poll() is None and len(workers) >= 2, "the run ended before its workers started"
    time.sleep(3)
    started = time.monotonic()
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, stderr
    assert time.monotonic() - started < 30
    lines = [line for line in stderr.splitlines() if line.startswith("bidsrecon:")]
    assert len(lines) == 1 and "the same command resumes" in lines[0] and "Traceback" not in stderr, stderr
    time.sleep(1)
    assert not [worker for worker in workers if worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.slow
def test_rerun_that_drops_a_set_leaves_none_of_its_files(tiny_dataset, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    common = [tiny_dataset, out, "participant", "-w", work, *FAST, "--nprocs", "1"]
    assert run_cli(*common).returncode == 0
    assert list(out.rglob("*acq-letters*"))
    spec = json.loads((ROOT / "bidsrecon" / "specs" / "ds001506.json").read_text())
    spec["tests"] = [entry for entry in spec["tests"] if entry["name"] != "letters"]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    result = run_cli(*common, "--spec", tmp_path / "spec.json")
    assert result.returncode == 0, result.stderr
    assert not list(out.rglob("*acq-letters*")) and list(out.rglob("*acq-shapes*"))
    assert not staging_dir(out).exists()


@pytest.mark.parametrize("content", [b'{"a": ' + b"[" * 100000 + b"]" * 100000 + b"}",
                                     '{"TaskName": "caf\u00e9"}'.encode("latin-1")], ids=["nested", "latin-1"])
def test_unreadable_bold_sidecar_is_named(tiny_dataset, tmp_path, content):
    dataset = tmp_path / "bids"
    shutil.copytree(tiny_dataset, dataset, symlinks=True)
    (dataset / "task-perception_bold.json").write_bytes(content)
    result = run_cli(dataset, tmp_path / "out", "participant", "-w", tmp_path / "work", *FAST)
    one_line_error(result, 64, "task-perception_bold.json", "pybids cannot index the dataset")
