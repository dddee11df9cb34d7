"""Recording a run's warnings (bidsrecon.run_warnings): the console still shows them, a step's go into
its folder, and only the participant's own new crash files are copied. The whole run: test_reports.py."""
import contextlib
import json
import logging
import os
import time
import warnings

import pandas as pd

from bidsrecon.run_warnings import STEP_FILE, copy_crash_files, recording_warnings, write_warnings_log


def test_warnings_are_recorded_and_still_shown(tmp_path, caplog):
    with warnings.catch_warnings(record=True) as shown, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        with recording_warnings("inputs") as recorder:
            logging.getLogger("bidsrecon").warning("dropped %d trials", 2)
            logging.getLogger("nipype.workflow").warning("[Node] Error on a step")  # its crash file says it
            warnings.warn("4 voxels\nset to 0", RuntimeWarning)
        warnings.warn("after the block", UserWarning)
    assert recorder.rows == [{"step": "inputs", "source": "bidsrecon", "message": "dropped 2 trials"},
                             {"step": "inputs", "source": "RuntimeWarning", "message": "4 voxels set to 0"}]
    assert [str(warning.message) for warning in shown] == ["4 voxels\nset to 0", "after the block"]
    assert "dropped 2 trials" in caplog.text


def test_a_steps_warnings_go_into_its_folder(tmp_path):
    step = tmp_path / "sub_01_wf" / "realign" / "mapflow" / "_realign3"
    step.mkdir(parents=True)
    with recording_warnings("workflow", tmp_path / "sub_01_wf") as recorder, contextlib.chdir(step):
        logging.getLogger("nipype.interface").warning("run-01: 1 of 9 voxels are NaN")
    assert recorder.rows == []
    assert json.loads((step / STEP_FILE).read_text()) == {"step": "workflow", "source": "nipype.interface",
                                                         "message": "run-01: 1 of 9 voxels are NaN"}


def test_an_empty_log_has_its_header(tmp_path):
    path = write_warnings_log(tmp_path, "01", [])
    assert path.name == "sub-01_desc-warnings_log.tsv" and path.read_text() == "step\tsource\tmessage\n"
    assert set(json.loads(path.with_suffix(".json").read_text())) == {"step", "source", "message"}
    rows = [{"step": "inputs", "source": "bidsrecon", "message": "x"}] * 2
    assert len(pd.read_csv(write_warnings_log(tmp_path, "01", rows), sep="\t")) == 1  # once, however often logged


def test_only_the_participants_new_text_crash_files_are_copied(tmp_path):
    crash, log = tmp_path / "crash", tmp_path / "out" / "sub-01" / "log"
    crash.mkdir()
    files = {"crash-1-decode.txt": "Node: sub_01_wf.decode_wf.decode\n", "crash-2-decode.txt": "Node: sub_010_wf.x\n",
             "crash-0-old.txt": "Node: sub_01_wf.realign\n", "crash-3-decode.pklz": "Node: sub_01_wf.decode\n"}
    for name, text in files.items():
        (crash / name).write_text(text)
    an_hour_ago = time.time() - 3600
    os.utime(crash / "crash-0-old.txt", (an_hour_ago, an_hour_ago))
    copies = copy_crash_files(crash, "01", time.time() - 60, log)
    assert copies == [log / "crash-1-decode.txt"] and sorted(path.name for path in log.iterdir()) == ["crash-1-decode.txt"]
    assert copies[0].read_text() == files["crash-1-decode.txt"]
