"""bids-validator-deno's errors: fatal (exit 16, naming file and field) in what bidsrecon reads, warnings elsewhere."""
import json
import logging
import os
import stat

import nibabel as nib
import numpy as np
import pytest

from bidsrecon.bids import validate
from bidsrecon.bids.validate import ReadSelection, ValidatorIssue, check_dataset, is_fatal, run_validator
from bidsrecon.errors import BidsReconError


def write_run(root, subject, sidecar, session=None, task="x"):
    """One tiny functional run: bold, its JSON sidecar and events."""
    folder = root / f"sub-{subject}" / (f"ses-{session}" if session else "") / "func"
    folder.mkdir(parents=True, exist_ok=True)
    stem = "_".join([f"sub-{subject}", *([f"ses-{session}"] if session else []), f"task-{task}", "run-01"])
    image = nib.Nifti1Image(np.ones((2, 2, 2, 10), np.int16), np.eye(4))
    image.header.set_zooms((1, 1, 1, 2.0))
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, folder / f"{stem}_bold.nii.gz")
    (folder / f"{stem}_bold.json").write_text(json.dumps(sidecar))
    (folder / f"{stem}_events.tsv").write_text("onset\tduration\n0\t2\n")


GOOD = {"TaskName": "x", "RepetitionTime": 2.0}
NO_TR = {"TaskName": "x"}  # RepetitionTime is required: an error in a file bidsrecon reads


@pytest.fixture
def published_like(tmp_path):
    """Errors only where bidsrecon does not read: dataset_description's Funding as ds001506 has it,
    and a participants.tsv without participant_id."""
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.0.2", "Funding": ""}))
    (root / "participants.tsv").write_text("age\n30\n")
    write_run(root, "01", GOOD)
    return root


def test_errors_outside_what_is_read_are_warnings_naming_file_and_field(published_like, caplog):
    with caplog.at_level(logging.WARNING, logger="bidsrecon"):
        ignored = check_dataset(published_like)
    assert {(issue.location, issue.field) for issue in ignored} >= {
        ("/dataset_description.json", "Funding"), ("/participants.tsv", "participant_id")}
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    funding = [text for text in warnings if "dataset_description.json, field Funding" in text]
    assert len(funding) == 1 and "JSON_SCHEMA_VALIDATION_ERROR" in funding[0] and "must be array" in funding[0]
    assert any("participants.tsv" in text for text in warnings)


def test_an_error_in_a_run_stops_naming_file_and_field(published_like):
    write_run(published_like, "02", NO_TR)
    with pytest.raises(BidsReconError) as error:
        check_dataset(published_like)
    message = str(error.value)
    assert error.value.exit_code == 16
    assert "sub-02/func/sub-02_task-x_run-01_bold.nii.gz, field RepetitionTime" in message
    assert "SIDECAR_KEY_REQUIRED" in message and "--skip-bids-validation" in message
    # The warnings are not what stops it.
    assert "Funding" not in message and "participants.tsv" not in message


def test_another_participants_error_is_a_warning(published_like, caplog):
    write_run(published_like, "02", NO_TR)
    with caplog.at_level(logging.WARNING, logger="bidsrecon"):
        ignored = check_dataset(published_like, ReadSelection.from_labels(["sub-01"]))
    assert ("/sub-02/func/sub-02_task-x_run-01_bold.nii.gz", "RepetitionTime") in {
        (issue.location, issue.field) for issue in ignored}
    assert any("sub-02_task-x_run-01_bold.nii.gz, field RepetitionTime" in record.getMessage()
               for record in caplog.records)
    with pytest.raises(BidsReconError, match="RepetitionTime"):
        check_dataset(published_like, ReadSelection.from_labels(["01", "02"]))


def test_an_inherited_sidecar_error_is_fatal(published_like):
    # A top-level sidecar applies to every run of the task (here the run's own sidecar has no TR).
    write_run(published_like, "01", NO_TR)
    (published_like / "task-x_bold.json").write_text(json.dumps({"RepetitionTime": "two seconds"}))
    with pytest.raises(BidsReconError) as error:
        check_dataset(published_like, ReadSelection.from_labels(["01"]))
    assert error.value.exit_code == 16
    assert "task-x_bold.json, field RepetitionTime: must be number" in str(error.value)


def test_a_dataset_description_that_is_not_json_is_fatal(published_like):
    (published_like / "dataset_description.json").write_text('{"Name": "x",')
    with pytest.raises(BidsReconError) as error:
        check_dataset(published_like)
    assert error.value.exit_code == 16 and "dataset_description.json" in str(error.value)
    assert "JSON_INVALID" in str(error.value)


def test_an_annexed_run_not_fetched(published_like, caplog):
    # A DataLad clone where only sub-01's runs were fetched: sub-02's bold is a broken link into the annex.
    write_run(published_like, "02", GOOD)
    bold = published_like / "sub-02" / "func" / "sub-02_task-x_run-01_bold.nii.gz"
    bold.unlink()
    (published_like / ".git" / "annex" / "objects").mkdir(parents=True)
    bold.symlink_to("../../.git/annex/objects/Xx/Yy/MD5E-s9--0123.nii.gz/MD5E-s9--0123.nii.gz")
    with caplog.at_level(logging.WARNING, logger="bidsrecon"):
        check_dataset(published_like, ReadSelection.from_labels(["01"]))
    assert any("sub-02_task-x_run-01_bold.nii.gz" in record.getMessage() for record in caplog.records)
    with pytest.raises(BidsReconError) as error:
        check_dataset(published_like)
    assert error.value.exit_code == 16 and "sub-02/func/sub-02_task-x_run-01_bold.nii.gz" in str(error.value)
    assert "content is not fetched: run `datalad get sub-02/func/sub-02_task-x_run-01_bold.nii.gz`" in str(error.value)


def issue(location, field="", code="CODE"):
    return ValidatorIssue(code=code, location=location, field=field)


@pytest.mark.parametrize("location, field, selection, fatal", [
    # What a run reads, of a selected participant, session and task.
    ("/sub-01/ses-a/func/sub-01_ses-a_task-x_run-01_bold.nii.gz", "", ReadSelection(), True),
    ("/sub-01/ses-a/func/sub-01_ses-a_task-x_run-01_bold.json", "RepetitionTime", ReadSelection(("01",)), True),
    ("/sub-01/ses-a/func/sub-01_ses-a_task-x_run-01_events.tsv", "onset", ReadSelection(), True),
    ("/sub-01/ses-a/func/sub-01_ses-a_task-x_run-01_bold.nii", "", ReadSelection(), True),
    # ... of another participant, session or task: not read by this run.
    ("/sub-02/ses-a/func/sub-02_ses-a_task-x_run-01_bold.nii.gz", "", ReadSelection(("01",)), False),
    ("/sub-01/ses-b/func/sub-01_ses-b_task-x_run-01_bold.json", "", ReadSelection(("01",), ("a",)), False),
    ("/sub-01/ses-a/func/sub-01_ses-a_task-y_run-01_events.tsv", "", ReadSelection(tasks=("x",)), False),
    # Inherited sidecars apply to every run they match.
    ("/task-x_bold.json", "RepetitionTime", ReadSelection(("01",), ("a",), ("x",)), True),
    ("/task-y_bold.json", "RepetitionTime", ReadSelection(tasks=("x",)), False),
    ("/sub-01/sub-01_task-x_events.json", "", ReadSelection(("01",)), True),
    # Files bidsrecon never reads.
    ("/dataset_description.json", "Funding", ReadSelection(), False),
    ("/dataset_description.json", "BIDSVersion", ReadSelection(), False),
    ("/dataset_description.json", "", ReadSelection(), True),  # the file as a whole
    ("/README", "", ReadSelection(), False),
    ("/CHANGES", "", ReadSelection(), False),
    ("/participants.tsv", "participant_id", ReadSelection(), False),
    ("/sub-01/sub-01_sessions.tsv", "", ReadSelection(), False),
    ("/sub-01/ses-a/sub-01_ses-a_scans.tsv", "", ReadSelection(), False),
    ("/sub-01/ses-anatomy/anat/sub-01_ses-anatomy_T1w.nii.gz", "", ReadSelection(), False),
    ("/sub-01/ses-a/func/sub-01_ses-a_task-x_run-01_sbref.nii.gz", "", ReadSelection(), False),
    # The dataset's stimuli, unless --stimuli-dir stands in for them; the dataset as a whole.
    ("/stimuli/a.png", "", ReadSelection(), True),
    ("/stimuli/a.png", "", ReadSelection(dataset_stimuli=False), False),
    ("", "", ReadSelection(("01",)), True),
])
def test_the_rule(location, field, selection, fatal):
    assert is_fatal(issue(location, field), selection) is fatal


def test_selection_labels_lose_their_prefixes():
    assert ReadSelection.from_labels(["sub-01", "02"], ["ses-a"], ["task-x"], False) == ReadSelection(
        ("01", "02"), ("a",), ("x",), False)


def test_a_validator_that_gives_no_report_is_not_an_invalid_dataset(tmp_path, monkeypatch):
    fake = tmp_path / "bids-validator-deno"
    fake.write_text("#!/bin/sh\necho 'deno: out of memory' >&2\nkill -9 $$\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(validate, "validator_executable", lambda: str(fake))
    with pytest.raises(BidsReconError) as error:
        run_validator(tmp_path)
    assert error.value.exit_code == 1
    assert "gave no report" in str(error.value) and "killed by signal 9" in str(error.value)
    assert "deno: out of memory" in str(error.value)
    assert os.path.exists(fake)
