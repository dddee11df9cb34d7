"""The BIDS-App command line: ``bidsrecon bids_dir output_dir {participant,group} [options]``."""
import argparse
import dataclasses
import errno
import logging
import os
import sys
from pathlib import Path

from bidsrecon import __version__
from bidsrecon.config import POSITIONAL, Config
from bidsrecon.encoders.base import MIN_IMAGE_SIZE
from bidsrecon.errors import (
    EXIT_BAD_ARGUMENTS,
    EXIT_CANNOT_WRITE,
    EXIT_INPUT_MISSING,
    EXIT_UNKNOWN_LEVEL,
    BidsReconError,
)
from bidsrecon.folders import check_disjoint, check_writable, default_work_dir
from bidsrecon.interrupt import stop_cleanly_on_signals
from bidsrecon.spec import builtin_spec_names

ANALYSIS_LEVELS = ("participant", "group")


class _Parser(argparse.ArgumentParser):
    """argparse with the BIDS-App exit code for bad arguments (64) instead of 2."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_ARGUMENTS, f"{self.prog}: error: {message}\n")


def build_parser():
    """The argument parser, made from the fields of `bidsrecon.config.Config` (see its docstring)."""
    parser = _Parser(
        prog="bidsrecon",
        description="Reconstruct the images a participant saw or imagined from their fMRI "
        "(deep image reconstruction, Shen et al. 2019).",
    )
    groups = {POSITIONAL: parser}
    for option in dataclasses.fields(Config):
        if "flags" not in option.metadata:
            continue
        meta = option.metadata
        if meta["group"] not in groups:
            groups[meta["group"]] = parser.add_argument_group(meta["group"])
        help_text = meta["help"].replace("{builtin_specs}", ", ".join(builtin_spec_names()))
        if meta["flags"]:
            groups[meta["group"]].add_argument(*meta["flags"], dest=option.name, default=meta["parser_default"],
                                               help=help_text, **meta["argparse"])
        else:
            groups[meta["group"]].add_argument(option.name, help=help_text, **meta["argparse"])
        if option.name == "analysis_level":
            parser.add_argument("--version", action="version", version=f"bidsrecon {__version__}")
    return parser


def _check_folders(args, work_dir):
    """Inputs, output and work dir apart, and the output writable, before any input is read."""
    from bidsrecon.bids.fmriprep import parse_derivatives

    inputs = [("the input dataset", args.bids_dir),
              *((f"--derivatives {dataset.name}", dataset.root) for dataset in parse_derivatives(args.derivatives)),
              *(("--stimuli-dir", folder) for folder in args.stimuli_dirs),
              *((("--decoders-dir", args.decoders_dir),) if args.decoders_dir else ()),
              *((("--bdata-dir", args.bdata_dir),) if args.bdata_dir else ()),
              *((("--features-dir", args.features_dir),) if args.features_dir else ())]
    check_disjoint([("the output_dir", args.output_dir), ("the work directory (-w)", work_dir)], inputs)
    if args.bids_database_dir:  # may lie in the work dir, as fMRIPrep's does, but not in an input or the output
        check_disjoint([("--bids-database-dir", args.bids_database_dir)],
                       [*inputs, ("the output_dir", args.output_dir)])
    check_writable(args.output_dir, "the output_dir")
    check_writable(work_dir, "the work directory (-w)")


def _resolved_if_file(value):
    return str(Path(value).resolve()) if value is not None and Path(value).is_file() else value


def _check_decoders_dir(args):
    """``--decoders-dir`` must be a folder, and excludes the options that only shape a fit.

    They are refused rather than ignored: a user who asks for 500 voxels or V1 only would
    otherwise get the saved decoder's voxels without noticing.
    """
    if args.decoders_dir is None:
        return
    if not args.decoders_dir.is_dir():
        what = ("the Kamitani lab's decoder folder of one network (<layer>/sub-<label>/<roi>/model/, as the "
                "brain-decoding cookbook trains them)" if args.bdata_dir else
                "the output folder of an earlier 'bidsrecon ... participant' run (it holds sub-<label>/decoder/)")
        raise BidsReconError(f"--decoders-dir {args.decoders_dir}: no such folder; give {what}", EXIT_INPUT_MISSING)
    fitting = [option for option, given in (("--n-voxels", args.n_voxels is not None), ("--roi", bool(args.rois)),
                                            ("--decoder", args.decoder is not None)) if given]
    if fitting:
        raise BidsReconError(f"--decoders-dir applies saved decoders, whose voxels and type were fixed when they "
                             f"were fitted; drop {', '.join(fitting)} (or drop --decoders-dir to fit a new decoder)",
                             EXIT_BAD_ARGUMENTS)


def _check_features_dir(args):
    """``--features-dir`` must be a folder, and trains a decoder: it cannot go with ``--decoders-dir``.

    Its files are checked against the training stimuli and the encoder's layers when the participants
    are planned (:func:`bidsrecon.preflight.preflight`).
    """
    if args.features_dir is None:
        return
    if args.decoders_dir is not None:
        raise BidsReconError("--features-dir gives the training images' features to fit a decoder, and --decoders-dir "
                             "applies saved decoders without fitting any: drop one of them", EXIT_BAD_ARGUMENTS)
    if not args.features_dir.is_dir():
        raise BidsReconError(f"--features-dir {args.features_dir}: no such folder; give a folder of precomputed "
                             "features in the Kamitani lab's layout (<layer>/<stimulus name>.mat)", EXIT_INPUT_MISSING)


def _check_penalty_image_size(args):
    """``--penalty-image-size`` shrinks the kernel decoder's penalty pass: it needs that pass."""
    if args.penalty_image_size is None:
        return
    if args.penalty_image_size < MIN_IMAGE_SIZE:
        raise BidsReconError(f"--penalty-image-size {args.penalty_image_size}: the encoders take images of at least "
                             f"{MIN_IMAGE_SIZE} pixels", EXIT_BAD_ARGUMENTS)
    if args.penalty_image_size >= args.image_size:
        raise BidsReconError(f"--penalty-image-size {args.penalty_image_size} must be smaller than --image-size "
                             f"{args.image_size} (drop it to choose the penalty at the image size)", EXIT_BAD_ARGUMENTS)
    other = [option for option, given in (("--decoders-dir", args.decoders_dir is not None),
                                         ("--features-dir", args.features_dir is not None),
                                         ("--decoder fastl2lir", args.decoder == "fastl2lir")) if given]
    if other:
        raise BidsReconError(f"--penalty-image-size resizes the images of the kernel decoder's penalty pass, which "
                             f"{other[0]} does not run; drop one of them", EXIT_BAD_ARGUMENTS)


def _check_pixel_decoder(args):
    """``--pixel-decoder`` chooses how a kernel decoder is fitted: it needs that fit."""
    if args.pixel_decoder is None:
        return
    other = [option for option, given in (("--decoders-dir", args.decoders_dir is not None),
                                         ("--decoder fastl2lir", args.decoder == "fastl2lir")) if given]
    if other:
        raise BidsReconError(f"--pixel-decoder chooses how the kernel decoder is fitted, which {other[0]} does not do "
                             "(a saved decoder decodes the pixels as it was fitted to); drop one of them",
                             EXIT_BAD_ARGUMENTS)


def _check_confounds_options(args):
    if args.confounds_strategy is None:
        return
    if not args.derivatives:
        raise BidsReconError(f"--confounds-strategy {args.confounds_strategy} reads fMRIPrep's confounds: give "
                             "--derivatives PATH (fMRIPrep's output folder), or drop --confounds-strategy (raw runs are "
                             "realigned here and their six motion parameters regressed out)", EXIT_BAD_ARGUMENTS)
    if args.confounds is not None:
        raise BidsReconError("give --confounds or --confounds-strategy, not both: the strategy chooses the columns "
                             "itself (name every column with --confounds to add your own)", EXIT_BAD_ARGUMENTS)


def _check_bdata_options(args):
    """``--bdata-dir`` must be a folder, and excludes the options of the runs it replaces.

    With it, ``--decoders-dir`` names the Kamitani lab's trained decoders (the cookbook's tree,
    :mod:`bidsrecon.decoding.lab_tree`), checked when the participants are planned."""
    if args.bdata_dir is None:
        return
    if not args.bdata_dir.is_dir():
        raise BidsReconError(f"--bdata-dir {args.bdata_dir}: no such folder; give the folder of the lab's "
                             "preprocessed files (sub-<label>_<session>_*.h5)", EXIT_INPUT_MISSING)
    runs_only = [option for option, given in (
        ("--derivatives", bool(args.derivatives)),
        ("--roi", bool(args.rois)), ("--confounds", args.confounds is not None),
        ("--confounds-strategy", args.confounds_strategy is not None), ("--slice-timing", args.slice_timing),
        ("--bids-filter-file", args.bids_filter_file is not None), ("--session-label", bool(args.session_labels)),
        ("--task-label", bool(args.task_labels)), ("--normalise", args.normalise is not None),
        ("--samples", args.samples != "block")) if given]
    if runs_only:
        raise BidsReconError(f"--bdata-dir takes samples the lab has already preprocessed, so there are no runs "
                             f"to select or preprocess; drop {', '.join(runs_only)} (--bdata-roi chooses the "
                             "voxels)", EXIT_BAD_ARGUMENTS)


def parse_args(argv=None):
    """Parse and check the command line; returns a `Config`."""
    from bidsrecon.settings_file import merge_config_file

    argv = list(sys.argv[1:] if argv is None else argv)
    args = merge_config_file(build_parser(), argv, build_parser().parse_args(argv))
    if args.analysis_level not in ANALYSIS_LEVELS:
        raise BidsReconError(
            f"unknown analysis level '{args.analysis_level}'; choose one of: {', '.join(ANALYSIS_LEVELS)}",
            EXIT_UNKNOWN_LEVEL,
        )
    if (args.optimiser == "generator") != (args.generator_weights is not None):
        raise BidsReconError("--optimiser generator needs --generator-weights FILE, and only it takes "
                             "one", EXIT_BAD_ARGUMENTS)
    mem_gb = _memory_limit(args)
    if args.jitter < 0:
        raise BidsReconError(f"--jitter must be 0 or more pixels, got {args.jitter}", EXIT_BAD_ARGUMENTS)
    _check_decoders_dir(args)
    _check_features_dir(args)
    _check_penalty_image_size(args)
    _check_pixel_decoder(args)
    _check_confounds_options(args)
    _check_bdata_options(args)
    work_dir = args.work_dir or default_work_dir()
    nprocs = args.nprocs or len(os.sched_getaffinity(0))
    _check_folders(args, work_dir)
    values = {option.name: getattr(args, option.name) for option in dataclasses.fields(Config)
              if "flags" in option.metadata}
    for option in dataclasses.fields(Config):
        value = values.get(option.name)
        if isinstance(value, list):
            value = values[option.name] = tuple(value)
        if value is not None and option.metadata.get("argparse", {}).get("type") is Path:
            values[option.name] = (tuple(path.resolve() for path in value) if isinstance(value, tuple)
                                   else value.resolve())
    return Config(**{
        **values,
        "work_dir": work_dir.resolve(),
        "nprocs": nprocs,
        "omp_nthreads": min(args.omp_nthreads or nprocs, nprocs),
        "mem_gb": mem_gb,
        "mem_gb_option": None,
        "plugin": read_plugin_settings(args.plugin_file, nprocs, mem_gb),
        "command": tuple(sys.argv[:1] + list(argv if argv is not None else sys.argv[1:])),
        # The workflow runs inside the work directory: a relative file name must not change meaning.
        "spec": _resolved_if_file(args.spec),
        "generator_latent_max": _resolved_if_file(args.generator_latent_max),
        "decoder": args.decoder or Config.decoder,
        "pixel_decoder": args.pixel_decoder or Config.pixel_decoder,
        "snapshot_every": args.snapshot_every or 0,
    })


#: Less memory than this cannot hold the encoder: ``--mem 16`` (16 MB in fMRIPrep's units) was
#: surely meant as 16 GB.
MIN_MEMORY_GB = 0.1


def _memory_limit(args):
    """``--mem`` (fMRIPrep's units) or ``--mem-gb``, in GB; checked against the machine's memory."""
    if args.mem_gb is not None and args.mem_gb_option is not None:
        raise BidsReconError("give the memory limit once: --mem (16000 or 16G) or --mem-gb (16), not both",
                             EXIT_BAD_ARGUMENTS)
    limit = args.mem_gb if args.mem_gb is not None else args.mem_gb_option
    if limit is None:
        return None
    if limit < MIN_MEMORY_GB:
        raise BidsReconError(f"a memory limit of {limit * 1000:g} MB is too little to run; --mem reads a number "
                             "without a unit as MB, as fMRIPrep does: write --mem 16G (or --mem-gb 16) for 16 GB",
                             EXIT_BAD_ARGUMENTS)
    machine_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    if limit > machine_gb:
        print(f"bidsrecon: warning: the memory limit ({limit:g} GB) is more than this machine has "
              f"({machine_gb:.1f} GB); the operating system may stop the run before the limit is reached",
              file=sys.stderr)
    return limit


PLUGINS = ("Linear", "MultiProc", "SLURM", "SLURMGraph", "SGE", "SGEGraph", "PBS", "PBSGraph", "LSF", "Condor",
           "OAR", "IPython")


def read_plugin_settings(path, nprocs, mem_gb):
    """The Nipype plugin and its arguments: from ``--use-plugin FILE``, else MultiProc (Linear on 1 CPU).

    Returns
    -------
    tuple
        ``(name, ((key, value), ...))``: hashable, as the frozen `Config` needs.
    """
    if path is None:
        if nprocs == 1:
            return ("Linear", ())
        return ("MultiProc", (("n_procs", nprocs), *((("memory_gb", mem_gb),) if mem_gb else ())))
    import yaml  # JSON is a subset of YAML: one reader for both

    try:
        settings = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise BidsReconError(f"--use-plugin {path}: cannot be read as YAML or JSON ({error})",
                             EXIT_BAD_ARGUMENTS) from None
    if not isinstance(settings, dict) or settings.get("plugin") not in PLUGINS:
        raise BidsReconError(f"--use-plugin {path}: needs 'plugin:' set to one of {', '.join(PLUGINS)} "
                             "(and optionally 'plugin_args:'); see examples/ in the repository", EXIT_BAD_ARGUMENTS)
    arguments = settings.get("plugin_args") or {}
    if not isinstance(arguments, dict):
        raise BidsReconError(f"--use-plugin {path}: 'plugin_args' must be a mapping", EXIT_BAD_ARGUMENTS)
    if settings["plugin"] == "MultiProc":
        arguments.setdefault("n_procs", nprocs)
        if mem_gb:
            arguments.setdefault("memory_gb", mem_gb)
    return (settings["plugin"], tuple(sorted(arguments.items())))


def _configure_logging(verbose):
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    os.environ.setdefault("NIPYPE_NO_ET", "1")  # no version check over the network
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    for name in ("workflow", "interface", "utils"):
        nipype_config.set("logging", f"{name}_level", logging.getLevelName(level))
    nipype_logging.update_logging(nipype_config)
    # Nipype prints through its own handler, to stdout and over two lines per message: its steps go
    # through ours instead (stderr, one line, with the time), at -v.
    for handler in list(logging.getLogger("nipype").handlers):
        logging.getLogger("nipype").removeHandler(handler)
    # Other libraries' debug lines (fonts, PNG chunks, graphs, HTTP) would drown ours and Nipype's at -vv.
    for name in ("matplotlib", "PIL", "pydot", "urllib3", "fsspec", "h5py", "numexpr", "bids", "bidsschematools"):
        logging.getLogger(name).setLevel(max(level, logging.INFO if name != "bidsschematools" else logging.WARNING))


def main(argv=None):
    """Entry point of ``bidsrecon`` and ``run.py``; returns the exit code."""
    # Idle OpenMP threads sleep instead of spinning: on a shared or oversubscribed machine (a busy
    # cluster node, parallel Nipype nodes) spinning made the encoder 3-4x slower in our measurements.
    # It must be set before torch starts its thread pool; a user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        with stop_cleanly_on_signals():
            config = parse_args(argv)
            _configure_logging(config.verbose)
            if config.analysis_level == "participant":
                from bidsrecon.participant_level import run_participant_level

                run_participant_level(config)
            else:
                from bidsrecon.group_level import run_group_level

                run_group_level(config)
    except BidsReconError as error:
        print(f"bidsrecon: error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:
        # Outside a workflow step (those end in a crash file and exit 1): the output or work dir
        # full, read-only or gone under our feet. Finished outputs stay as they were.
        print(f"bidsrecon: error: {_describe_os_error(error)}", file=sys.stderr)
        return EXIT_CANNOT_WRITE if error.errno in _WRITE_ERRNOS else EXIT_INPUT_MISSING
    return 0


_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _describe_os_error(error):
    where = f"{error.filename}: " if error.filename else ""
    fixes = {errno.ENOSPC: "free some space (or give another output or -w folder)",
             errno.EDQUOT: "free some of your quota (or give another output or -w folder)",
             errno.EROFS: "give a folder on a writable file system",
             errno.EACCES: "give a folder you can write to, or fix its permissions",
             errno.EPERM: "give a folder you can write to, or fix its permissions"}
    fix = fixes.get(error.errno, "check the file and the folder it is in")
    return (f"{where}{error.strerror or error}; {fix}. Outputs already finished are kept, and the same "
            "command resumes from the work directory.")


if __name__ == "__main__":
    sys.exit(main())
