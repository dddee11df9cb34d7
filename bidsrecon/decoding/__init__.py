"""Decoding network features from fMRI: kernel ridge that never builds a weight matrix.

:class:`KernelRidgeDecoder` learns, per layer, coefficients over the unique training images;
:func:`decode_features` turns them into decoded features of every unit by streaming the training
images through the encoder (DESIGN.md, "The decoding core").
"""
from bidsrecon.decoding.cross_validation import grouped_folds
from bidsrecon.decoding.kernel_ridge import DEFAULT_RELATIVE_ALPHAS, KernelRidgeDecoder, collapse_onto_images
from bidsrecon.decoding.stream import decode_features, iter_feature_batches, sample_unit_features
from bidsrecon.features.correlation import profile_correlation

__all__ = [
    "DEFAULT_RELATIVE_ALPHAS",
    "KernelRidgeDecoder",
    "collapse_onto_images",
    "decode_features",
    "grouped_folds",
    "iter_feature_batches",
    "profile_correlation",
    "sample_unit_features",
]
