import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Two cores are shared by everything the tests start; one torch thread per test process is enough.
torch.set_num_threads(1)

VALIDATOR = Path(sys.executable).parent / "bids-validator-deno"


def validate(dataset_dir):
    """Run bids-validator-deno; returns (exit code, output)."""
    result = subprocess.run([str(VALIDATOR), str(dataset_dir)], capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """The tiny simulated dataset, made once per test session; tests must not modify it."""
    from bidsrecon.simulate import simulate_dataset

    return simulate_dataset(tmp_path_factory.mktemp("tiny") / "bids", n_subjects=1, preset="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_fmriprep_dataset(tmp_path_factory):
    """The tiny simulated dataset with its fMRIPrep derivatives in ``derivatives/fmriprep``."""
    from bidsrecon.simulate import simulate_dataset

    return simulate_dataset(tmp_path_factory.mktemp("tiny_fmriprep") / "bids", n_subjects=1, preset="tiny", seed=0,
                            fmriprep=True)
