"""All settings of one run of the app, in one frozen object (fMRIPrep's lesson: no globals, no
settings threaded one by one through every factory)."""
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Config:
    bids_dir: Path
    output_dir: Path
    analysis_level: str
    work_dir: Path
    participant_labels: tuple = ()
    task_labels: tuple = ()
    stimuli_dirs: tuple = ()
    nprocs: int = 1
    skip_bids_validation: bool = False
    verbose: int = 0
    seed: int = 0
    spec: str = "ds001506"
    session_labels: tuple = ()
    bids_filter_file: Path = None
    cut_runs: bool = False
    # inputs: raw data (realigned here) or fMRIPrep derivatives
    derivatives: tuple = ()
    space: str = "T1w"
    confounds: tuple = None  # None: the six motion parameters
    slice_timing: bool = False
    rois: tuple = ()
    n_voxels: int = None
    # samples (the paper's defaults, REFERENCE.md §2)
    samples: str = "block"
    discard_seconds: float = 8.0
    delay_seconds: float = 4.0
    clip_sd: float = 3.0
    normalise: str = None  # rest | zscore; None: rest when the specification names the rest events
    # decoding and reconstruction
    encoder: str = "efficientnet-lite0"
    encoder_weights: Path = None
    layers: tuple = ()
    image_size: int = 64
    iterations: int = 200
    cv_units: int = 1000
    save_decoded_features: bool = False
    decoder: str = "kernel"
    decoders_dir: Path = None  # a previous output dataset whose saved decoders are applied, not refitted
    # reconstruction (the paper's defaults, REFERENCE.md §1)
    optimiser: str = "lbfgs"
    generator_weights: Path = None
    generator_latent_max: str = None
    jitter: int = 0
    feature_correction: str = "spread"
    pixel_weight: float = 100.0  # the decoded small image's term (bidsrecon.decoding.pixels)
    tv_weight: float = 3.0
    coarse_factor: int = 2
    start: str = "pixels"
    clamp: bool = True  # gd: pixels kept in [0, 1] after each step
    device: str = "auto"
    mixed_precision: bool = False
    batch_size: int = 8
    snapshot_every: int = 0
    # resources
    mem_gb: float = None
    feature_cache: str = "off"
    omp_nthreads: int = 1  # threads of one process (torch, BLAS)
    plugin: tuple = ("Linear", ())  # Nipype plugin name and its arguments as (key, value) pairs
    stop_on_first_crash: bool = False
    resource_monitor: bool = False
    command: tuple = ()  # the command line, for the provenance record
