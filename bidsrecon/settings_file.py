"""``--config-file``: a run's options as TOML, read before the command line and written with every run.

A key is an option's long name, with ``-`` or ``_`` (``image-size = 64``, ``participant_label =
["01"]``, ``mem = "16G"``); a flag is ``true``; a repeated one (``verbose``) a count; an option whose
value may be left out takes its value or ``true`` for none (``save-decoded-features = "bdpy"`` or
``= true``). The
command line wins over the file. Each participant's ``log/sub-XX_desc-settings_log.toml`` holds every
option of the run, so ``bidsrecon bids_dir output_dir participant --config-file that.toml``
repeats it.
"""
import argparse
import dataclasses
import tomllib
from pathlib import Path

from bidsrecon.config import Config
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError

FLAGS = ("--config-file", "--config_file")


def _options():
    """Key (long flag without dashes, ``_`` for ``-``) -> (field, the flag to use)."""
    keys = {}
    for option in dataclasses.fields(Config):
        flags = option.metadata.get("flags") or ()
        long_flags = [flag for flag in flags if flag.startswith("--")]
        if not long_flags or option.name == "config_file":
            continue
        for flag in long_flags:
            keys[flag[2:].replace("-", "_")] = (option, long_flags[0])
    return keys


def merge_config_file(parser, argv, args):
    """``args`` (parsed from ``argv``) completed by ``--config-file``'s options not given in ``argv``."""
    tokens = config_file_argv(argv)
    if not tokens:
        return args
    from_file = parser.parse_args([str(args.bids_dir), str(args.output_dir), str(args.analysis_level), *tokens])
    for action in parser._actions:  # what argv gave explicitly: parsed again with no defaults
        action.default = argparse.SUPPRESS
    given = vars(parser.parse_args(argv))
    for name, value in vars(from_file).items():
        if name not in given:
            setattr(args, name, value)
    return args


def config_file_argv(argv):
    """The command-line tokens that ``--config-file FILE`` in ``argv`` stands for (none without it)."""
    path = None
    for index, token in enumerate(argv):
        if token in FLAGS and index + 1 < len(argv):
            path = Path(argv[index + 1])
        elif token.split("=", 1)[0] in FLAGS and "=" in token:
            path = Path(token.split("=", 1)[1])
    if path is None:
        return []
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise BidsReconError(f"--config-file {path}: {error.strerror or error}", EXIT_INPUT_MISSING) from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise BidsReconError(f"--config-file {path}: not a TOML file ({error}); write one option per line, "
                             'e.g. image-size = 64 or mem = "16G"', EXIT_BAD_ARGUMENTS) from None
    options, tokens = _options(), []
    for key, value in values.items():
        if key.replace("-", "_") not in options:
            raise BidsReconError(f"--config-file {path}: unknown option {key!r}; keys are the long options without "
                                 "their dashes (bidsrecon --help)", EXIT_BAD_ARGUMENTS)
        option, flag = options[key.replace("-", "_")]
        action = option.metadata["argparse"].get("action")
        if action in ("store_true", "store_false"):
            if not isinstance(value, bool):
                raise BidsReconError(f"--config-file {path}: {key} is a flag: true or false", EXIT_BAD_ARGUMENTS)
            tokens += [flag] if value else []
        elif option.metadata["argparse"].get("nargs") == "?" and isinstance(value, bool):
            # An option whose value may be left out (--save-decoded-features [h5|bdpy]): true gives it
            # bare, as a flag was written before it took a value.
            tokens += [flag] if value else []
        elif action == "count":
            tokens += [flag] * int(value)
        elif isinstance(value, list):
            tokens += [flag, *map(str, value)] if value else []
        elif isinstance(value, (dict, bool)):
            raise BidsReconError(f"--config-file {path}: {key} takes a value, not {type(value).__name__}",
                                 EXIT_BAD_ARGUMENTS)
        else:
            tokens += [flag, str(value)]
    return tokens


def settings_toml(config):
    """Every option of ``config`` that differs from its default, as a TOML text ``--config-file`` reads."""
    lines = ["# bidsrecon settings of one run: give this file as --config-file to repeat it."]
    for option in dataclasses.fields(Config):
        flags = option.metadata.get("flags") or ()
        if not flags or option.name == "config_file":
            continue
        value, default = getattr(config, option.name), option.default
        action = option.metadata["argparse"].get("action")
        if value == default or value is None:
            continue
        key = next(flag for flag in flags if flag.startswith("--"))[2:]
        if option.name == "mem_gb":  # --mem reads a bare number as MB
            value = f"{value:g}G"
        elif action == "store_false":  # a flag that turns a setting off (--no-clamp): true when given
            value = not value
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
