"""The console's stage lines (bidsrecon.console)."""
import io
import pickle
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from bidsrecon.console import StageConsole


def test_one_line_per_stage_and_counted_runs():
    stream = io.StringIO()
    console = StageConsole("01", n_runs=40, stream=stream)
    console(SimpleNamespace(name="brain_mask"), "start")
    console(SimpleNamespace(name="brain_mask"), "end")
    for run in range(40):
        console(SimpleNamespace(name=f"_realign{run}"), "start")
        console(SimpleNamespace(name=f"_realign{run}"), "end")
    console(SimpleNamespace(name="realign"), "end")  # the map node itself, after its runs
    console(SimpleNamespace(name="decode"), "start")
    console(SimpleNamespace(name="decode"), "end")
    console(SimpleNamespace(name="inputnode"), "end")  # not a stage
    lines = [line.split(" ", 1)[1] for line in stream.getvalue().splitlines()]
    assert lines[0].startswith("sub-01 brain mask done")
    counts = [line for line in lines if "motion correction" in line]
    assert len(counts) == 10 and counts[0].startswith("sub-01 motion correction 4/40 runs, about")
    assert counts[-1] == "sub-01 motion correction 40/40 runs"
    assert lines[-2:] == ["sub-01 decoding ...", lines[-1]] and lines[-1].startswith("sub-01 decoding done")


def test_it_travels_with_nipypes_map_nodes():
    console = StageConsole("01", n_runs=3)
    assert pickle.loads(pickle.dumps(console)).n_runs == 3


@pytest.mark.slow
def test_verbose_shows_nipype_steps_without_other_libraries_debug_lines(tiny_dataset, tmp_path):
    """-v adds Nipype's step lines; -vv adds Nipype's debug lines but none of matplotlib's or Pillow's."""
    command = [sys.executable, "-m", "bidsrecon", str(tiny_dataset), str(tmp_path / "out"), "participant",
               "-w", str(tmp_path / "work"), "--encoder", "efficientnet-lite0-random", "--image-size", "32",
               "--iterations", "5", "--nprocs", "1", "--skip-bids-validation"]
    result = subprocess.run([*command, "-vv"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert any("nipype.workflow" in line and "[Node] Finished" in line for line in lines)
    assert any("nipype.workflow" in line and "DEBUG" in line for line in lines)
    noise = [line for line in lines if re.search(r"\b(matplotlib|PIL|urllib3|fsspec|h5py)[.\w]* DEBUG", line)]
    assert noise == [], noise[:5]
    # The default (no -v): the stage lines only, no Nipype step line.
    quiet = subprocess.run(command, capture_output=True, text=True)
    assert quiet.returncode == 0 and "[Node]" not in quiet.stderr + quiet.stdout
    assert "sub-01 decoding done" in quiet.stderr + quiet.stdout
