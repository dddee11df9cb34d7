"""Reconstruction: correct decoded features, then invert them into images."""
from bidsrecon.recon.correction import correct_spread
from bidsrecon.recon.invert import reconstruct
from bidsrecon.recon.loss import feature_loss, layer_weights

__all__ = ["correct_spread", "feature_loss", "layer_weights", "reconstruct"]
