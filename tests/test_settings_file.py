"""--config-file: options from TOML (the command line wins), and each run's settings written back as TOML."""
import dataclasses

import pytest
from checks import one_line_error
from test_cli import run_cli

from bidsrecon.cli import parse_args
from bidsrecon.settings_file import settings_toml


def test_options_come_from_the_file_and_the_command_line_wins(tmp_path):
    settings = tmp_path / "settings.toml"
    settings.write_text('image-size = 48\niterations = 7\nparticipant_label = ["02", "03"]\nmem = "6G"\n'
                        "no-clamp = true\nverbose = 2\nskip-bids-validation = true\n")
    bids, out = str(tmp_path / "bids"), str(tmp_path / "out")
    config = parse_args([bids, out, "participant", "--config-file", str(settings), "--image-size", "64"])
    assert (config.image_size, config.iterations, config.participant_labels) == (64, 7, ("02", "03"))
    assert (config.mem_gb, config.clamp, config.verbose, config.skip_bids_validation) == (6, False, 2, True)
    # A list on the command line replaces the file's.
    config = parse_args([bids, out, "participant", f"--config-file={settings}", "--participant-label", "01"])
    assert config.participant_labels == ("01",) and config.iterations == 7


def test_a_runs_settings_repeat_it(tmp_path):
    bids, out = str(tmp_path / "bids"), str(tmp_path / "out")
    config = parse_args([bids, out, "participant", "--image-size", "48", "--mem", "6G", "--no-clamp", "-vv",
                         "--roi", "V1", "V2", "--seed", "3", "--nprocs", "1"])
    settings = tmp_path / "settings.toml"
    settings.write_text(settings_toml(config))
    again = parse_args([bids, out, "participant", "--config-file", str(settings)])
    ignored = {"command", "config_file"}
    assert {field.name: getattr(again, field.name) for field in dataclasses.fields(again) if field.name not in ignored} \
        == {field.name: getattr(config, field.name) for field in dataclasses.fields(config) if field.name not in ignored}


@pytest.mark.parametrize(("text", "fragment"), [
    ("imagesize = 64\n", "unknown option 'imagesize'"),
    ("image-size = \n", "not a TOML file"),
    ('cut-runs = "yes"\n', "cut-runs is a flag"),
])
def test_bad_config_files_are_one_line(tmp_path, text, fragment):
    settings = tmp_path / "settings.toml"
    settings.write_text(text)
    one_line_error(run_cli(tmp_path / "bids", tmp_path / "out", "participant", "--config-file", settings), 64, fragment)
    one_line_error(run_cli(tmp_path / "bids", tmp_path / "out", "participant", "--config-file", tmp_path / "none.toml"),
                   66, "none.toml")
