"""The :class:`Encoder`: a frozen network that returns pre-activation features by layer name."""
import hashlib
from pathlib import Path

import torch
from torchvision.models.feature_extraction import create_feature_extractor

from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError

#: ImageNet's mean colour (RGB, 0-1): the flat image reconstruction starts from.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
#: Below this, the strided layers of both networks run out of pixels.
MIN_IMAGE_SIZE = 32


class Encoder:
    """A frozen network that returns the features of named layers, taken before the activation.

    Parameters
    ----------
    name : str
        Registry name (see :func:`bidsrecon.encoders.available_encoders`).
    module : torch.nn.Module
        The network; it is put in eval mode and its parameters are frozen.
    layer_nodes : dict of str to str
        Our layer names, in network order, mapped to the torch.fx node names whose outputs
        they are (:func:`torchvision.models.feature_extraction.get_graph_node_names`).
    input_mean, input_std : tuple of 3 floats
        Input normalisation on the 0-1 RGB scale that the weights expect.
    bgr_input : bool, default=False
        The network takes its channels in BGR order (Caffe's); the normalised RGB input is
        reversed along the channel axis.
    description : str
        One line for logs and sidecars: the network and where its weights came from.
    weights_sha256 : str or None
        sha256 of the weight file; None for random weights.
    default_layers : tuple of str, optional
        Layers reconstruction uses unless told otherwise; all layers when omitted.
    leaf_modules : tuple of type, optional
        Module classes that tracing must not enter.
    device : str or torch.device, default="cpu"

    Attributes
    ----------
    layers : tuple of str
        All layer names, in network order.
    is_random : bool
        True when the weights are random (tests only).
    mean_rgb : tuple of 3 floats
        ImageNet's mean colour in [0, 1].
    """

    def __init__(self, name, module, layer_nodes, *, input_mean, input_std, description,
                 weights_sha256, default_layers=None, leaf_modules=(), bgr_input=False,
                 device="cpu"):
        self.name = name
        self.description = description
        self.weights_sha256 = weights_sha256
        self.is_random = weights_sha256 is None
        self.layers = tuple(layer_nodes)
        self.default_layers = tuple(default_layers) if default_layers else self.layers
        self.mean_rgb = IMAGENET_MEAN_RGB
        self.device = torch.device(device)
        self._layer_nodes = dict(layer_nodes)
        self._leaf_modules = list(leaf_modules)
        self._module = module.to(self.device).eval().requires_grad_(False)
        self._input_mean = torch.tensor(input_mean, device=self.device).view(1, 3, 1, 1)
        self._input_std = torch.tensor(input_std, device=self.device).view(1, 3, 1, 1)
        self._bgr_input = bgr_input
        self._extractors = {}

    def __repr__(self):
        return f"Encoder({self.name!r}: {self.description})"

    def check_layers(self, layers):
        """Return ``layers`` in network order; raise if any is not a layer of this encoder.

        Parameters
        ----------
        layers : iterable of str or None
            None selects all layers.

        Returns
        -------
        tuple of str
        """
        if layers is None:
            return self.layers
        layers = set(layers)
        unknown = sorted(layers - set(self.layers))
        if unknown:
            raise BidsReconError(
                f"Unknown layer(s) {unknown} for encoder {self.name!r}; "
                f"valid layers: {', '.join(self.layers)}.")
        if not layers:
            raise ValueError("Expected at least one layer name, got none.")
        return tuple(layer for layer in self.layers if layer in layers)

    def features(self, images, layers=None):
        """Pre-activation features of ``images`` at ``layers``.

        Parameters
        ----------
        images : torch.Tensor, shape (B, 3, H, W)
            RGB in [0, 1], H and W at least 32; the encoder normalises it itself.
        layers : iterable of str, optional
            Layer names; all layers when omitted.

        Returns
        -------
        dict of str to torch.Tensor
            In network order: (B, C, h, w) for convolutional layers, (B, U) for fully
            connected ones, still attached to the autograd graph of ``images``.
        """
        layers = self.check_layers(layers)
        _check_images(images)
        extractor = self._extractor(layers)
        normalised = (images.to(self.device) - self._input_mean) / self._input_std
        return extractor(normalised.flip(1) if self._bgr_input else normalised)

    def layer_shapes(self, image_size, layers=None):
        """Shape of one image's features at each of ``layers``, for images of ``image_size`` pixels.

        From one forward pass of a blank image (no stimulus is read).

        Returns
        -------
        dict of str to tuple of int
            In network order: (C, h, w) for convolutional layers, (U,) for fully connected ones.
        """
        with torch.no_grad():
            features = self.features(torch.zeros(1, 3, image_size, image_size, device=self.device), layers)
        return {layer: tuple(value.shape[1:]) for layer, value in features.items()}

    def prepare(self, layers=None):
        """Trace the feature extractor of ``layers`` now, before threads share the encoder.

        Tracing patches torch's module calls for the whole process while it runs; a forward
        pass in another thread at that moment would be traced too. :mod:`bidsrecon.parallel`'s
        callers prepare their layers in the calling thread before they hand out tasks.
        """
        self._extractor(self.check_layers(layers))

    def _extractor(self, layers):
        """One traced feature extractor per layer selection (tracing costs ~0.1 s)."""
        if layers not in self._extractors:
            extractor = create_feature_extractor(
                self._module, {self._layer_nodes[layer]: layer for layer in layers},
                tracer_kwargs={"leaf_modules": self._leaf_modules})
            self._extractors[layers] = extractor.eval()
        return self._extractors[layers]


def resolve_device(name):
    """torch device for ``auto``, ``cpu``, ``cuda`` or ``mps``; a clear error when absent.

    ``auto`` takes CUDA when available, then Apple's MPS, then the CPU.
    """
    available = {"cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None
                 and torch.backends.mps.is_available(),
                 "cpu": True}
    if name == "auto":
        return torch.device(next(kind for kind in ("cuda", "mps", "cpu") if available[kind]))
    if name not in available:
        raise BidsReconError(f"Unknown device {name!r}; choose auto, cpu, cuda or mps.",
                             EXIT_BAD_ARGUMENTS)
    if not available[name]:
        raise BidsReconError(f"--device {name} was asked for, but torch sees no {name.upper()} "
                             f"device on this machine (torch {torch.__version__}). Use --device "
                             "cpu, or --device auto to take a GPU only when there is one.",
                             EXIT_BAD_ARGUMENTS)
    return torch.device(name)


def _check_images(images):
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise ValueError(f"Expected images as a tensor of shape (B, 3, H, W), got {shape}.")
    if min(images.shape[-2:]) < MIN_IMAGE_SIZE:
        raise ValueError(f"Expected images of at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} "
                         f"pixels, got {images.shape[-2]}x{images.shape[-1]}.")


def file_sha256(path):
    """sha256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_state_dict_file(path, what):
    """Load a state dict with ``torch.load(weights_only=True)``.

    Parameters
    ----------
    path : str or Path
    what : str
        What the file should hold, for the error message (e.g. "VGG19 weights").

    Returns
    -------
    dict of str to Tensor
    """
    path = Path(path)
    if not path.is_file():
        raise BidsReconError(f"{what} file not found: {path}", EXIT_INPUT_MISSING)
    try:
        state_dict = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # torch raises many types for a corrupt or foreign file
        raise BidsReconError(f"Cannot read {what} from {path}: {error}",
                             EXIT_INPUT_MISSING) from error
    if not isinstance(state_dict, dict):
        raise BidsReconError(f"Expected a state dict of {what} in {path}, "
                             f"got a {type(state_dict).__name__}.", EXIT_INPUT_MISSING)
    return state_dict


def build_with_weights(build, state_dict, path, what):
    """Build a module and give it the tensors of ``state_dict`` (all of them, nothing more).

    The module is built on the meta device and the checkpoint's tensors become its parameters:
    no time or memory is spent on an initialisation that would be overwritten (VGG19 has 143M
    parameters). Floating-point tensors are cast to float32.

    Parameters
    ----------
    build : callable returning torch.nn.Module
    state_dict : dict of str to Tensor
    path : str or Path
        Where ``state_dict`` came from, for the error message.
    what : str
        What the file should hold, for the error message.

    Returns
    -------
    torch.nn.Module
    """
    with torch.device("meta"):
        module = build()
    state_dict = {key: value.float() if value.is_floating_point() else value
                  for key, value in state_dict.items()}
    try:
        module.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as error:
        raise BidsReconError(f"{path} does not hold {what}: {error}",
                             EXIT_INPUT_MISSING) from error
    return module


def seeded_init(build, seed):
    """Build a module with torch's global generator seeded, leaving the caller's state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
