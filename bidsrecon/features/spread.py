"""The spread of a layer's features, as the decoded-feature correction uses it.

Ridge regression and trial averaging shrink decoded features towards the training mean. Before
inverting them, each layer can be rescaled so that its spread around the training mean matches the
spread of true training features (correction ``"spread"``, bidsrecon's own; not one of the Kamitani
lab's variants, whose statistics are at the end of this module: REFERENCE.md §1 and
:mod:`bidsrecon.recon.correction`).

Spread is measured the same way on both sides:

* convolutional layers (``(C, H, W)`` per image): the root-mean-square deviation from the
  training mean over the spatial positions of each channel, averaged over channels;
* vector layers (``(U,)`` per image): the root-mean-square deviation over all units.
"""
import numpy as np


def _mean_channel_rms(mean_square):
    """RMS over positions per channel, averaged over channels (conv); RMS over units (vector)."""
    if mean_square.ndim == 3:
        return np.sqrt(mean_square.mean(axis=(1, 2))).mean()
    return np.sqrt(mean_square.mean())


def spread_from_moments(unit_mean, unit_mean_square):
    """Spread of true features from per-unit moments over the training images.

    Parameters
    ----------
    unit_mean, unit_mean_square : ndarray, shape (C, H, W) or (U,)
        Mean and mean of squares of each unit over the training images.

    Returns
    -------
    float
    """
    unit_mean = np.asarray(unit_mean, dtype=np.float64)
    variance = np.maximum(np.asarray(unit_mean_square, dtype=np.float64) - unit_mean**2, 0.0)
    return float(_mean_channel_rms(variance))


def item_spread(centred):
    """Spread of each item of ``centred`` (features minus the training mean).

    Parameters
    ----------
    centred : ndarray, shape (n_items, C, H, W) or (n_items, U)

    Returns
    -------
    ndarray, shape (n_items,)
    """
    centred = np.asarray(centred, dtype=np.float64)
    squared = centred**2
    if centred.ndim == 4:
        return np.sqrt(squared.mean(axis=(-2, -1))).mean(axis=-1)
    return np.sqrt(squared.reshape(len(centred), -1).mean(axis=-1))


# ---------------------------------------------------------------------------------------------
# The lab's SD statistics (REFERENCE.md §1): SDs *within* one image, per channel, over positions.
#
# These are not the spread above. The lab measures each image's own SD around its own mean:
# per channel over the spatial positions for a convolutional layer, over all units for a vector
# layer (one "channel"). Its ``feat_std0`` is that statistic of true features of natural images,
# averaged over images. An average over images of a per-image SD cannot be had from per-unit
# moments over images (:func:`spread_from_moments`' inputs): the per-unit moments lose which
# positions' values came from the same image, so neither an image's channel mean nor its SD (a
# square root, averaged after it is taken) can be recovered from them. (What they do give, each
# channel's SD pooled over images and positions, also counts how the channel's mean and pattern
# vary from image to image: a different, larger number.) It is accumulated over the training
# images instead (:func:`bidsrecon.decoding.stream.decode_features`, ``feature_std``).


def channel_sd(features, ddof=1):
    """SD of each channel of each item over its positions, around the item's own channel mean.

    The statistic the Kamitani lab's code takes of one image's features: icnn's
    ``estimate_cnn_feat_std`` (``ddof=0``, before averaging over channels) and bdpy's
    ``normalize_feature(..., channel_axis=0)`` (``ddof=1``; ``np.std(feature, axis=(1, 2))``
    of a ``(C, H, W)`` item, ``np.std(feature)`` of a ``(U,)`` one).

    Parameters
    ----------
    features : ndarray, shape (n_items, C, H, W) or (n_items, U)
        Any number of trailing position axes after the channel axis; a 2-D array is a vector
        layer, taken as one channel of ``U`` positions.
    ddof : int, default 1
        Delta degrees of freedom: the sum of squared deviations is divided by
        ``n_positions - ddof``. Where that is not positive the SD is undefined and given as 0.

    Returns
    -------
    ndarray, shape (n_items, C) or (n_items, 1), float64
    """
    features = np.asarray(features)
    if features.ndim < 2:
        raise ValueError(f"features must be (n_items, C, ...) or (n_items, U); got shape {features.shape}.")
    n_items = features.shape[0]
    n_channels = features.shape[1] if features.ndim > 2 else 1
    flat = features.reshape(n_items, n_channels, -1)
    n_positions = flat.shape[2]
    sd = np.zeros((n_items, n_channels))
    if n_positions - ddof <= 0:
        return sd
    # Item by item, so that one item's deviations are the only temporary: the mean summed in
    # float64, the deviations from it in the features' precision (float32 features keep float32:
    # twice as fast as float64 throughout and as precise, the deviations being small numbers),
    # their squares summed in float64.
    for index in range(n_items):
        item = flat[index]
        if item.dtype not in (np.float32, np.float64):
            item = item.astype(np.float64)
        deviation = item - item.mean(axis=1, dtype=np.float64, keepdims=True).astype(item.dtype)
        np.square(deviation, out=deviation)
        sd[index] = np.sqrt(deviation.sum(axis=1, dtype=np.float64) / (n_positions - ddof))
    return sd


def positions_per_channel(item_shape):
    """Positions each channel's SD is taken over: ``H * W`` of ``(C, H, W)``, ``U`` of ``(U,)``."""
    item_shape = tuple(item_shape)
    return int(np.prod(item_shape[1:])) if len(item_shape) > 1 else int(item_shape[0])


def lab_feature_std(feature_std, item_shape, ddof=1):
    """The lab's per-layer ``feat_std0``: the mean over channels of ``feature_std``.

    ``feature_std`` is the per-channel mean over true images of :func:`channel_sd` with
    ``ddof=1`` (what :func:`bidsrecon.decoding.stream.decode_features` accumulates over the
    training images as ``feature_std``). It plays the part of the cookbook's
    ``estimated_cnn_feat_std_VGG_ILSVRC_19_layers_ImgSize_224x224_chwise_dof1.mat`` (a
    channel-wise SD, ddof 1, of the features of 10,000 natural images; the cookbook uses
    ``np.mean(feat_std0[layer])``), estimated on the training images instead. The script that
    made the lab's files is not public: that they average each image's channel SD over images
    is read from their names, from how the scripts use them, and from the statistic the scripts
    take of an item, which is this one.

    With ``ddof=0`` the value is that of the 2019 scripts' ``estimated_vgg19_cnn_feat_std.mat``
    (icnn's ``estimate_cnn_feat_std``, numpy's default ddof 0, of each image): an image's SD with
    ddof 0 is exactly ``sqrt((P - 1) / P)`` times its SD with ddof 1, ``P`` the positions per
    channel, so the mean over images converts by the same factor.

    Parameters
    ----------
    feature_std : array-like
        Per-channel values (``C`` of a conv layer, 1 of a vector layer) or one value per layer.
    item_shape : tuple of int
        One item's shape, ``(C, H, W)`` or ``(U,)``.
    ddof : {1, 0}, default 1

    Returns
    -------
    float
    """
    value = float(np.mean(np.asarray(feature_std, dtype=np.float64)))
    if ddof == 1:
        return value
    n_positions = positions_per_channel(item_shape)
    if n_positions < 2 or n_positions - ddof <= 0:
        return 0.0
    return value * float(np.sqrt((n_positions - 1) / (n_positions - ddof)))
