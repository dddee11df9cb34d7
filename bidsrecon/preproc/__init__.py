"""Pure numeric preprocessing: cleaning runs and taking block samples."""
from bidsrecon.preproc.samples import block_samples, block_weights
from bidsrecon.preproc.signal import clean_run

__all__ = ["block_samples", "block_weights", "clean_run"]
