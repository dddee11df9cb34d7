"""Training images' features read from a features folder (``--features-dir``) instead of computed.

The Kamitani lab publishes the DNN features of its stimuli in bdpy's ``Features`` layout
(:mod:`bidsrecon.labformats.features`). With them as the decoder's training targets the encoder
never runs on the training images, and the decoder is trained on exactly the lab's numbers
(as float32, the type every pass over the training images works in).

:class:`FeatureFiles` is what the passes of :mod:`bidsrecon.decoding.stream` read instead of
the encoder: the features of images ``start:stop`` of a list of names, layer by layer.
"""
import numpy as np

from bidsrecon.errors import EXIT_BAD_ARGUMENTS, BidsReconError
from bidsrecon.labformats.features import feature_file, feature_shape, read_feature


class FeatureFiles:
    """The features of a list of images, read by name from a features folder.

    Parameters
    ----------
    directory : str or Path
        ``<directory>/<layer>/<name>.mat`` (bdpy's layout).
    names : sequence of str
        The images, in the order the passes over them take (the decoder's training images).
    """

    def __init__(self, directory, names):
        self.directory = directory
        self.names = list(names)

    def __repr__(self):
        return f"FeatureFiles({str(self.directory)!r}, {len(self.names)} images)"

    def __len__(self):
        return len(self.names)

    def units(self, layer):
        """Units per image of ``layer`` (from the first image's file header)."""
        return int(np.prod(feature_shape(feature_file(self.directory, layer, self.names[0]))))

    def batch(self, start, stop, layers):
        """Features of images ``start:stop`` at ``layers``.

        Returns
        -------
        dict of str to ndarray, shape (stop - start, *layer_shape) float32
        """
        features = {}
        for layer in layers:
            arrays = [read_feature(self.directory, layer, name) for name in self.names[start:stop]]
            for name, array in zip(self.names[start:stop], arrays):
                if array.shape[:1] != (1,) or array.shape != arrays[0].shape:
                    raise BidsReconError(
                        f"{feature_file(self.directory, layer, name)}: its features have shape {array.shape}, "
                        f"not {(1, *arrays[0].shape[1:])} like the other images' of layer {layer!r}",
                        EXIT_BAD_ARGUMENTS)
            features[layer] = np.concatenate(arrays).astype(np.float32, copy=False)
            if not np.all(np.isfinite(features[layer])):
                bad = next(name for name, array in zip(self.names[start:stop], features[layer])
                           if not np.all(np.isfinite(array)))
                raise BidsReconError(f"{feature_file(self.directory, layer, bad)}: holds values that are not finite "
                                     "(NaN or infinite) as float32; a decoder cannot be trained on them",
                                     EXIT_BAD_ARGUMENTS)
        return features
