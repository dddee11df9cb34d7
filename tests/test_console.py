"""The console's stage lines (bidsrecon.console)."""
import io
import pickle
from types import SimpleNamespace

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
