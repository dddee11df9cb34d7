"""The Kamitani lab's file formats (bdpy's BData, Features and DecodedFeatures; the brain-decoding
cookbook's FastL2LiR decoder folders), read with h5py and scipy only: never bdpy's own readers, which
unpickle a ``statistics.pkl`` found next to the features."""
