"""bidsrecon: reconstruct seen and imagined images from BIDS fMRI data."""
from bidsrecon._version import __version__

__all__ = ["__version__"]
