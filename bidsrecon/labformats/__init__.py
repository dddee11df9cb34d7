"""The Kamitani lab's data formats (bdpy's BData, Features and DecodedFeatures), read and written with
h5py and scipy only: never bdpy's own readers, which unpickle a ``statistics.pkl`` found next to the
features. The cookbook's FastL2LiR decoder folders are a decoder format:
:mod:`bidsrecon.decoding.fastl2lir_folders`."""
