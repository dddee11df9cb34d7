"""All settings of one run of the app, in one frozen object, each defined once.

fMRIPrep's lesson: no globals, no settings threaded one by one through every factory. Each
setting the user can give is a field of `Config` whose ``option(...)`` holds all there is to
know about it: its default, its command-line flags (with fMRIPrep's and the BIDS-App spellings),
its help and how argparse reads it. `bidsrecon.cli.build_parser` makes the parser from these
fields and `bidsrecon.cli.parse_args` the `Config` from the parsed values, so adding an option is
one new field here (plus the code that uses it). Fields without flags are set by the CLI from
others (``plugin``, ``command``) or are fixed settings of the method (``clip_sd``, ``cv_units``).
"""
import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path

from bidsrecon.paper import CLIP_SD, DELAY_SECONDS, DISCARD_SECONDS

#: ``--save-decoded-features``: our HDF5 file, or the Kamitani lab's layout (bdpy's DecodedFeatures).
DECODED_FEATURES_FORMATS = ("h5", "bdpy")

# Argument groups of ``--help``, in the order they are shown.
POSITIONAL = "positional arguments"
SELECT = "what to process"
PREPROCESSING = "preprocessing"
DECODING = "decoding and reconstruction"
RECONSTRUCTION = "reconstruction"
RESOURCES = "resources"
WORKFLOW = "workflow control"


def positive_int(value):
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return number


def non_negative_float(value):
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return number


def positive_float(value):
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return number


#: fMRIPrep's memory units (its ``--mem``), in GB; a number without a unit is in MB.
MEMORY_UNITS = {"K": 1e-6, "M": 1e-3, "G": 1.0, "T": 1e3}


def memory_size(value):
    """A memory size the way fMRIPrep's ``--mem`` reads it, in GB: ``16000`` and ``16000M`` are
    16 GB, as are ``16G`` and ``16GB``; ``K``, ``M``, ``G``, ``T``, case-insensitive."""
    text = str(value).strip().upper().removesuffix("B")
    unit = text[-1:] if text[-1:] in MEMORY_UNITS else "M"
    number = text[:-1] if text[-1:] in MEMORY_UNITS else text
    try:
        size = float(number) * MEMORY_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 16000 (MB), 16000M or 16G, got {value}") from None
    if not (math.isfinite(size) and size > 0):
        raise argparse.ArgumentTypeError(f"expected a size > 0, got {value}")
    return size


def option(default, *flags, group, help, parser_default=..., **argparse_settings):
    """A `Config` field that the command line sets.

    Parameters
    ----------
    default
        The field's default, also the option's unless ``parser_default`` is given.
    *flags : str
        The option's spellings; none for a positional argument.
    group : str
        Its section of ``--help``.
    help : str
        Its help text.
    parser_default : optional
        What argparse gives when the option is absent, where that must differ from the field's
        default (to tell "not given" from "given the default").
    **argparse_settings
        ``type``, ``nargs``, ``choices``, ``metavar``, ``action``, as argparse takes them.
    """
    metadata = {"flags": flags, "group": group, "help": help, "argparse": argparse_settings,
                "parser_default": default if parser_default is ... else parser_default}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Config:
    # --- positional arguments ---
    bids_dir: Path = option(None, group=POSITIONAL,
                type=Path,
                help="root folder of the input BIDS dataset")
    output_dir: Path = option(None, group=POSITIONAL,
                type=Path,
                help="folder of the output derivative dataset")
    analysis_level: str = option(None, group=POSITIONAL,
                help="'participant' (decode and reconstruct) or 'group' (aggregate)")
    # --- what to process ---
    participant_labels: tuple = option((), '--participant-label', '--participant_label', group=SELECT,
                nargs='+', metavar='LABEL',
                help="subjects to process, with or without 'sub-' (default: all)")
    task_labels: tuple = option((), '--task-label', '--task_label', group=SELECT,
                nargs='+', metavar='TASK',
                help="tasks to use (default: every task the specification names)")
    session_labels: tuple = option((), '--session-label', '--session_label', group=SELECT,
                nargs='+', metavar='SESSION',
                help="sessions to use, with or without 'ses-' (default: all)")
    bids_filter_file: Path = option(None, '--bids-filter-file', '--bids_filter_file', group=SELECT,
                type=Path, metavar='FILE',
                help="JSON of pybids filters in fMRIPrep's format; its 'bold' query selects the runs")
    spec: str = option('ds001506', '--spec', group=SELECT,
                metavar='NAME|FILE',
                help="decoding specification: which runs and trials train the decoder and which are test sets; a "
                "built-in name ({builtin_specs}) or a JSON file (default: ds001506)")
    cut_runs: bool = option(False, '--cut-runs', group=SELECT,
                action="store_true",
                help="drop trials whose window runs past the end of their run instead of stopping")
    stimuli_dirs: tuple = option((), '--stimuli-dir', group=SELECT,
                type=Path, nargs='+', metavar='DIR',
                help="folders holding <stimulus_name>.png|jpg (default: the dataset's stimuli/)")
    skip_bids_validation: bool = option(False, '--skip-bids-validation', '--skip_bids_validation', '--skip_bids_validator', group=SELECT,
                action="store_true",
                help="do not validate bids_dir first")
    # --- preprocessing ---
    derivatives: tuple = option((), '-d', '--derivatives', group=PREPROCESSING,
                nargs='+', metavar='[NAME=]PATH',
                help="fMRIPrep derivatives to take the preprocessed bold, brain mask and confounds from (default: "
                "preprocess the raw data: motion correction, mask from the data)")
    bdata_dir: Path = option(None, '--bdata-dir', group=PREPROCESSING,
                type=Path, metavar='DIR',
                help="take the samples from the Kamitani lab's preprocessed BData files in DIR "
                "(sub-<label>_<session without its number>_*.h5, e.g. sub-01_perceptionNaturalImageTraining_original_VC.h5, "
                "one per stimulus set) instead of preprocessing runs: bids_dir is read only for its stimuli/ (or "
                "--stimuli-dir), never indexed or validated")
    bdata_roi: str = option('ROI_VC', '--bdata-roi', group=PREPROCESSING,
                metavar='KEY',
                help="with --bdata-dir: the files' metadata key of the voxels to decode from (default: ROI_VC; "
                "e.g. ROI_V1, ROI_HVC); with --decoders-dir, the key without ROI_ names the ROI folder of the lab's "
                "decoders (VC)")
    space: str = option('T1w', '--space', group=PREPROCESSING,
                help="fMRIPrep output space, e.g. T1w (default), MNI152NLin2009cAsym:res-2 or "
                "MNIPediatricAsym:cohort-1:res-2")
    confounds: tuple = option(None, '--confounds', group=PREPROCESSING,
                nargs='*', metavar='COLUMN',
                help="fMRIPrep confounds to regress out: names or globs such as 'cosine*', 'a_comp_cor_*' (default: "
                "the six motion parameters; give the option with no value for none)")
    confounds_strategy: str = option(None, '--confounds-strategy', group=PREPROCESSING,
                choices=('simple', 'scrubbing', 'compcor'),
                help="with --derivatives, instead of --confounds: regress out the columns that nilearn's "
                "load_confounds_strategy selects for this denoising strategy (its defaults); trials whose window holds a "
                "volume it censors (non-steady-state; scrubbing: high motion) are dropped with a warning")
    slice_timing: bool = option(False, '--slice-timing', group=PREPROCESSING,
                action="store_true",
                help="correct slice timing from the SliceTiming metadata (raw input)")
    rois: tuple = option((), '--roi', group=PREPROCESSING,
                nargs='+', metavar='NAME[=PATH]',
                help="regions of interest joined into the voxel mask: NIfTI files as NAME=PATH, or ds001506's "
                "sourcedata masks by name (V1, V2, V3, hV4, LOC, FFA, PPA, HVC, VC...)")
    n_voxels: int = option(None, '--n-voxels', group=PREPROCESSING,
                type=positive_int, metavar='K',
                help="keep the K voxels most reliably driven by the training images (training data only)")
    samples: str = option('block', '--samples', group=PREPROCESSING,
                choices=('block', 'lss'),
                help="one sample per block (the paper's, default) or a beta per trial (least-squares separate)")
    delay_seconds: float = option(DELAY_SECONDS, '--hrf-delay', group=PREPROCESSING,
                type=float, metavar='SECONDS',
                help="haemodynamic delay of the block samples (default: 4 s, the paper's)")
    discard_seconds: float = option(DISCARD_SECONDS, '--discard-seconds', group=PREPROCESSING,
                type=float, metavar='SECONDS',
                help="seconds at the start of each run left out (default: 8 s, the paper's)")
    normalise: str = option(None, '--normalise', '--normalize', group=PREPROCESSING,
                choices=('rest', 'zscore'),
                help="rest: each voxel in percent signal change from the run's rest (the events the specification's "
                "'baseline' names; ds001506: the opening 32-s rest and the rests between letter blocks), outliers clipped at 3 SD in 10 passes (the "
                "paper's); zscore: each voxel z-scored over the whole run, which shifts runs with another share "
                "of stimulation (ds001506's letter runs) (default: rest when the specification names the rest, "
                "else zscore)")
    # --- decoding and reconstruction ---
    encoder: str = option('efficientnet-lite0', '--encoder', group=DECODING,
                help="network whose features are decoded and inverted (default: efficientnet-lite0; also vgg19, "
                "vgg19-caffe; *-random variants are for tests only)")
    encoder_weights: Path = option(None, '--encoder-weights', group=DECODING,
                type=Path, metavar='FILE',
                help="weights file of the encoder (state dict; loaded without executing code)")
    features_dir: Path = option(None, '--features-dir', group=DECODING,
                type=Path, metavar='DIR',
                help="train the decoder on precomputed features of the training images instead of the encoder's: DIR "
                "in the Kamitani lab's layout (bdpy's Features: DIR/<layer>/<stimulus name>.mat, variable 'feat' of "
                "shape (1, *layer shape)), each layer's shape the encoder's at --image-size (the lab's VGG19 "
                "features: --encoder vgg19-caffe --image-size 224); checked before any processing")
    # None on the command line, so that --decoders-dir can refuse a --decoder given explicitly.
    decoder: str = option('kernel', '--decoder', group=DECODING, parser_default=None,
                choices=('kernel', 'fastl2lir'),
                help="kernel: kernel ridge with one penalty per layer, every unit streamed (default); fastl2lir: the "
                "Kamitani lab's ridge per unit on its 500 best voxels (alpha 100), slow: for layer subsets and "
                "comparison")
    decoders_dir: Path = option(None, '--decoders-dir', group=DECODING,
                type=Path, metavar='DIR',
                help="apply the decoders saved in DIR, a previous bidsrecon output dataset (sub-<label>/decoder/; "
                "kernel ridge, or per-unit read from their fastl2lir/ folders, which refuse --feature-correction "
                "lab2019 and cookbook*), instead of fitting them: no training runs are needed or read, the samples are taken in the saved "
                "voxel mask and raw runs are realigned to the saved reference volume; --encoder, "
                "--encoder-weights, --image-size and --layers must match the saved decoder (--n-voxels, --roi and --decoder "
                "are refused). With --bdata-dir: DIR is the Kamitani lab's trained FastL2LiR decoders of one network, "
                "as the brain-decoding cookbook writes them (DIR/<layer>/sub-<label>/<roi>/model/, the ROI folder "
                "--bdata-roi without ROI_, e.g. VC), applied to the BData samples; the lab's VGG19 decoders need "
                "--encoder vgg19-caffe --image-size 224")
    layers: tuple = option((), '--layers', group=DECODING,
                nargs='+', metavar='LAYER',
                help="encoder layers to decode and invert (default: the encoder's default set)")
    image_size: int = option(64, '--image-size', group=DECODING,
                type=positive_int,
                help="reconstruction size in pixels (default: 64)")
    penalty_image_size: int = option(None, '--penalty-image-size', group=DECODING,
                type=positive_int, metavar='PX',
                help="run the kernel decoder's penalty pass (the cross-validation's sampled units) on the training "
                "images resized to PX pixels, smaller than --image-size: 112 at 224 makes that pass a quarter of "
                "one; one of the two passes over the training images (default: --image-size; see the README's "
                "'Decoding at scale')")
    pixel_decoder: str = option('prf', '--pixel-decoder', group=DECODING, parser_default=None,
                choices=('prf', 'ridge', 'inversion', 'both'),
                help="how the kernel decoder decodes the small image (the reconstruction's start and pixel term): "
                "prf, the whole small image by inverting each voxel's population receptive field and contrast "
                "energy model fitted on the training images (default; the ridge's where no voxel's model beats "
                "chance); ridge, as every layer; inversion, its luminance by inverting a voxel encoding model "
                "fitted on the training images; both, the mean of the two (measured in the repository's docs/validity.md)")
    iterations: int = option(200, '--iterations', group=DECODING,
                type=positive_int,
                help="iterations of the reconstruction's optimiser (default: 200, the paper's)")
    seed: int = option(0, '--seed', group=DECODING,
                type=int,
                help="random seed (default: 0)")
    save_decoded_features: str = option(None, '--save-decoded-features', group=DECODING,
                nargs='?', const='h5', choices=DECODED_FEATURES_FORMATS,
                help="also write the decoded features of every test item: h5 (the default when the option has no "
                "value): one HDF5 file, a dataset per layer, the pixels pseudo-layer and the items' table; bdpy: "
                "instead, the Kamitani lab's layout, one MATLAB file per item and layer that bdpy's "
                "DecodedFeatures reads, a root per test set (decoder/bdpy/<set>/<layer>/sub-<label>/<roi>/"
                "<stimulus>.mat; no pixels pseudo-layer)")
    # --- reconstruction ---
    optimiser: str = option('lbfgs', '--optimiser', '--optimizer', group=RECONSTRUCTION,
                choices=('lbfgs', 'gd', 'generator'),
                help="lbfgs: L-BFGS over pixels, no prior (the paper's default); gd: momentum gradient descent over "
                "pixels with decay and blur; generator: momentum descent over a DGN generator's latent (needs "
                "--generator-weights)")
    generator_weights: Path = option(None, '--generator-weights', group=RECONSTRUCTION,
                type=Path, metavar='FILE',
                help="the DGN generator's weights (the lab's PyTorch fc7 generator, a state dict)")
    generator_latent_max: str = option(None, '--generator-latent-max', group=RECONSTRUCTION,
                metavar='VALUE|FILE',
                help="upper bound of the generator's latent: a number, or a text file of 4096 values (the lab uses 3 "
                "SD of AlexNet fc7 activations); default: no upper bound")
    feature_correction: str = option('spread', '--feature-correction', group=RECONSTRUCTION,
                choices=('spread', 'none', 'lab2019', 'cookbook', 'cookbook-trainmean'),
                help="correction of the decoded features before inversion: spread (rescale around the training mean to "
                "the training spread; default, chosen by bench/validity.py), lab2019 (each item to the training "
                "images' feature SD, the 2019 scripts), cookbook and cookbook-trainmean (bdpy's normalize_feature "
                "as the brain-decoding cookbook calls it), none")
    pixel_weight: float = option(100.0, '--pixel-weight', group=RECONSTRUCTION,
                type=non_negative_float, metavar='WEIGHT',
                help="weight of the decoded small image (the 'pixels' pseudo-layer) in the loss, against 1 for one "
                "network layer; 0 leaves it out (default: 100, chosen by bench/validity.py; lbfgs and gd)")
    tv_weight: float = option(3.0, '--tv-weight', group=RECONSTRUCTION,
                type=non_negative_float, metavar='WEIGHT',
                help="weight of a total-variation term (squared differences of neighbouring pixels), in the pixel "
                "term's units (default: 3, chosen by bench/validity.py)")
    coarse_factor: int = option(2, '--coarse-factor', group=RECONSTRUCTION,
                type=positive_int, metavar='N',
                help="lbfgs only: optimise an image N times smaller than --image-size, upsampled (bilinear) before the "
                "encoder; 1 optimises every pixel, the paper's (default: 2, chosen by bench/validity.py)")
    start: str = option('pixels', '--start', group=RECONSTRUCTION,
                choices=('pixels', 'flat', 'noise'),
                help="start image of lbfgs and gd: the decoded small image (default), the paper's flat image of the "
                "mean colour, or uniform noise (icnn's default)")
    clamp: bool = option(True, '--no-clamp', group=RECONSTRUCTION,
                action="store_false",
                help="gd only: let pixels leave [0, 1] during the descent, as the lab's icnn does (the saved image is "
                "clipped)")
    jitter: int = option(0, '--jitter', group=RECONSTRUCTION,
                type=int, metavar='PIXELS',
                help="gd only: largest random image shift per iteration, in pixels at 224 px (default: 0)")
    device: str = option('auto', '--device', group=RECONSTRUCTION,
                choices=('auto', 'cpu', 'cuda', 'mps'),
                help="where the encoder runs, for decoding and reconstruction (default: auto, a GPU when there is one)")
    mixed_precision: bool = option(False, '--mixed-precision', group=RECONSTRUCTION,
                action="store_true",
                help="run the networks in bfloat16 on CUDA (faster; the loss stays float32)")
    batch_size: int = option(8, '--batch-size', group=RECONSTRUCTION,
                type=positive_int,
                help="items reconstructed together (default: 8; results do not depend on it)")
    snapshot_every: int = option(0, '--snapshot-every', group=RECONSTRUCTION,
                type=positive_int, metavar='N',
                help="also save every item's image every N iterations (sub-XX/recon/snapshots/)")
    # --- resources ---
    work_dir: Path = option(None, '-w', '--work-dir', group=RESOURCES,
                type=Path,
                help="working directory for intermediate results; reused to resume (default: bidsrecon-work-<uid> in "
                "the system temporary folder, made private to you; any work dir must be yours and not writable by "
                "others, since Nipype runs the results it caches there)")
    nprocs: int = option(None, '--nprocs', '--nthreads', '--n_cpus', '--n-cpus', group=RESOURCES,
                type=positive_int,
                help="CPUs to use in all (default: all available)")
    omp_nthreads: int = option(None, '--omp-nthreads', '--omp_nthreads', group=RESOURCES,
                type=positive_int,
                help="threads of one step (encoder, linear algebra) (default: --nprocs)")
    mem_gb: float = option(None, '--mem', '--mem-mb', '--mem_mb', group=RESOURCES,
                type=memory_size, metavar='SIZE',
                help="memory limit, in fMRIPrep's units: a number of MB (16000), or with a unit (16000M, 16G, 1T); "
                "the decoding splits its work to stay under it and Nipype schedules steps within it (default: no "
                "limit)")
    mem_gb_option: float = option(None, '--mem-gb', '--mem_gb', group=RESOURCES,
                type=positive_float, metavar='GB',
                help="the same limit in GB (10^9 bytes); give --mem or --mem-gb, not both")
    plugin_file: Path = option(None, '--use-plugin', '--use_plugin', group=RESOURCES,
                type=Path, metavar='FILE',
                help="YAML or JSON Nipype plugin settings, as fMRIPrep's: 'plugin: SLURM' (or SGE, PBS, MultiProc, "
                "Linear) and 'plugin_args: {...}' (default: MultiProc over --nprocs CPUs)")
    stop_on_first_crash: bool = option(False, '--stop-on-first-crash', group=RESOURCES,
                action="store_true",
                help="stop at the first failing step instead of running every step that does not depend on it")
    resource_monitor: bool = option(False, '--resource-monitor', group=RESOURCES,
                action="store_true",
                help="record each step's time, CPU and peak memory (sub-XX/log/sub-XX_desc-resources_log.jsonl)")
    feature_cache: str = option('off', '--feature-cache', group=RESOURCES,
                choices=('off', 'float32', 'float16'),
                help="keep the encoder's features of the stimuli in <work dir>/feature_cache, keyed by encoder, "
                "weights, image content, size and layer, so later runs and other subjects with the same stimuli "
                "reuse them (float16 halves the disk; default: off)")
    notrack: bool = option(False, '--notrack', group=RESOURCES,
                action="store_true",
                help="accepted for fMRIPrep's wrapper scripts; bidsrecon sends nothing anywhere, with or without it")
    verbose: int = option(0, '--verbose', '-v', group=RESOURCES,
                action="count",
                help="more log output (repeat for more)")
    # --- workflow control (fMRIPrep's spellings) ---
    config_file: Path = option(None, '--config-file', '--config_file', group=WORKFLOW,
                type=Path, metavar='FILE',
                help="read options from a TOML file (keys are the long options without dashes, e.g. image-size = "
                "64); the command line wins; every run writes its own as sub-XX/log/sub-XX_desc-settings_log.toml")
    bids_database_dir: Path = option(None, '--bids-database-dir', '--bids_database_dir', group=WORKFLOW,
                type=Path, metavar='DIR',
                help="keep pybids' index of bids_dir in DIR and reuse it on later runs (indexing a large dataset "
                "takes minutes); give a new DIR after the dataset changes")
    clean_workdir: bool = option(False, '--clean-workdir', '--clean_workdir', group=WORKFLOW,
                action="store_true",
                help="first remove the selected participants' intermediate results from the work directory (the "
                "feature cache and other participants' results stay)")
    reports_only: bool = option(False, '--reports-only', '--reports_only', group=WORKFLOW,
                action="store_true",
                help="only write the reports again, from the outputs of an earlier run (participant level)")
    boilerplate_only: bool = option(False, '--boilerplate-only', '--boilerplate_only', group=WORKFLOW,
                action="store_true",
                help="only write the methods boilerplate (logs/CITATION.md in the output, also in every report) and "
                "stop")
    dry_run: bool = option(False, '--dry-run', '--dry_run', group=WORKFLOW,
                action="store_true",
                help="check every input and print what would be done (runs per set, trials, items, outputs), then "
                "stop without writing any output")
    write_graph: bool = option(False, '--write-graph', '--write_graph', group=WORKFLOW,
                action="store_true",
                help="write each participant's workflow graph (Graphviz .dot, and .svg when Graphviz is installed) "
                "into the work directory")
    # --- set by the CLI from the options above ---
    plugin: tuple = ("Linear", ())  # Nipype plugin name and its arguments as (key, value) pairs
    command: tuple = ()  # the command line, for the provenance record
    # --- fixed settings of the method (the paper's, REFERENCE.md §2) ---
    clip_sd: float = CLIP_SD
    cv_units: int = 1000
