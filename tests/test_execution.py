"""Running for real: resuming, crash safety, parallel participants and a read-only environment.

Every test here starts the real command line in its own process (``python -m bidsrecon``), as a
user or a cluster scheduler does, and kills or races those processes.
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import validate
from PIL import Image

RUN = ["--encoder", "efficientnet-lite0-random", "--image-size", "32", "--iterations", "40", "--nprocs", "1",
       "--skip-bids-validation"]
# What a rerun legitimately rewrites: the record of that run (its times) and the report showing it.
RUN_RECORDS = ("log/", ".html")


def bidsrecon(bids_dir, output_dir, work_dir, *options, env=None):
    """The command a user types, as a child process."""
    return [sys.executable, "-m", "bidsrecon", str(bids_dir), str(output_dir), "participant", "-w", str(work_dir),
            *RUN, *options]


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def digests(output_dir):
    """Content hash of every output file, except the run's own record (and hidden temporaries a kill left)."""
    return {str(path.relative_to(output_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(Path(output_dir).rglob("*"))
            if path.is_file() and not any(part in str(path.relative_to(output_dir)) for part in RUN_RECORDS)
            and not (path.name.startswith(".") and path.name.endswith(".tmp"))}


def node_results(work_dir):
    """When each Nipype step last finished: its result file's modification time."""
    return {str(path.relative_to(work_dir)): path.stat().st_mtime_ns for path in Path(work_dir).rglob("result_*.pklz")}


@pytest.fixture(scope="module")
def reference_run(tiny_dataset, tmp_path_factory):
    """One uninterrupted run: the outputs every interrupted run must end up with."""
    folder = tmp_path_factory.mktemp("reference")
    run(bidsrecon(tiny_dataset, folder / "out", folder / "work"))
    return folder


@pytest.mark.slow
def test_rerun_recomputes_nothing_and_rewrites_the_same_outputs(tiny_dataset, reference_run):
    before = node_results(reference_run / "work")
    outputs = digests(reference_run / "out")
    # A removed output comes back from the cached results.
    next((reference_run / "out" / "sub-01" / "recon").glob("*_recon.png")).unlink()
    run(bidsrecon(tiny_dataset, reference_run / "out", reference_run / "work"))
    after = node_results(reference_run / "work")
    rerun = sorted(name for name in after if after[name] != before.get(name))
    # Only the sink runs again (it always does: outputs may have been removed since).
    assert rerun == ["sub_01_wf/outputs_wf/write_derivatives/result_write_derivatives.pklz"], rerun
    assert digests(reference_run / "out") == outputs


@pytest.mark.slow
@pytest.mark.parametrize("kill_when", ["decode_wf/run_samples", "recon_wf/reconstruct", "outputs_wf/write_derivatives"])
def test_a_killed_run_finishes_like_an_uninterrupted_one(tiny_dataset, reference_run, tmp_path, kill_when):
    """Killed (SIGKILL, no clean-up) once the step ``kill_when`` has started, then run again."""
    out, work = tmp_path / "out", tmp_path / "work"
    process = subprocess.Popen(bidsrecon(tiny_dataset, out, work), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    started = work / "sub_01_wf" / kill_when
    deadline = time.monotonic() + 300
    while not started.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, f"the run ended before {kill_when} started"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()

    # A write the kill cut short leaves at most a hidden temporary file, never a half output.
    assert all(path.name.startswith(".") for path in out.rglob("*.tmp"))
    run(bidsrecon(tiny_dataset, out, work))
    assert digests(out) == digests(reference_run / "out")
    code, report = validate(out)
    assert code == 0, report


@pytest.fixture(scope="module")
def two_subjects(tmp_path_factory):
    from bidsrecon.simulate import simulate_dataset

    return simulate_dataset(tmp_path_factory.mktemp("two") / "bids", n_subjects=2, preset="tiny", seed=3)


@pytest.mark.slow
def test_parallel_participants_share_one_output_and_work_dir(two_subjects, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    processes = [subprocess.Popen(bidsrecon(two_subjects, out, work, "--participant-label", label),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for label in ("01", "02")]
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]

    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert not list(out.rglob("*.tmp")), "a temporary file was left behind"
    for subject in ("sub-01", "sub-02"):
        items = pd.read_csv(out / subject / f"{subject}_desc-items_metrics.tsv", sep="\t")
        recons = sorted((out / subject / "recon").glob("*_recon.png"))
        assert len(recons) == len(items) > 0
        for path in recons:
            Image.open(path).verify()  # whole PNGs, not half-written ones
        assert (out / f"{subject}.html").is_file()
    code, report = validate(out)
    assert code == 0, report


def _can_make_read_only_mounts():
    if not shutil.which("unshare") or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount --make-rprivate / && mount -o remount,ro,bind /"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_make_read_only_mounts(),
                    reason="needs root and mount namespaces (unshare -m) to make the file system read-only")
def test_runs_with_a_read_only_file_system_and_home(tiny_dataset, tmp_path):
    """As ``docker run --read-only --tmpfs /tmp``: everything read-only except the output, work and temporary dirs.

    The whole root file system (the package, its virtual environment, ``$HOME``) is remounted
    read-only in a private mount namespace; only this test's folder stays writable. Root ignores
    file permissions, so a mount, not chmod, is what makes the test meaningful in CI.
    """
    writable = tmp_path / "writable"
    (writable / "tmp").mkdir(parents=True)
    command = " ".join(f"'{part}'" for part in bidsrecon(tiny_dataset, writable / "out", writable / "work",
                                                         "--resource-monitor"))
    script = (f"mount --make-rprivate / && mount --bind '{writable}' '{writable}' && "
              f"mount -o remount,ro,bind / && exec {command}")
    environment = {**os.environ, "HOME": str(Path.home()), "TMPDIR": str(writable / "tmp")}
    for variable in ("MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "NIPYPE_CONFIG_DIR"):
        environment.pop(variable, None)
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=600,
                            env=environment, cwd=Path(__file__).parent)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (writable / "out" / "sub-01.html").is_file()
    assert (writable / "out" / "sub-01" / "log" / "sub-01_desc-resources_log.jsonl").stat().st_size > 0
