"""High-level rows of the field's evaluation table: two-way identification in network features.

Ozcelik & VanRullen (2023), *Natural scene reconstruction from fMRI signals using generative
latent diffusion*, Sci Rep 13: 15666, and Scotti et al. (2023), *Reconstructing the mind's eye:
fMRI-to-image with contrastive learning and diffusion priors* (MindEye), NeurIPS, report
reconstructions by how well the features of a reconstruction identify its image among the
others, in AlexNet (2nd and 5th convolutional layers), InceptionV3 (last pooling layer) and
CLIP (final embedding), and by feature distances in EfficientNet-B1 and SwAV-ResNet50.

Here every row is the project's two-way identification
(:func:`bidsrecon.evaluation.identification.pairwise_identification`: the Pearson correlation
of a reconstruction's features with those of its own image, compared with those of each other
image of the set; chance 0.5), averaged over items:

================== ============================================ =============================
network            features                                     weights looked for
================== ============================================ =============================
AlexNet(2)         ``features.4``: 2nd conv (``features.3``),   torchvision ``alexnet-owt-
                   after its ReLU                               7be5be79.pth``
AlexNet(5)         ``features.11``: 5th conv (``features.10``), the same file
                   after its ReLU
InceptionV3        ``avgpool``: last pooling layer (2,048)      torchvision ``inception_v3_
                                                                google-0cc3c7bd.pth``
CLIP               final image embedding                        not supported (see below)
EfficientNet-Lite0 head after ReLU6, averaged over space        packaged with bidsrecon's
                   (1,280): the input of the classifier         encoder (always available)
SwAV               ``avgpool`` of ResNet-50 (2,048)             ``swav_800ep_pretrain.pth.tar``
================== ============================================ =============================

AlexNet's five convolutions are ``features.0, 3, 6, 8, 10`` in torchvision's module
(Krizhevsky, Sutskever & Hinton 2012, *ImageNet classification with deep convolutional neural
networks*, NeurIPS; torchvision's "one weird trick" variant, Krizhevsky 2014,
arXiv:1404.5997); the outputs after the ReLU of the 2nd and 5th are the two AlexNet rows of
the papers above.

Honest differences from the published table:

- **EfficientNet**: the papers use EfficientNet-B1 (Tan & Le 2019, *EfficientNet: rethinking
  model scaling for convolutional neural networks*, ICML) as a *distance* (lower is better);
  this table uses EfficientNet-Lite0, the network whose ImageNet weights bidsrecon ships, and
  scores it by identification like the other rows. Its numbers are not comparable with the
  published EffNet-B column.
- **SwAV** (Caron et al. 2020, *Unsupervised learning of visual features by contrasting cluster
  assignments*, NeurIPS): also a distance in the papers, identification here. The weights are
  the authors' ResNet-50 checkpoint (800 epochs) under its published file name; its
  ``module.`` prefix is stripped and its projection head and prototypes are not used.
- **CLIP** (Radford et al. 2021, ViT-L/14 in the papers) needs an architecture bidsrecon does
  not implement and a package (``open_clip`` or OpenAI's ``clip``) it does not depend on; its
  row is always marked "not available".
- Inputs: every network gets the images resized (bilinear, antialiased) to the size its
  weights were trained at, 224 px (299 px for InceptionV3), normalised by ImageNet's mean and
  SD (EfficientNet-Lite0: its own scaling, see :mod:`bidsrecon.encoders.efficientnet_lite`).
  Published evaluations resized to other sizes (e.g. 256 px for AlexNet), so small differences
  from their numbers are expected even for the same images.

Weights are never downloaded and never random: a network whose file is not found (in
``weights_dir``, then in torch hub's checkpoint folder, ``torch.hub.get_dir()/checkpoints``,
where torchvision caches its downloads) or does not hold the expected tensors gets a row with
``available=False`` and a note saying what was looked for, and where.
"""
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torchvision.models.feature_extraction import create_feature_extractor

from bidsrecon.encoders.base import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, build_with_weights, load_state_dict_file
from bidsrecon.errors import BidsReconError
from bidsrecon.evaluation.identification import pairwise_identification
from bidsrecon.parallel import in_task_threads, map_tasks

#: File names of the weights, as torchvision (and SwAV's authors) publish them.
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
INCEPTION_V3_FILE = "inception_v3_google-0cc3c7bd.pth"
SWAV_FILE = "swav_800ep_pretrain.pth.tar"
#: Images per forward pass: bounds memory at 299 px.
BATCH_SIZE = 16
#: Row order of the table.
NETWORKS = ("AlexNet(2)", "AlexNet(5)", "InceptionV3", "CLIP", "EfficientNet-Lite0", "SwAV")


def build_alexnet():
    """torchvision's AlexNet, untrained."""
    return torchvision.models.alexnet(weights=None)


def build_inception_v3():
    """torchvision's InceptionV3 as its ImageNet weights expect it.

    ``transform_input=True`` is what torchvision sets when it loads those weights: the network
    converts ImageNet-normalised input to the scaling the original Google weights were trained
    with. ``aux_logits=True`` keeps the auxiliary classifier, whose tensors the file holds (it
    does not run in eval mode).
    """
    return torchvision.models.inception_v3(weights=None, aux_logits=True, transform_input=True,
                                           init_weights=False)


def build_swav_resnet50():
    """ResNet-50 without its classifier: SwAV's checkpoint has none."""
    model = torchvision.models.resnet50(weights=None)
    model.fc = nn.Identity()
    return model


def swav_state_dict(state_dict):
    """The backbone tensors of a SwAV checkpoint, named as in torchvision's ResNet-50.

    The authors' training wraps the model in DistributedDataParallel (keys ``module.…``) and
    adds a projection head and cluster prototypes, which the features do not use.
    """
    if set(state_dict) == {"state_dict"} and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    renamed = {key.removeprefix("module."): value for key, value in state_dict.items()}
    return {key: value for key, value in renamed.items()
            if not key.startswith(("projection_head.", "prototypes."))}


#: The torchvision-architecture networks: weights file, builder, rows (name → (fx node, layer
#: description)), input size and what the file holds (for messages).
_TORCHVISION_NETWORKS = (
    {"file": ALEXNET_FILE, "build": build_alexnet, "size": 224, "convert": None,
     "what": "torchvision AlexNet weights (AlexNet_Weights.IMAGENET1K_V1)",
     "rows": {"AlexNet(2)": ("features.4", "features.4: conv2 (features.3) after ReLU"),
              "AlexNet(5)": ("features.11", "features.11: conv5 (features.10) after ReLU")}},
    {"file": INCEPTION_V3_FILE, "build": build_inception_v3, "size": 299, "convert": None,
     "what": "torchvision InceptionV3 weights (Inception_V3_Weights.IMAGENET1K_V1)",
     "rows": {"InceptionV3": ("avgpool", "avgpool: last pooling layer (2048)")}},
    {"file": SWAV_FILE, "build": build_swav_resnet50, "size": 224, "convert": swav_state_dict,
     "what": "SwAV ResNet-50 weights (Caron et al. 2020, 800 epochs)",
     "rows": {"SwAV": ("avgpool", "avgpool: ResNet-50 last pooling layer (2048)")}},
)
_CLIP_LAYER = "final image embedding (ViT-L/14 in the literature)"
_EFFICIENTNET_LAYER = "head after ReLU6, spatial mean (1280): the classifier's input"


@in_task_threads
def feature_identification_table(recons, truths, weights_dir=None, device="cpu"):
    """Two-way identification of reconstructions in the features of each network of the table.

    Parameters
    ----------
    recons, truths : ndarray, shape (n_items, H, W, 3)
        RGB in [0, 1]; item ``i`` of ``truths`` is the image ``recons[i]`` reconstructs. At
        least 2 items.
    weights_dir : str or Path, optional
        A folder searched first for the weight files (under the names in the module's
        docstring), before torch hub's checkpoint folder.
    device : str or torch.device, default="cpu"

    Returns
    -------
    list of dict
        One per network, in the order of :data:`NETWORKS`, with keys ``network``, ``layer``
        (the features used), ``available`` (bool), ``accuracy`` (mean two-way identification,
        chance 0.5; None when not available) and ``note`` (where the weights came from, or why
        the network is not available).
    """
    recons = _check_images(recons, "recons")
    truths = _check_images(truths, "truths")
    if recons.shape != truths.shape:
        raise ValueError(f"Reconstructions have shape {recons.shape}, true images {truths.shape}.")
    if len(recons) < 2:
        raise ValueError("pairwise identification needs at least 2 items")
    device = torch.device(device)
    rows = {}
    for network in _TORCHVISION_NETWORKS:
        rows.update(_torchvision_rows(network, recons, truths, weights_dir, device))
    rows["CLIP"] = _row("CLIP", _CLIP_LAYER, None, _clip_note())
    rows["EfficientNet-Lite0"] = _efficientnet_row(recons, truths, device)
    return [rows[name] for name in NETWORKS]


def find_weights(file_name, weights_dir=None):
    """Where a weight file is: ``weights_dir`` first, then torch hub's checkpoint folder.

    Parameters
    ----------
    file_name : str
    weights_dir : str or Path, optional

    Returns
    -------
    path : Path or None
        The first existing file; None when there is none.
    looked : list of Path
        Every place looked, in order.
    """
    folders = [Path(weights_dir)] if weights_dir is not None else []
    # Read at call time: TORCH_HOME or torch.hub.set_dir may change it.
    folders.append(Path(torch.hub.get_dir()) / "checkpoints")
    looked = [folder / file_name for folder in folders]
    return next((path for path in looked if path.is_file()), None), looked


def load_network(path, build, what, convert=None):
    """A network of ``build``'s architecture with the tensors of the file at ``path``.

    Parameters
    ----------
    path : Path
        A state dict saved by ``torch.save``; read with ``weights_only=True``.
    build : callable returning torch.nn.Module
    what : str
        What the file should hold, for the error message.
    convert : callable, optional
        Applied to the state dict before it is checked (renaming, dropping unused tensors).

    Returns
    -------
    torch.nn.Module
        In eval mode, frozen.

    Raises
    ------
    BidsReconError
        When the file cannot be read, or its keys or shapes are not those of the architecture
        (the message lists the first missing and unexpected keys).
    """
    state_dict = load_state_dict_file(path, what)
    if convert is not None:
        state_dict = convert(state_dict)
    with torch.device("meta"):
        expected = list(build().state_dict())
    # In network order, so that the message starts with the first layers.
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in set(expected)]
    if missing or unexpected:
        raise BidsReconError(f"{path} does not hold {what}: wrong keys, "
                             f"{_some(missing)} missing, {_some(unexpected)} unexpected")
    return build_with_weights(build, state_dict, path, what).eval().requires_grad_(False)


def _torchvision_rows(network, recons, truths, weights_dir, device):
    """The rows of one torchvision-architecture network: identification or why not."""
    path, looked = find_weights(network["file"], weights_dir)
    if path is None:
        note = (f"not available: {network['what']} not found; looked for "
                f"{' and '.join(str(p) for p in looked)}")
        return {name: _row(name, layer, None, note)
                for name, (_, layer) in network["rows"].items()}
    try:
        model = load_network(path, network["build"], network["what"], network["convert"])
    except BidsReconError as error:
        return {name: _row(name, layer, None, f"not available: {error}")
                for name, (_, layer) in network["rows"].items()}
    nodes = {node: name for name, (node, _) in network["rows"].items()}
    with warnings.catch_warnings():
        # InceptionV3's training graph has an auxiliary branch its eval graph lacks, and
        # torchvision warns that the two differ; only eval mode runs here.
        warnings.filterwarnings("ignore", message="NOTE: The nodes obtained by tracing")
        extractor = create_feature_extractor(model, return_nodes=list(nodes))
    extractor = extractor.to(device).eval()

    def forward(batch):
        with torch.no_grad():
            return extractor(_network_input(batch, network["size"], device))

    def features(images):
        batches = _each_batch(forward, images, device)
        return {node: np.concatenate([batch[node].flatten(1).cpu().numpy() for batch in batches])
                for node in nodes}

    recon_features, truth_features = features(recons), features(truths)
    return {name: _row(name, layer,
                       _identification(recon_features[node], truth_features[node]),
                       f"weights {Path(path).name}")
            for name, (node, layer) in network["rows"].items()}


def efficientnet_identification(recons, truths, device="cpu"):
    """Each reconstruction's two-way identification in EfficientNet-Lite0's features.

    The items of the table's ``EfficientNet-Lite0`` row (its accuracy is their mean), for
    comparisons item by item.

    Parameters
    ----------
    recons, truths : ndarray, shape (n_items, H, W, 3)
        RGB in [0, 1], at least 2 items.
    device : str or torch.device, default="cpu"

    Returns
    -------
    encoder_description : str
    scores : ndarray, shape (n_items,)
        Chance 0.5; NaN for an item whose features are constant.

    Raises
    ------
    BidsReconError
        When the network's packaged weights cannot be loaded.
    """
    from bidsrecon.encoders import get_encoder

    encoder = get_encoder("efficientnet-lite0", device=device)

    def forward(batch):
        with torch.no_grad():
            # The encoder normalises its input itself; it only needs the size.
            head = encoder.features(_resize(batch, 224).to(device), ["head"])["head"]
            return F.relu6(head).mean(dim=(2, 3)).cpu().numpy()

    encoder.prepare(["head"])  # traced here, before the batches share the encoder
    scores = pairwise_identification(np.concatenate(_each_batch(forward, recons, device)),
                                     np.concatenate(_each_batch(forward, truths, device)))
    return encoder.description, scores


def _efficientnet_row(recons, truths, device):
    """EfficientNet-Lite0 (bidsrecon's encoder, packaged ImageNet weights)."""
    name = "EfficientNet-Lite0"
    try:
        description, scores = efficientnet_identification(recons, truths, device)
    except BidsReconError as error:
        return _row(name, _EFFICIENTNET_LAYER, None, f"not available: {error}")
    return _row(name, _EFFICIENTNET_LAYER, float(scores.mean()),
                f"{description}; the literature's row is EfficientNet-B1 as a distance")


def _clip_note():
    packages = [name for name in ("open_clip", "clip") if importlib.util.find_spec(name)]
    installed = (f"{' and '.join(packages)} is importable, but bidsrecon does not load CLIP "
                 "through it (its loaders download weights)" if packages
                 else "neither open_clip nor OpenAI's clip package is installed")
    return ("not available: CLIP needs a ViT architecture and weights that bidsrecon does not "
            f"provide; {installed}")


def _identification(recon_features, truth_features):
    return float(pairwise_identification(recon_features, truth_features).mean())


def _row(network, layer, accuracy, note):
    return {"network": network, "layer": layer, "available": accuracy is not None,
            "accuracy": accuracy, "note": note}


def _each_batch(forward, images, device):
    """``forward`` of each batch of ``images``, in order. On the CPU each batch is one task of
    :mod:`bidsrecon.parallel` (one thread each, the batches in parallel): the batches are fixed by
    the items, so the features do not depend on the number of threads."""
    if torch.device(device).type == "cpu":
        return map_tasks(forward, _batches(images))
    return [forward(batch) for batch in _batches(images)]


def _batches(images):
    for start in range(0, len(images), BATCH_SIZE):
        yield torch.from_numpy(np.ascontiguousarray(
            images[start:start + BATCH_SIZE], dtype=np.float32)).permute(0, 3, 1, 2)


def _resize(batch, size):
    """Bilinear, antialiased resize to ``size`` x ``size`` (images here are square)."""
    if batch.shape[-2:] == (size, size):
        return batch
    return F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)


def _network_input(batch, size, device):
    mean = torch.tensor(IMAGENET_MEAN_RGB).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD_RGB).view(1, 3, 1, 1)
    return ((_resize(batch, size) - mean) / std).to(device)


def _check_images(images, name):
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"Expected {name} of shape (n, H, W, 3), got {images.shape}.")
    return images


def _some(keys, shown=3):
    """``3 (a, b, c, ...)``: a count and the first few keys."""
    if not keys:
        return "0"
    more = ", ..." if len(keys) > shown else ""
    return f"{len(keys)} ({', '.join(keys[:shown])}{more})"
