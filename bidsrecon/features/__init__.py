"""What decoding, reconstruction and evaluation all know about a network's features: the cache of
an encoder's outputs, keyed by hashes of the encoder, weights and images
(:mod:`bidsrecon.features.cache`), their spread (:mod:`bidsrecon.features.spread`) and how decoded
and true features correlate (:mod:`bidsrecon.features.correlation`). It imports from none of them,
so data flows forward: features -> decoding -> recon -> evaluation.
"""
