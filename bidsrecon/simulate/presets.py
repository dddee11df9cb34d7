"""Sizes of the simulated dataset: how many images, runs and voxels each preset makes."""
import math
from dataclasses import dataclass, replace

from bidsrecon.errors import BidsReconError


@dataclass(frozen=True)
class SimulationPreset:
    """Counts and sizes of one simulated dataset.

    Parameters
    ----------
    name : str
        Preset name.
    image_size : int
        Side of the stimulus PNGs, in pixels.
    volume_shape : tuple of int
        Functional grid (x, y, z); x and z even so that hemispheres and
        dorsal/ventral halves split cleanly.
    voxel_size_mm : float
        Isotropic functional voxel size.
    n_training_images : int
        Natural training images (event_type 1 in perceptionNaturalImageTraining).
    training_images_per_category : int
        Images sharing one fake ImageNet synset (ds001506: 8).
    n_training_presentations : int
        How often each training image is shown (ds001506: 5).
    training_blocks_per_run : int
        Stimulus blocks per training run, repeats not counted (ds001506: 50).
    n_test_images : int
        Natural test images; the first ten are the lab's imagery targets.
    n_test_runs : int
        Test runs, each showing every test image once.
    n_shapes : int
        Colour shapes, taken from the 40 in the lab's order.
    n_shape_runs : int
        Artificial-image runs, each showing every shape once.
    n_letters : int
        Letters, taken from A C E I N O R S T U in order.
    n_letter_runs : int
        Letter runs, each showing every letter once.
    n_imagery_runs : int
        Imagery runs.
    n_imagery_trials : int
        Trials per imagery run (ds001506: 26, one per category index).
    runs_per_session : int
        Runs grouped into one session (ds001506: about 8).
    noise : float
        SD of the Gaussian measurement noise per volume, in percent of each
        voxel's mean signal, for a typical subject (each subject's level is drawn
        around it, log-normal SD 0.15). The default 2 makes an 8-s block of an
        early visual voxel about as noisy as its image-specific signal.
    motion_mm : float
        Largest head translation in a run, in mm (rotations scaled to match
        at 50 mm from the centre).
    visual_fraction : float
        Share of brain voxels that belong to visual cortex.
    """

    name: str
    image_size: int
    volume_shape: tuple
    voxel_size_mm: float
    n_training_images: int
    training_images_per_category: int
    n_training_presentations: int
    training_blocks_per_run: int
    n_test_images: int
    n_test_runs: int
    n_shapes: int
    n_shape_runs: int
    n_letters: int
    n_letter_runs: int
    n_imagery_runs: int
    n_imagery_trials: int
    runs_per_session: int
    noise: float = 2.0
    motion_mm: float = 0.3
    visual_fraction: float = 0.7

    def __post_init__(self):
        at_least_one = ("image_size", "n_training_images", "training_images_per_category",
                        "n_training_presentations", "training_blocks_per_run", "n_test_images",
                        "n_shapes", "n_letters", "runs_per_session")
        for field in at_least_one:
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1; got {getattr(self, field)}")
        if self.n_shapes > 40 or self.n_letters > 10:
            raise ValueError(f"at most 40 shapes and 10 letters; got {self.n_shapes}, {self.n_letters}")
        if self.n_imagery_runs and self.n_imagery_trials < 3:
            raise ValueError("imagery runs need >= 3 trials (a shape, a natural image, fixation)")
        if len(self.volume_shape) != 3 or self.volume_shape[0] % 2 or self.volume_shape[2] % 2:
            raise ValueError(f"volume_shape must be (x, y, z) with x and z even; got {self.volume_shape}")
        if not 0 < self.visual_fraction < 1:
            raise ValueError(f"visual_fraction must be in (0, 1); got {self.visual_fraction}")


PRESETS = {
    "tiny": SimulationPreset(
        name="tiny",
        image_size=64,
        volume_shape=(12, 12, 8),
        voxel_size_mm=3.0,
        n_training_images=40,
        training_images_per_category=4,
        n_training_presentations=1,
        training_blocks_per_run=10,
        n_test_images=4,
        n_test_runs=2,
        n_shapes=5,
        n_shape_runs=2,
        n_letters=2,
        n_letter_runs=2,
        n_imagery_runs=1,
        n_imagery_trials=5,
        runs_per_session=2,
    ),
    "demo": SimulationPreset(
        name="demo",
        image_size=128,
        volume_shape=(24, 24, 16),
        voxel_size_mm=3.0,
        n_training_images=400,
        training_images_per_category=8,
        n_training_presentations=2,
        training_blocks_per_run=50,
        n_test_images=20,
        n_test_runs=4,
        n_shapes=40,
        n_shape_runs=3,
        n_letters=10,
        n_letter_runs=3,
        n_imagery_runs=2,
        n_imagery_trials=26,
        runs_per_session=8,
    ),
    # ds001506's per-run layout and counts (REFERENCE.md §3) on a small grid: training runs of
    # 50 images + 5 repeats (239 volumes), test 50 + 5 (239), shapes 40 + 4 (195), letters
    # 10 + 1 in 12-s blocks with 12-s rests (151), imagery 26 trials of 16 s (227).
    "ds001506": SimulationPreset(
        name="ds001506",
        image_size=64,
        volume_shape=(16, 16, 12),
        voxel_size_mm=3.0,
        n_training_images=1200,
        training_images_per_category=8,
        n_training_presentations=5,
        training_blocks_per_run=50,
        n_test_images=50,
        n_test_runs=24,
        n_shapes=40,
        n_shape_runs=20,
        n_letters=10,
        n_letter_runs=12,
        n_imagery_runs=20,
        n_imagery_trials=26,
        runs_per_session=8,
    ),
}


def get_preset(name, noise=None):
    """Return the named preset, with the noise level replaced when given.

    Parameters
    ----------
    name : str
        A key of :data:`PRESETS`.
    noise : float or None
        Measurement-noise SD in percent signal; None keeps the preset's.

    Returns
    -------
    SimulationPreset
    """
    if name not in PRESETS:
        raise BidsReconError(
            f"Unknown simulation preset {name!r}; expected one of {sorted(PRESETS)}."
        )
    preset = PRESETS[name]
    if noise is None:
        return preset
    is_number = isinstance(noise, (int, float)) and not isinstance(noise, bool)
    if not (is_number and math.isfinite(noise) and noise >= 0):
        raise BidsReconError(
            f"noise must be a finite number >= 0 (percent signal change); got {noise!r}."
        )
    return replace(preset, noise=float(noise))
