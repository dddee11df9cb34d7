"""A simulated ds001506-like BIDS dataset for the demo, the tests and the benchmarks.

``simulate_dataset(out_dir, n_subjects=1, preset="tiny", seed=0, fmriprep=False, noise=None)``
writes it; ``python -m bidsrecon.simulate OUT_DIR`` does the same from the shell.
"""
from bidsrecon.simulate.dataset import simulate_dataset
from bidsrecon.simulate.presets import PRESETS, SimulationPreset

__all__ = ["PRESETS", "SimulationPreset", "simulate_dataset"]
