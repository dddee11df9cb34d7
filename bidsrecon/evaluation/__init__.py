"""Metrics of reconstruction quality."""
from bidsrecon.evaluation.identification import (
    correlation_matrix,
    pairwise_identification,
    pixel_correlation,
    shape_identification,
    stimulus_colour,
)
from bidsrecon.evaluation.metrics import pixcorr, ssim
from bidsrecon.evaluation.significance import identification_permutation_test

__all__ = ["correlation_matrix", "feature_identification_table", "identification_permutation_test",
           "pairwise_identification", "pixcorr", "pixel_correlation", "shape_identification", "ssim",
           "stimulus_colour"]


def __getattr__(name):
    # Imported on first use: the network table needs torch and torchvision, the rest only numpy.
    if name == "feature_identification_table":
        from bidsrecon.evaluation.networks import feature_identification_table

        return feature_identification_table
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
