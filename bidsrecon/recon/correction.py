"""Correction of decoded features before they are inverted (REFERENCE.md §1).

Ridge regression and trial averaging shrink decoded features. :func:`correct_features` rescales
each item's layer by one of these methods, all per item and per layer, ``x`` one item's decoded
layer (``(C, H, W)`` or ``(U,)``):

``"none"``
    ``x`` unchanged.
``"spread"``
    bidsrecon's own (:func:`correct_spread`): ``m + (x - m) * spread0 / item_spread(x - m)``,
    ``m`` the per-unit training mean, ``spread0`` the training features' spread
    (:mod:`bidsrecon.features.spread`). Not one of the lab's.
``"lab2019"``
    The 2019 scripts (KamitaniLab/DeepImageReconstruction ``1_reconstruct_natural_image.py`` and
    its siblings: ``feat = (feat / estimate_cnn_feat_std(feat)) * feat_std0[layer]``):
    ``x * s0 / sd0(x)``, no centring. ``sd0(x)`` is icnn's ``estimate_cnn_feat_std``
    (KamitaniLab/icnn ``icnn/utils.py``): the SD of each channel over its positions, numpy's
    default ddof 0, averaged over channels (a vector layer: the SD over its units). ``s0`` is the
    same statistic of true features averaged over images
    (:func:`bidsrecon.features.spread.lab_feature_std` with ``ddof=0``).
``"cookbook"``
    The cookbook (KamitaniLab/brain-decoding-cookbook-public
    ``reconstruction/recon_icnn_image_vgg19_dgn_relu7gen_gd.py``; ``feature_scaling:
    feature_std`` of ``reconstruction/recon_using_modules.py``): bdpy's
    ``normalize_feature(x, channel_wise_mean=False, channel_wise_std=False, channel_axis=0,
    shift='self', scale=np.mean(feat_std0[layer]), std_ddof=1)`` (KamitaniLab/bdpy
    ``bdpy/feature/feature.py``), that is ``(x - mu) / sd1(x) * s1 + mu``: ``mu`` the item's own
    mean over all its units (one number), ``sd1(x)`` the SD of each channel over its positions
    with ddof 1 averaged over channels (a vector layer: the SD over its units, ddof 1), ``s1``
    the mean over channels of the true features' ``feat_std0`` (the ``..._chwise_dof1.mat``
    file; :func:`bidsrecon.features.spread.lab_feature_std`).
``"cookbook-trainmean"``
    The cookbook's ``..._centering_trainmean.py`` (``feature_std_train_mean_center`` of
    ``recon_using_modules.py``, whose training mean is the decoder's ``y_mean``): ``"cookbook"``
    applied to ``c = x - m`` and ``m`` added back: ``m + (c - mean(c)) / sd1(c) * s1 + mean(c)``.

An item whose SD is zero (an all-zero or constant layer) has nothing to rescale: the lab's
methods return it as it is (no division by zero), ``"spread"`` returns the training mean as
:func:`correct_spread` always has.
"""
import numpy as np

from bidsrecon.features.spread import channel_sd, item_spread, lab_feature_std

#: Methods of :func:`correct_features`.
CORRECTION_METHODS = ("none", "spread", "lab2019", "cookbook", "cookbook-trainmean")

#: Statistics of the true training features each method reads from ``stats``.
_STATISTICS = {
    "none": (),
    "spread": ("train_mean", "train_spread"),
    "lab2019": ("feature_std",),
    "cookbook": ("feature_std",),
    "cookbook-trainmean": ("train_mean", "feature_std"),
}


def correction_statistics(method):
    """Names of the statistics :func:`correct_features` needs in ``stats`` for ``method``.

    Returns
    -------
    tuple of str
        Among ``"train_mean"``, ``"train_spread"`` and ``"feature_std"``.
    """
    if method not in _STATISTICS:
        raise ValueError(f"Unknown correction {method!r}; choose one of {', '.join(CORRECTION_METHODS)}.")
    return _STATISTICS[method]


def correct_features(decoded, stats, method):
    """Correct decoded features by ``method`` (see the module's description of each).

    Parameters
    ----------
    decoded : dict of str to ndarray, each of shape (n_items, C, H, W) or (n_items, U)
        Decoded features by layer.
    stats : mapping of str to (dict of str to value)
        Statistics of the true training features, by statistic and then layer, as
        :func:`bidsrecon.decoding.decode_features` gives them; only those the method reads
        (:func:`correction_statistics`) need be present:

        ``"train_mean"``: ndarray of one item's shape, the per-unit mean;
        ``"train_spread"``: float (or a one-element array), :func:`spread_from_moments`;
        ``"feature_std"``: array of ``C`` values (1 for a vector layer), each channel's SD over
        its positions within an image (ddof 1) averaged over the images; one value per layer is
        also accepted (e.g. the lab's own file, which the lab averages over channels anyway).
    method : str
        One of :data:`CORRECTION_METHODS`.

    Returns
    -------
    dict of str to ndarray, float32
        Corrected features, same keys and shapes as ``decoded``.
    """
    needed = correction_statistics(method)
    if method == "none":
        return {name: np.asarray(features, dtype=np.float32) for name, features in decoded.items()}
    for statistic in needed:
        if statistic not in stats:
            raise ValueError(f"Correction {method!r} needs the training statistic {statistic!r}.")
    missing = sorted({name for statistic in needed for name in decoded if name not in stats[statistic]})
    if missing:
        raise ValueError(f"No training {' or '.join(needed)} for layer(s) {missing} (correction {method!r}).")
    if method == "spread":
        # One number per layer; as stored in decoded_features.safetensors, a one-element array.
        spread = {name: np.asarray(stats["train_spread"][name], dtype=np.float64).item() for name in decoded}
        return correct_spread(decoded, stats["train_mean"], spread)
    corrected = {}
    for name, features in decoded.items():
        features = np.asarray(features)
        if features.ndim < 2:
            raise ValueError(f"Layer {name!r}: decoded features must be (n_items, ...); got shape {features.shape}.")
        item_shape = features.shape[1:]
        feature_std = _checked_feature_std(name, stats["feature_std"][name], item_shape)
        mean = None
        if method == "cookbook-trainmean":
            mean = np.asarray(stats["train_mean"][name], dtype=np.float64)
            if item_shape != mean.shape:
                raise ValueError(f"Layer {name!r}: decoded items have shape {item_shape}, "
                                 f"the training mean {mean.shape}.")
        ddof = 0 if method == "lab2019" else 1
        target_sd = lab_feature_std(feature_std, item_shape, ddof=ddof)
        result = np.empty(features.shape, dtype=np.float32)
        # Item by item: float64 temporaries of one item, not of the whole layer.
        for index in range(len(features)):
            item = features[index:index + 1].astype(np.float64)
            if method == "lab2019":
                result[index] = _rescale_own_sd(item, target_sd, ddof=0, centre=False)[0]
            elif method == "cookbook":
                result[index] = _rescale_own_sd(item, target_sd, ddof=1, centre=True)[0]
            else:  # cookbook-trainmean: about the training mean, which is added back
                result[index] = (mean + _rescale_own_sd(item - mean, target_sd, ddof=1, centre=True))[0]
        corrected[name] = result
    return corrected


def _checked_feature_std(name, feature_std, item_shape):
    """``feature_std`` of a layer as a float64 array, its size checked against the layer's channels."""
    feature_std = np.asarray(feature_std, dtype=np.float64)
    n_channels = item_shape[0] if len(item_shape) > 1 else 1
    if feature_std.size not in (1, n_channels):
        raise ValueError(f"Layer {name!r}: feature_std has {feature_std.size} values; the layer has "
                         f"{n_channels} channel(s).")
    return feature_std


def _rescale_own_sd(features, target_sd, ddof, centre):
    """Each item scaled by ``target_sd / sd`` (sd: its channel SDs averaged), about its own mean
    when ``centre`` (the mean over all its units), about zero otherwise; an item whose sd is 0 is
    returned as it is."""
    n_items = len(features)
    sd = channel_sd(features, ddof=ddof).mean(axis=1)
    scale = np.divide(target_sd, sd, out=np.ones_like(sd), where=sd > 0)
    scale = scale.reshape((-1,) + (1,) * (features.ndim - 1))
    if not centre:
        return features * scale
    item_mean = features.reshape(n_items, -1).mean(axis=1).reshape(scale.shape)
    return (features - item_mean) * scale + item_mean


def correct_spread(decoded, train_mean, train_spread):
    """Rescale each item's decoded layer to the spread of true features around the training mean.

    Ridge regression and trial averaging shrink decoded features towards the training mean. Per
    item and layer: ``train_mean + (d - train_mean) * train_spread / item_spread(d - train_mean)``
    (spread as :mod:`bidsrecon.features.spread` defines it). An item equal to the training mean
    has no spread to rescale and is returned as the mean.

    Parameters
    ----------
    decoded : dict of str to ndarray, each of shape (n_items, ...)
        Decoded features by layer.
    train_mean : dict of str to ndarray, each of shape (...)
        Mean of the training features by layer (one item's shape).
    train_spread : dict of str to float
        Spread of the true training features by layer
        (:func:`bidsrecon.features.spread.spread_from_moments`).

    Returns
    -------
    dict of str to ndarray, float32
        Corrected features, same keys and shapes as ``decoded``.
    """
    missing = sorted(set(decoded) - set(train_mean) | set(decoded) - set(train_spread))
    if missing:
        raise ValueError(f"No training mean or spread for layer(s) {missing}.")
    corrected = {}
    for name, features in decoded.items():
        features = np.asarray(features, dtype=np.float64)
        mean = np.asarray(train_mean[name], dtype=np.float64)
        if features.shape[1:] != mean.shape:
            raise ValueError(f"Layer {name!r}: decoded items have shape {features.shape[1:]}, "
                             f"the training mean {mean.shape}.")
        centred = features - mean
        spread = item_spread(centred)
        scale = np.divide(float(train_spread[name]), spread, out=np.zeros_like(spread),
                          where=spread > 0)
        scale = scale.reshape((-1,) + (1,) * (features.ndim - 1))
        corrected[name] = (mean + centred * scale).astype(np.float32)
    return corrected
