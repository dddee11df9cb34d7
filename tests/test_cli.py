"""The command line: options, and a clear one-line error with the right exit code for bad input."""
import subprocess
import sys
from pathlib import Path

import pytest
from checks import one_line_error

from bidsrecon import __version__
from bidsrecon.cli import main, parse_args

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_version_prints_the_version_file():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"bidsrecon {(ROOT / 'version').read_text().strip()}" == f"bidsrecon {__version__}"


def test_console_script_is_installed_and_equivalent():
    script = Path(sys.executable).parent / "bidsrecon"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"bidsrecon {__version__}"


def test_option_spellings(tmp_path):
    bids, out = tmp_path / "bids", tmp_path / "out"
    for flag in ("--skip-bids-validation", "--skip_bids_validation", "--skip_bids_validator"):
        assert parse_args([str(bids), str(out), "participant", flag]).skip_bids_validation
    for flag in ("--participant-label", "--participant_label"):
        config = parse_args([str(bids), str(out), "participant", flag, "sub-01", "02"])
        assert config.participant_labels == ("sub-01", "02")
    config = parse_args([str(bids), str(out), "group", "-w", str(tmp_path / "w"), "--nprocs", "2", "--seed", "7",
                         "--task-label", "perception", "--verbose"])
    assert (config.work_dir, config.nprocs, config.seed, config.task_labels, config.verbose) == (
        tmp_path / "w", 2, 7, ("perception",), 1)
    # fMRIPrep's memory units: a number alone is MB.
    for flag, value in (("--mem", "7500"), ("--mem", "7500M"), ("--mem_mb", "7.5G"), ("--mem-mb", "7.5gb"),
                        ("--mem-gb", "7.5"), ("--mem_gb", "7.5")):
        assert parse_args([str(bids), str(out), "participant", flag, value]).mem_gb == pytest.approx(7.5), flag
    assert parse_args([str(bids), str(out), "participant", "--mem", "1T"]).mem_gb == 1000
    # fMRIPrep's spellings of other options; --notrack is accepted (nothing is tracked anyway).
    (tmp_path / "prep").mkdir()
    (tmp_path / "prep" / "dataset_description.json").write_text('{"Name": "x", "DatasetType": "derivative"}')
    config = parse_args([str(bids), str(out), "participant", "--nthreads", "3", "-d", f"fmriprep={tmp_path / 'prep'}",
                         "--notrack"])
    assert (config.nprocs, config.derivatives, config.notrack) == (3, (f"fmriprep={tmp_path / 'prep'}",), True)
    assert parse_args([str(bids), str(out), "participant", "--optimizer", "gd"]).optimiser == "gd"


def test_memory_limit_in_fmripreps_units_is_checked(tmp_path, capsys):
    bids, out = tmp_path / "bids", tmp_path / "out"
    # fMRIPrep reads "--mem 16" as 16 MB: too little to run, and surely meant as 16 GB.
    one_line_error(run_cli(bids, out, "participant", "--mem", "16"), 64, "write --mem 16G")
    one_line_error(run_cli(bids, out, "participant", "--mem", "16G", "--mem-gb", "16"), 64, "not both")
    one_line_error(run_cli(bids, out, "participant", "--mem", "lots"), 64, "expected a size such as 16000")
    # More than the machine has: a warning, and the run goes on.
    assert parse_args([str(bids), str(out), "participant", "--mem", "1000000T"]).mem_gb == 1e9
    assert "more than this machine has" in capsys.readouterr().err


def test_unknown_analysis_level(tmp_path):
    one_line_error(run_cli(tmp_path, tmp_path / "out", "subject"), 17, "unknown analysis level 'subject'")


def test_output_or_work_dir_inside_the_input_is_refused(tiny_dataset, tmp_path):
    one_line_error(run_cli(tiny_dataset, tiny_dataset / "derivatives" / "x", "participant"), 64, "inside the input dataset")
    one_line_error(run_cli(tiny_dataset, tiny_dataset, "participant"), 64, "is the input dataset")
    one_line_error(run_cli(tiny_dataset, tmp_path / "out", "participant", "-w", tiny_dataset / "work"), 64,
                   "work directory")
    assert not (tiny_dataset / "derivatives" / "x").exists() and not (tiny_dataset / "work").exists()


def test_not_a_bids_dataset(tmp_path):
    (tmp_path / "data").mkdir()
    one_line_error(run_cli(tmp_path / "data", tmp_path / "out", "participant"), 66, "not a BIDS dataset",
                   "dataset_description.json")


def test_unknown_participant_lists_existing(tiny_dataset, tmp_path):
    result = run_cli(tiny_dataset, tmp_path / "out", "participant", "--participant-label", "sub-99",
                     "--skip-bids-validation")
    one_line_error(result, 18, "99 not found", "the dataset has: 01")


def test_participant_without_training_trials(tiny_dataset, tmp_path):
    # The training split is task 'perception'; selecting only 'imagery' leaves no training trials.
    result = run_cli(tiny_dataset, tmp_path / "out", "participant", "--task-label", "imagery",
                     "--skip-bids-validation", "-w", tmp_path / "work")
    one_line_error(result, 18, "sub-01 has no training trials")


def test_missing_stimuli_name_the_folder(tiny_dataset, tmp_path):
    empty = tmp_path / "no_stimuli"
    empty.mkdir()
    result = run_cli(tiny_dataset, tmp_path / "out", "participant", "--skip-bids-validation", "--stimuli-dir", empty,
                     "-w", tmp_path / "work")
    one_line_error(result, 66, "not found under", str(empty))


def test_invalid_bids_fails_validation(tmp_path):
    bids = tmp_path / "bad"
    (bids / "sub-01" / "func").mkdir(parents=True)
    (bids / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    (bids / "sub-01" / "func" / "sub-01_task-x_bold.nii.gz").write_bytes(b"not a nifti")
    one_line_error(run_cli(bids, tmp_path / "out", "participant", "-w", tmp_path / "work"), 16, "bids-validator")


def test_main_returns_exit_code_in_process(tmp_path):
    assert main([str(tmp_path), str(tmp_path / "o"), "nope"]) == 17


def test_spec_file_with_an_unknown_key(tiny_dataset, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text('{"name": "x", "training": {"entities": {"task": "perception"}}, "tests": [], "extra": 1}')
    result = run_cli(tiny_dataset, tmp_path / "out", "participant", "--skip-bids-validation", "--spec", spec,
                     "-w", tmp_path / "work")
    one_line_error(result, 64, "extra")


def test_spec_filter_that_selects_nothing(tiny_dataset, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text('{"name": "x", "training": {"entities": {"task": "perception"}, "events": "event_type == 99"},'
                    ' "tests": [{"name": "t", "entities": {"task": "imagery"}, "events": "event_type == 2",'
                    ' "stimulus_column": "category_index"}]}')
    result = run_cli(tiny_dataset, tmp_path / "out", "participant", "--skip-bids-validation", "--spec", spec,
                     "-w", tmp_path / "work")
    one_line_error(result, 18, "no training trials")


def test_unknown_roi_and_missing_derivatives(tiny_dataset, tmp_path):
    result = run_cli(tiny_dataset, tmp_path / "out", "participant", "--skip-bids-validation", "--roi", "V9",
                     "-w", tmp_path / "work")
    one_line_error(result, 64, "V9")
    result = run_cli(tiny_dataset, tmp_path / "out", "participant", "--skip-bids-validation", "--derivatives",
                     f"fmriprep={tmp_path / 'nowhere'}", "-w", tmp_path / "work")
    one_line_error(result, 66, "nowhere")


def test_bad_reconstruction_networks_are_found_before_any_work(tiny_dataset, tmp_path):
    common = [tiny_dataset, tmp_path / "out", "participant", "--skip-bids-validation", "-w", tmp_path / "work"]
    one_line_error(run_cli(*common, "--optimiser", "generator"), 64, "--generator-weights")
    wrong = tmp_path / "generator.pt"
    wrong.write_bytes(b"not a state dict")
    one_line_error(run_cli(*common, "--optimiser", "generator", "--generator-weights", wrong), 66, "generator.pt")
    one_line_error(run_cli(*common, "--layers", "block99"), 64, "block99", "valid layers: stem")
    one_line_error(run_cli(*common, "--encoder", "vgg19-caffe"), 66, "--encoder-weights")
    import torch
    if not torch.cuda.is_available():
        one_line_error(run_cli(*common, "--device", "cuda"), 64, "--device cuda", "--device cpu")
        one_line_error(run_cli(*common, "--mixed-precision"), 64, "CUDA only")
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").rglob("*.npy"))


def test_execution_options(tmp_path):
    bids, out = tmp_path / "bids", tmp_path / "out"
    config = parse_args([str(bids), str(out), "participant", "--nprocs", "4"])
    assert config.omp_nthreads == 4 and config.plugin == ("MultiProc", (("n_procs", 4),))
    assert not config.stop_on_first_crash and not config.resource_monitor
    config = parse_args([str(bids), str(out), "participant", "--nprocs", "1", "--omp-nthreads", "3"])
    assert config.omp_nthreads == 1 and config.plugin == ("Linear", ())  # never more threads than CPUs
    config = parse_args([str(bids), str(out), "participant", "--nprocs", "2", "--mem", "6G", "--stop-on-first-crash",
                         "--resource-monitor"])
    assert config.plugin == ("MultiProc", (("n_procs", 2), ("memory_gb", 6.0)))
    assert config.stop_on_first_crash and config.resource_monitor
    # fMRIPrep's plugin file format; MultiProc's unset arguments come from --nprocs and --mem.
    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: SLURM\nplugin_args:\n  sbatch_args: --time=2:00:00\n")
    assert parse_args([str(bids), str(out), "participant", "--use-plugin", str(plugin)]).plugin == (
        "SLURM", (("sbatch_args", "--time=2:00:00"),))
    plugin.write_text('{"plugin": "MultiProc", "plugin_args": {"n_procs": 3}}')
    assert parse_args([str(bids), str(out), "participant", "--use-plugin", str(plugin), "--mem", "5G"]).plugin == (
        "MultiProc", (("memory_gb", 5.0), ("n_procs", 3)))


def test_bad_plugin_files(tmp_path):
    plugin = tmp_path / "plugin.yml"
    one_line_error(run_cli(tmp_path / "bids", tmp_path / "out", "participant", "--use-plugin", plugin), 64, str(plugin))
    plugin.write_text("plugin: Dask\n")
    one_line_error(run_cli(tmp_path / "bids", tmp_path / "out", "participant", "--use-plugin", plugin), 64, "MultiProc",
                   str(plugin))
    plugin.write_text("plugin: [unclosed\n")
    one_line_error(run_cli(tmp_path / "bids", tmp_path / "out", "participant", "--use-plugin", plugin), 64,
                   "cannot be read as YAML or JSON")
