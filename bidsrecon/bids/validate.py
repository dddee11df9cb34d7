"""Run the BIDS validator (bids-validator-deno) on a dataset."""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bidsrecon.errors import EXIT_INPUT_MISSING, BidsReconError


def validator_executable():
    """Path of ``bids-validator-deno``: next to this Python first, then on PATH."""
    beside = Path(sys.executable).parent / "bids-validator-deno"
    found = str(beside) if beside.exists() else shutil.which("bids-validator-deno")
    if found is None:
        raise BidsReconError(
            "bids-validator-deno is not installed; install it (pip install bids-validator-deno) "
            "or pass --skip-bids-validation",
            EXIT_INPUT_MISSING,
        )
    return found


def run_validator(dataset_dir):
    """Validate ``dataset_dir``; returns ``(passed, report_text)``.

    Warnings do not fail validation; errors do (the validator's exit code).
    """
    result = subprocess.run(
        [validator_executable(), str(dataset_dir), "--ignoreWarnings"],
        capture_output=True,
        text=True,
        env=_validator_env(),
    )
    return result.returncode == 0, (result.stdout + result.stderr).strip()


def _validator_env():
    # deno keeps a cache; point it at a writable place so read-only homes and containers work.
    env = dict(os.environ)
    env.setdefault("DENO_DIR", str(Path(tempfile.gettempdir()) / "bidsrecon-deno"))
    env["NO_COLOR"] = "1"
    return env
