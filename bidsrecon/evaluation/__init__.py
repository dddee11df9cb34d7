"""Metrics of reconstruction quality."""
from bidsrecon.evaluation.identification import correlation_matrix, pairwise_identification, pixel_correlation

__all__ = ["correlation_matrix", "pairwise_identification", "pixel_correlation"]
