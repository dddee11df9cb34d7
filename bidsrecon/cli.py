"""The BIDS-App command line: ``bidsrecon bids_dir output_dir {participant,group} [options]``."""
import argparse
import errno
import logging
import math
import os
import sys
from pathlib import Path

from bidsrecon import __version__
from bidsrecon.config import Config
from bidsrecon.errors import (
    EXIT_BAD_ARGUMENTS, EXIT_CANNOT_WRITE, EXIT_INPUT_MISSING, EXIT_UNKNOWN_LEVEL, BidsReconError,
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


def _positive_int(value):
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return number


def _non_negative_float(value):
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return number


def build_parser():
    parser = _Parser(
        prog="bidsrecon",
        description="Reconstruct the images a participant saw or imagined from their fMRI "
        "(deep image reconstruction, Shen et al. 2019).",
    )
    parser.add_argument("bids_dir", type=Path, help="root folder of the input BIDS dataset")
    parser.add_argument("output_dir", type=Path, help="folder of the output derivative dataset")
    parser.add_argument("analysis_level", help="'participant' (decode and reconstruct) or 'group' (aggregate)")
    parser.add_argument("--version", action="version", version=f"bidsrecon {__version__}")

    select = parser.add_argument_group("what to process")
    select.add_argument("--participant-label", "--participant_label", dest="participant_labels", nargs="+",
                        default=[], metavar="LABEL", help="subjects to process, with or without 'sub-' (default: all)")
    select.add_argument("--task-label", "--task_label", dest="task_labels", nargs="+", default=[], metavar="TASK",
                        help="tasks to use (default: every task the specification names)")
    select.add_argument("--session-label", "--session_label", dest="session_labels", nargs="+", default=[],
                        metavar="SESSION", help="sessions to use, with or without 'ses-' (default: all)")
    select.add_argument("--bids-filter-file", "--bids_filter_file", type=Path, default=None, metavar="FILE",
                        help="JSON of pybids filters in fMRIPrep's format; its 'bold' query selects the runs")
    select.add_argument("--spec", default="ds001506", metavar="NAME|FILE",
                        help="decoding specification: which runs and trials train the decoder and which are test "
                        f"sets; a built-in name ({', '.join(builtin_spec_names())}) or a JSON file (default: ds001506)")
    select.add_argument("--cut-runs", action="store_true",
                        help="drop trials whose window runs past the end of their run instead of stopping")
    select.add_argument("--stimuli-dir", dest="stimuli_dirs", type=Path, nargs="+", default=[], metavar="DIR",
                        help="folders holding <stimulus_name>.png|jpg (default: the dataset's stimuli/)")
    select.add_argument("--skip-bids-validation", "--skip_bids_validation", "--skip_bids_validator",
                        dest="skip_bids_validation", action="store_true", help="do not validate bids_dir first")

    inputs = parser.add_argument_group("preprocessing")
    inputs.add_argument("--derivatives", nargs="+", default=[], metavar="[NAME=]PATH",
                        help="fMRIPrep derivatives to take the preprocessed bold, brain mask and confounds from "
                        "(default: preprocess the raw data: motion correction, mask from the data)")
    inputs.add_argument("--space", default="T1w", help="fMRIPrep output space, e.g. T1w (default) or "
                        "MNI152NLin2009cAsym:res-2")
    inputs.add_argument("--confounds", nargs="*", default=None, metavar="COLUMN",
                        help="fMRIPrep confounds to regress out: names or globs such as 'cosine*', 'a_comp_cor_*' "
                        "(default: the six motion parameters; give the option with no value for none)")
    inputs.add_argument("--slice-timing", action="store_true",
                        help="correct slice timing from the SliceTiming metadata (raw input)")
    inputs.add_argument("--roi", dest="rois", nargs="+", default=[], metavar="NAME[=PATH]",
                        help="regions of interest joined into the voxel mask: NIfTI files as NAME=PATH, or ds001506's "
                        "sourcedata masks by name (V1, V2, V3, hV4, LOC, FFA, PPA, HVC, VC...)")
    inputs.add_argument("--n-voxels", type=_positive_int, default=None, metavar="K",
                        help="keep the K voxels most reliably driven by the training images (training data only)")
    inputs.add_argument("--samples", choices=("block", "lss"), default="block",
                        help="one sample per block (the paper's, default) or a beta per trial (least-squares separate)")
    inputs.add_argument("--hrf-delay", dest="delay_seconds", type=float, default=4.0, metavar="SECONDS",
                        help="haemodynamic delay of the block samples (default: 4 s, the paper's)")
    inputs.add_argument("--discard-seconds", type=float, default=8.0, metavar="SECONDS",
                        help="seconds at the start of each run left out (default: 8 s, the paper's)")
    inputs.add_argument("--normalise", "--normalize", dest="normalise", choices=("rest", "zscore"), default=None,
                        help="rest: each voxel in percent signal change from the run's rest (the events the "
                        "specification's 'baseline' names; ds001506: the opening 32-s rest), outliers clipped "
                        "at 3 SD in 10 passes (the paper's); zscore: each voxel z-scored over the whole run, "
                        "which shifts runs with another share of stimulation (ds001506's letter runs) "
                        "(default: rest when the specification names the rest, else zscore)")

    method = parser.add_argument_group("decoding and reconstruction")
    method.add_argument("--encoder", default="efficientnet-lite0",
                        help="network whose features are decoded and inverted (default: efficientnet-lite0; "
                        "also vgg19, vgg19-caffe; *-random variants are for tests only)")
    method.add_argument("--encoder-weights", type=Path, default=None, metavar="FILE",
                        help="weights file of the encoder (state dict; loaded without executing code)")
    # No default here, so that --decoders-dir can refuse an explicit --decoder (config default: kernel).
    method.add_argument("--decoder", choices=("kernel", "fastl2lir"), default=None,
                        help="kernel: kernel ridge with one penalty per layer, every unit streamed (default); "
                        "fastl2lir: the Kamitani lab's ridge per unit on its 500 best voxels (alpha 100), "
                        "slow: for layer subsets and comparison")
    method.add_argument("--decoders-dir", type=Path, default=None, metavar="DIR",
                        help="apply the decoders saved in DIR, a previous bidsrecon output dataset "
                        "(sub-<label>/decoder/), instead of fitting them: no training runs are needed or read, "
                        "the samples are taken in the saved voxel mask and raw runs are realigned to the saved "
                        "reference volume; --encoder, --encoder-weights, --image-size and --layers must match "
                        "the saved decoder (--n-voxels, --roi and --decoder are refused)")
    method.add_argument("--layers", nargs="+", default=[], metavar="LAYER",
                        help="encoder layers to decode and invert (default: the encoder's default set)")
    method.add_argument("--image-size", type=_positive_int, default=64, help="reconstruction size in pixels (default: 64)")
    method.add_argument("--iterations", type=_positive_int, default=200,
                        help="iterations of the reconstruction's optimiser (default: 200, the paper's)")
    method.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    method.add_argument("--save-decoded-features", action="store_true",
                        help="also write the decoded features of every test item (HDF5, one dataset per layer)")

    recon = parser.add_argument_group("reconstruction")
    recon.add_argument("--optimiser", "--optimizer", dest="optimiser", choices=("lbfgs", "gd", "generator"),
                       default="lbfgs", help="lbfgs: L-BFGS over pixels, no prior (the paper's default); gd: "
                       "momentum gradient descent over pixels with decay and blur; generator: momentum descent "
                       "over a DGN generator's latent (needs --generator-weights)")
    recon.add_argument("--generator-weights", type=Path, default=None, metavar="FILE",
                       help="the DGN generator's weights (the lab's PyTorch fc7 generator, a state dict)")
    recon.add_argument("--generator-latent-max", default=None, metavar="VALUE|FILE",
                       help="upper bound of the generator's latent: a number, or a text file of 4096 values "
                       "(the lab uses 3 SD of AlexNet fc7 activations); default: no upper bound")
    recon.add_argument("--feature-correction", choices=("spread", "none", "lab2019", "cookbook", "cookbook-trainmean"),
                       default="spread", help="correction of the decoded features before inversion: spread (rescale "
                       "around the training mean to the training spread; default, chosen by bench/validity.py), "
                       "lab2019 (each item to the training images' feature SD, the 2019 scripts), cookbook and "
                       "cookbook-trainmean (bdpy's normalize_feature as the brain-decoding cookbook calls it), none")
    recon.add_argument("--pixel-weight", type=_non_negative_float, default=100.0, metavar="WEIGHT",
                       help="weight of the decoded small image (the 'pixels' pseudo-layer) in the loss, against "
                       "1 for one network layer; 0 leaves it out (default: 100, chosen by "
                       "bench/validity.py; lbfgs and gd)")
    recon.add_argument("--tv-weight", type=_non_negative_float, default=3.0, metavar="WEIGHT",
                       help="weight of a total-variation term (squared differences of neighbouring pixels), in the "
                       "pixel term's units (default: 3, chosen by bench/validity.py)")
    recon.add_argument("--coarse-factor", type=_positive_int, default=2, metavar="N",
                       help="lbfgs only: optimise an image N times smaller than --image-size, upsampled "
                       "(bilinear) before the encoder; 1 optimises every pixel, the paper's (default: 2, chosen by "
                       "bench/validity.py)")
    recon.add_argument("--start", choices=("pixels", "flat", "noise"), default="pixels",
                       help="start image of lbfgs and gd: the decoded small image (default), the paper's "
                       "flat image of the mean colour, or uniform noise (icnn's default)")
    recon.add_argument("--no-clamp", dest="clamp", action="store_false",
                       help="gd only: let pixels leave [0, 1] during the descent, as the lab's icnn does (the "
                       "saved image is clipped)")
    recon.add_argument("--jitter", type=int, default=0, metavar="PIXELS",
                       help="gd only: largest random image shift per iteration, in pixels at 224 px (default: 0)")
    recon.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                       help="where the encoder runs, for decoding and reconstruction (default: auto, a GPU when there is one)")
    recon.add_argument("--mixed-precision", action="store_true",
                       help="run the networks in bfloat16 on CUDA (faster; the loss stays float32)")
    recon.add_argument("--batch-size", type=_positive_int, default=8,
                       help="items reconstructed together (default: 8; results do not depend on it)")
    recon.add_argument("--snapshot-every", type=_positive_int, default=None, metavar="N",
                       help="also save every item's image every N iterations (sub-XX/recon/snapshots/)")

    perf = parser.add_argument_group("resources")
    perf.add_argument("-w", "--work-dir", type=Path, default=None,
                      help="working directory for intermediate results; reused to resume "
                      "(default: bidsrecon-work-<uid> in the system temporary folder, made private to you; any work dir must "
                      "be yours and not writable by others, since Nipype runs the results it caches there)")
    perf.add_argument("--nprocs", "--n_cpus", "--n-cpus", type=_positive_int, default=None,
                      help="CPUs to use in all (default: all available)")
    perf.add_argument("--omp-nthreads", "--omp_nthreads", type=_positive_int, default=None,
                      help="threads of one step (encoder, linear algebra) (default: --nprocs)")
    perf.add_argument("--mem", "--mem-gb", "--mem_gb", dest="mem_gb", type=float, default=None, metavar="GB",
                      help="memory limit in GB (10^9 bytes): the decoding splits its work to stay under it and "
                      "Nipype schedules steps within it (default: no limit)")
    perf.add_argument("--use-plugin", "--use_plugin", dest="plugin_file", type=Path, default=None, metavar="FILE",
                      help="YAML or JSON Nipype plugin settings, as fMRIPrep's: 'plugin: SLURM' (or SGE, PBS, "
                      "MultiProc, Linear) and 'plugin_args: {...}' (default: MultiProc over --nprocs CPUs)")
    perf.add_argument("--stop-on-first-crash", action="store_true",
                      help="stop at the first failing step instead of running every step that does not depend on it")
    perf.add_argument("--resource-monitor", action="store_true",
                      help="record each step's time, CPU and peak memory (sub-XX/log/sub-XX_desc-resources_log.jsonl)")
    perf.add_argument("--feature-cache", choices=("off", "float32", "float16"), default="off",
                      help="keep the encoder's features of the stimuli in <work dir>/feature_cache, keyed by "
                      "encoder, weights, image content, size and layer, so later runs and other subjects with "
                      "the same stimuli reuse them (float16 halves the disk; default: off)")
    perf.add_argument("--verbose", "-v", action="count", default=0, help="more log output (repeat for more)")
    return parser


def _check_folders(args, work_dir):
    """Inputs, output and work dir apart, and the output writable, before any input is read."""
    from bidsrecon.bids.fmriprep import parse_derivatives

    inputs = [("the input dataset", args.bids_dir),
              *((f"--derivatives {dataset.name}", dataset.root) for dataset in parse_derivatives(args.derivatives)),
              *(("--stimuli-dir", folder) for folder in args.stimuli_dirs),
              *((("--decoders-dir", args.decoders_dir),) if args.decoders_dir else ())]
    check_disjoint([("the output_dir", args.output_dir), ("the work directory (-w)", work_dir)], inputs)
    check_writable(args.output_dir, "the output_dir")
    check_writable(work_dir, "the work directory (-w)")


def _resolved_if_file(value):
    # The workflow runs inside the work directory: a relative file name must not change meaning.
    return str(Path(value).resolve()) if value is not None and Path(value).is_file() else value


def _check_decoders_dir(args):
    """``--decoders-dir`` must be a folder, and excludes the options that only shape a fit.

    They are refused rather than ignored: a user who asks for 500 voxels or V1 only would
    otherwise get the saved decoder's voxels without noticing.
    """
    if args.decoders_dir is None:
        return
    if not args.decoders_dir.is_dir():
        raise BidsReconError(f"--decoders-dir {args.decoders_dir}: no such folder; give the output folder of an "
                             "earlier 'bidsrecon ... participant' run (it holds sub-<label>/decoder/)",
                             EXIT_INPUT_MISSING)
    fitting = [option for option, given in (("--n-voxels", args.n_voxels is not None), ("--roi", bool(args.rois)),
                                            ("--decoder", args.decoder is not None)) if given]
    if fitting:
        raise BidsReconError(f"--decoders-dir applies saved decoders, whose voxels and type were fixed when they "
                             f"were fitted; drop {', '.join(fitting)} (or drop --decoders-dir to fit a new decoder)",
                             EXIT_BAD_ARGUMENTS)


def parse_args(argv=None):
    """Parse and check the command line; returns a `Config`."""
    args = build_parser().parse_args(argv)
    if args.analysis_level not in ANALYSIS_LEVELS:
        raise BidsReconError(
            f"unknown analysis level '{args.analysis_level}'; choose one of: {', '.join(ANALYSIS_LEVELS)}",
            EXIT_UNKNOWN_LEVEL,
        )
    if (args.optimiser == "generator") != (args.generator_weights is not None):
        raise BidsReconError("--optimiser generator needs --generator-weights FILE, and only it takes "
                             "one", EXIT_BAD_ARGUMENTS)
    if args.mem_gb is not None and args.mem_gb <= 0:
        raise BidsReconError(f"--mem must be a positive number of GB, got {args.mem_gb:g}", EXIT_BAD_ARGUMENTS)
    if args.jitter < 0:
        raise BidsReconError(f"--jitter must be 0 or more pixels, got {args.jitter}", EXIT_BAD_ARGUMENTS)
    _check_decoders_dir(args)
    work_dir = args.work_dir or default_work_dir()
    nprocs = args.nprocs or len(os.sched_getaffinity(0))
    _check_folders(args, work_dir)
    return Config(
        bids_dir=args.bids_dir.resolve(),
        output_dir=args.output_dir.resolve(),
        analysis_level=args.analysis_level,
        work_dir=work_dir.resolve(),
        participant_labels=tuple(args.participant_labels),
        task_labels=tuple(args.task_labels),
        stimuli_dirs=tuple(p.resolve() for p in args.stimuli_dirs),
        nprocs=nprocs,
        omp_nthreads=min(args.omp_nthreads or nprocs, nprocs),
        plugin=read_plugin_settings(args.plugin_file, nprocs, args.mem_gb),
        stop_on_first_crash=args.stop_on_first_crash,
        resource_monitor=args.resource_monitor,
        command=tuple(sys.argv[:1] + list(argv if argv is not None else sys.argv[1:])),
        skip_bids_validation=args.skip_bids_validation,
        verbose=args.verbose,
        seed=args.seed,
        spec=_resolved_if_file(args.spec),
        session_labels=tuple(args.session_labels),
        bids_filter_file=args.bids_filter_file.resolve() if args.bids_filter_file else None,
        cut_runs=args.cut_runs,
        derivatives=tuple(args.derivatives),
        space=args.space,
        confounds=tuple(args.confounds) if args.confounds is not None else None,
        slice_timing=args.slice_timing,
        rois=tuple(args.rois),
        n_voxels=args.n_voxels,
        samples=args.samples,
        delay_seconds=args.delay_seconds,
        discard_seconds=args.discard_seconds,
        normalise=args.normalise,
        encoder=args.encoder,
        encoder_weights=args.encoder_weights.resolve() if args.encoder_weights else None,
        layers=tuple(args.layers),
        image_size=args.image_size,
        iterations=args.iterations,
        save_decoded_features=args.save_decoded_features,
        decoder=args.decoder or "kernel",
        decoders_dir=args.decoders_dir.resolve() if args.decoders_dir else None,
        optimiser=args.optimiser,
        generator_weights=args.generator_weights.resolve() if args.generator_weights else None,
        generator_latent_max=_resolved_if_file(args.generator_latent_max),
        jitter=args.jitter,
        pixel_weight=args.pixel_weight,
        tv_weight=args.tv_weight,
        coarse_factor=args.coarse_factor,
        feature_correction=args.feature_correction,
        start=args.start,
        clamp=args.clamp,
        device=args.device,
        mixed_precision=args.mixed_precision,
        batch_size=args.batch_size,
        snapshot_every=args.snapshot_every or 0,
        mem_gb=args.mem_gb,
        feature_cache=args.feature_cache,
    )


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
    # Nipype has its own handler; without this every message is printed twice.
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        logging.getLogger(name).propagate = False


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
                from bidsrecon.participant import run_participant_level

                run_participant_level(config)
            else:
                from bidsrecon.group import run_group_level

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
