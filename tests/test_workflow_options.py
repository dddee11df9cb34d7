"""fMRIPrep's workflow-control options: --dry-run, --reports-only, --clean-workdir, --write-graph,
--bids-database-dir."""
import pytest
from checks import checksums, one_line_error
from test_cli import run_cli

from bidsrecon.bids.collect import load_layout
from bidsrecon.cli import main

FAST = ["--encoder", "efficientnet-lite0-random", "--image-size", "32", "--iterations", "3", "--nprocs", "1"]


def test_dry_run_checks_and_describes_without_writing(tiny_dataset, tmp_path, capsys):
    before = checksums(tiny_dataset)
    out = tmp_path / "out"
    assert main([str(tiny_dataset), str(out), "participant", "-w", str(tmp_path / "work"), "--dry-run", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "sub-01:" in printed and "training:" in printed and "training images" in printed
    assert "items to reconstruct" in printed and "nothing was written" in printed
    assert not out.exists() and checksums(tiny_dataset) == before
    # It checks the inputs as a real run does: a bad option is still an error.
    one_line_error(run_cli(tiny_dataset, out, "participant", "--dry-run", "--roi", "nowhere", *FAST), 64,
                   "unknown ROI name")


def test_reports_only_needs_a_participants_outputs(tmp_path):
    out = tmp_path / "out"
    (out / "sub-01").mkdir(parents=True)  # a folder without the participant's results
    one_line_error(run_cli(tmp_path / "bids", out, "participant", "--reports-only"), 66, "no outputs of sub-01")
    one_line_error(run_cli(tmp_path / "bids", tmp_path / "empty", "participant", "--reports-only"), 66,
                   "no outputs of any participant")
    assert not (tmp_path / "bids").exists()  # the input is never needed


def test_clean_workdir_removes_only_the_selected_participants_results(tmp_path):
    from bidsrecon.workflow_control import clean_work_dir

    work = tmp_path / "work"
    for folder in ("sub_01_wf/decode_wf", "sub-01/trials", "sub_02_wf/recon_wf", "feature_cache/ab"):
        (work / folder).mkdir(parents=True)
        (work / folder / "file").write_text("x")
    clean_work_dir(work, ["01"])
    assert sorted(path.name for path in work.iterdir()) == ["feature_cache", "sub_02_wf"]


def test_cached_results_of_another_version_are_refused_until_cleaned(tiny_dataset, tmp_path, capsys):
    """Nipype would reuse them unchanged; --clean-workdir (or a new work dir) is the way on."""
    from bidsrecon._version import __version__
    from bidsrecon.workflow_control import VERSION_STAMP, check_work_version, stamp_work_version

    work = tmp_path / "work"
    cached = work / "sub_01_wf" / "decode_wf" / "decode"
    cached.mkdir(parents=True)
    (cached / "result_decode.pklz").write_bytes(b"an old version's result")
    before = checksums(tiny_dataset)
    one_line_error(run_cli(tiny_dataset, tmp_path / "out", "participant", "-w", work, *FAST), 64,
                   str(work / "sub_01_wf"), "an earlier bidsrecon", f"this is bidsrecon {__version__}", "--clean-workdir")
    (work / "sub_01_wf" / VERSION_STAMP).write_text("0.0.1\n")
    one_line_error(run_cli(tiny_dataset, tmp_path / "out", "participant", "-w", work, *FAST), 64,
                   "cached by bidsrecon 0.0.1")
    assert not (tmp_path / "out").exists() and checksums(tiny_dataset) == before
    assert (cached / "result_decode.pklz").exists()  # refused, not removed

    assert main([str(tiny_dataset), str(tmp_path / "out"), "participant", "-w", str(work), "--clean-workdir",
                 "--dry-run", *FAST]) == 0
    assert not (work / "sub_01_wf").exists()
    stamp_work_version(work, "01")
    (cached / "result_decode.pklz").parent.mkdir(parents=True)
    (cached / "result_decode.pklz").write_bytes(b"this version's result")
    check_work_version(work, ["01", "02"])  # this version's results, and a participant with none


def test_an_edit_to_a_checkouts_source_makes_its_cached_results_another_versions(tmp_path, monkeypatch):
    """A checkout's version stays the same through edits: the stamp carries the source's hash, so a
    rerun after an edit is refused (and `make demo` starts afresh) instead of reusing the old code's results."""
    from bidsrecon import _version
    from bidsrecon.errors import BidsReconError
    from bidsrecon.workflow_control import check_work_version, stamp_work_version

    package = tmp_path / "package"
    (package / "decoding").mkdir(parents=True)
    (package / "decoding" / "stage.py").write_text("STEP = 1\n")
    monkeypatch.setattr(_version, "_PACKAGE", package)
    work = tmp_path / "work"
    stamp_work_version(work, "01")
    (work / "sub_01_wf" / "result").write_text("computed by STEP = 1")
    check_work_version(work, ["01"])  # unchanged source: reused
    assert _version.cached_results_version().startswith(_version.__version__ + "+src.")

    (package / "decoding" / "stage.py").write_text("STEP = 2\n")
    with pytest.raises(BidsReconError, match="--clean-workdir"):
        check_work_version(work, ["01"])
    monkeypatch.setattr(_version, "_VERSION_FILE", tmp_path / "no-version-file")  # an installed release
    assert _version.cached_results_version() == _version.__version__


def test_write_graph(tmp_path):
    from test_stages import _plan

    from bidsrecon.config import Config
    from bidsrecon.workflow_control import write_graph
    from bidsrecon.workflows.participant import init_participant_wf

    config = Config(bids_dir=tmp_path, output_dir=tmp_path / "out", work_dir=tmp_path / "work", omp_nthreads=1)
    workflow = init_participant_wf(_plan(tmp_path), config)
    write_graph(workflow, tmp_path / "graph")  # Graphviz is not installed here: the .dot file only
    dot = (tmp_path / "graph" / "graph.dot").read_text()
    assert "decode" in dot and "reconstruct" in dot and "write_derivatives" in dot


def test_bids_database_dir_is_kept_and_reused(tiny_dataset, tmp_path):
    database = tmp_path / "db"
    first = load_layout(tiny_dataset, database)
    assert any(database.iterdir())
    second = load_layout(tiny_dataset, database)
    assert sorted(second.get(return_type="file")) == sorted(first.get(return_type="file"))
    # Not inside an input or the output: bidsrecon never writes there.
    one_line_error(run_cli(tiny_dataset, tmp_path / "out", "participant", "--bids-database-dir", tiny_dataset / "db"),
                   64, "--bids-database-dir")


@pytest.mark.parametrize("flag", ["--clean-workdir", "--clean_workdir", "--write-graph", "--reports-only",
                                  "--dry_run", "--bids_database_dir"])
def test_fmriprep_spellings_are_known(tmp_path, flag):
    from bidsrecon.cli import build_parser

    assert flag in build_parser().format_help()


def test_boilerplate_only_writes_the_methods_and_nothing_else(tmp_path, capsys):
    out, prep = tmp_path / "out", tmp_path / "prep"
    prep.mkdir()
    (prep / "dataset_description.json").write_text('{"Name": "x", "DatasetType": "derivative"}')
    assert main([str(tmp_path / "bids"), str(out), "participant", "--boilerplate-only", "--iterations", "123",
                 "--derivatives", str(prep)]) == 0
    text = (out / "logs" / "CITATION.md").read_text()
    assert "123 iterations" in text and "fMRIPrep [fmriprep]" in text and "Shen G, Horikawa T" in text
    assert "[nipy]" not in text  # fMRIPrep input: nipy's realignment is not used, nor cited
    assert sorted(path.name for path in out.iterdir()) == ["logs"]
    assert "methods boilerplate written" in capsys.readouterr().out


def test_boilerplate_says_how_the_small_image_was_decoded(tmp_path):
    texts = {}
    for choice in ("prf", "ridge"):
        out = tmp_path / choice
        assert main([str(tmp_path / "bids"), str(out), "participant", "--boilerplate-only",
                     "--pixel-decoder", choice]) == 0
        texts[choice] = (out / "logs" / "CITATION.md").read_text()
    assert "population receptive field [dumoulin2008]" in texts["prf"] and "Kay KN, Winawer J" in texts["prf"]
    assert "local Wiener filter [lee1980]" in texts["prf"] and "Lee JS (1980)" in texts["prf"]
    assert "Lee JS (1980)" not in texts["ridge"]
    assert "decoded in the same way" in texts["ridge"] and "[dumoulin2008]" not in texts["ridge"]
    assert "Dumoulin SO" not in texts["ridge"]


def test_boilerplate_as_html():
    from bidsrecon.reports.html import markdown

    assert markdown("# Methods\n\n**Decoding.** a < b\nc\n\n- [x] one\n- [y] two\n") == (
        "<h3>Methods</h3>\n<p><strong>Decoding.</strong> a &lt; b c</p>\n<ul><li>[x] one</li><li>[y] two</li></ul>")
