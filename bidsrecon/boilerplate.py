"""The methods boilerplate: what a run did, in words a paper's methods section can take, with the
versions and references (as fMRIPrep writes ``logs/CITATION.md``).

Made from the run's settings alone (:class:`bidsrecon.config.Config`), so ``--boilerplate-only``
writes it without reading the data; the participant reports show it too.
"""
import platform
from importlib.metadata import PackageNotFoundError, version

from bidsrecon import __version__

CITATION_FILE = "logs/CITATION.md"

REFERENCES = {
    "shen2019": "Shen G, Horikawa T, Majima K, Kamitani Y (2019). Deep image reconstruction from human brain "
                "activity. PLoS Comput Biol 15(1): e1006633. doi:10.1371/journal.pcbi.1006633",
    "horikawa2017": "Horikawa T, Kamitani Y (2017). Generic decoding of seen and imagined objects using "
                    "hierarchical visual features. Nat Commun 8: 15037. doi:10.1038/ncomms15037",
    "nipype": "Gorgolewski K, Burns CD, Madison C, et al. (2011). Nipype: a flexible, lightweight and extensible "
              "neuroimaging data processing framework in Python. Front Neuroinform 5: 13. doi:10.3389/fninf.2011.00013",
    "baker2004": "Baker S, Matthews I (2004). Lucas-Kanade 20 years on: a unifying framework. Int J Comput Vis "
                 "56(3): 221-255. doi:10.1023/B:VISI.0000011205.11775.fd",
    "fmriprep": "Esteban O, Markiewicz CJ, Blair RW, et al. (2019). fMRIPrep: a robust preprocessing pipeline for "
                "functional MRI. Nat Methods 16: 111-116. doi:10.1038/s41592-018-0235-4",
    "pytorch": "Paszke A, Gross S, Massa F, et al. (2019). PyTorch: an imperative style, high-performance deep "
               "learning library. NeurIPS 32: 8024-8035",
    "vgg19": "Simonyan K, Zisserman A (2015). Very deep convolutional networks for large-scale image recognition. "
             "ICLR. arXiv:1409.1556",
    "efficientnet": "Tan M, Le QV (2019). EfficientNet: rethinking model scaling for convolutional neural "
                    "networks. ICML. arXiv:1905.11946",
    "dgn": "Dosovitskiy A, Brox T (2016). Generating images with perceptual similarity metrics based on deep "
           "networks. NeurIPS 29",
    "lbfgs": "Liu DC, Nocedal J (1989). On the limited memory BFGS method for large scale optimization. Math "
             "Program 45: 503-528. doi:10.1007/BF01589116",
    "dumoulin2008": "Dumoulin SO, Wandell BA (2008). Population receptive field estimates in human visual cortex. "
                    "NeuroImage 39(2): 647-660",
    "kay2013": "Kay KN, Winawer J, Mezer A, Wandell BA (2013). Compressive spatial summation in human visual "
               "cortex. J Neurophysiol 110(2): 481-494",
    "lee1980": "Lee JS (1980). Digital image enhancement and noise filtering by use of local statistics. IEEE "
               "Trans Pattern Anal Mach Intell 2(2): 165-168. doi:10.1109/TPAMI.1980.4766994",
    "ssim": "Wang Z, Bovik AC, Sheikh HR, Simoncelli EP (2004). Image quality assessment: from error visibility "
            "to structural similarity. IEEE Trans Image Process 13(4): 600-612. doi:10.1109/TIP.2003.819861",
}

OPTIMISER_TEXT = {
    "lbfgs": "L-BFGS [lbfgs] over the pixels of an image parameterised through a sigmoid",
    "gd": "gradient descent with momentum over the pixels, as in the Kamitani lab's icnn",
    "generator": "gradient descent with momentum over the latent of a deep generator network [dgn]",
}


def methods_text(config):
    """The boilerplate of a run with ``config``, as Markdown."""
    versions = {package: _version(package) for package in ("nipype", "torch", "nilearn", "scikit-image")}
    encoder = "VGG19 [vgg19]" if config.encoder.startswith("vgg19") else f"{config.encoder} [efficientnet]"
    if config.derivatives:
        preprocessing = ("The runs preprocessed by fMRIPrep [fmriprep] were used (bold, brain mask and confounds "
                         f"in space {config.space}); the confounds were regressed out of each run.")
        if config.confounds_strategy:
            preprocessing += (f" The confounds were those of nilearn's '{config.confounds_strategy}' denoising "
                              f"strategy (load_confounds_strategy, nilearn {versions['nilearn']}), and the trials "
                              "whose window held a volume it censors were left out.")
    else:
        preprocessing = ("Each run was realigned to the mean of the first training run after realignment "
                         "(rigid body, inverse-compositional Gauss-Newton [baker2004] with a linear intensity "
                         f"field, bidsrecon's own){', with slice-timing correction' if config.slice_timing else ''}; "
                         "the six motion parameters were regressed out of each run.")
    normalise = ("normalised to the run's rest baseline (percent signal change from the mean of the rest volumes)"
                 if config.normalise in (None, "rest") else "z-scored within the run")
    decoder = ("A kernel ridge decoder [horikawa2017] was fitted per layer on the training trials, its penalty "
               "chosen by cross-validation over training images, and every unit of every layer was decoded by "
               "streaming the training images' features"
               if config.decoder != "fastl2lir" else
               "Each unit was decoded by its own ridge regression on the 500 voxels most correlated with it, as "
               "in the Kamitani lab's FastL2LiR")
    decoder += (f"; the training images' features were precomputed ones, read from {config.features_dir} (the "
                "Kamitani lab's layout), not computed by the encoder" if config.features_dir else "")
    if config.decoders_dir and config.bdata_dir:
        decoder = ("The Kamitani lab's trained FastL2LiR decoders (" + str(config.decoders_dir) + ", the brain-decoding "
                   "cookbook's layout) were applied as trained, each unit's ridge regression on the voxels of "
                   f"{config.bdata_roi} in the files' own column order; the training features' mean and SD of each "
                   "unit came from the decoders' files")
    elif config.decoders_dir:
        decoder = ("A decoder saved by an earlier run (" + str(config.decoders_dir) + ") was applied; it had been "
                   "fitted as follows. " + decoder)
    layers = ", ".join(config.layers) if config.layers else "its default layers"
    samples = (
        f"{preprocessing} The first {config.discard_seconds:g} s of every run were left out, each voxel's time "
        f"course was {normalise}, and values beyond {config.clip_sd:g} SD were clipped. Each trial's sample was "
        f"the mean of the volumes of its block shifted by {config.delay_seconds:g} s for the haemodynamic delay "
        f"({config.samples} samples); the trials of each test item were averaged.")
    if config.bdata_dir:
        samples = (f"The samples were the Kamitani lab's preprocessed BData files ({config.bdata_dir}), one per "
                   "stimulus block as the lab made them, taken as they are; the voxels of "
                   f"{config.bdata_roi}. The trials of each test item were averaged.")
    lines = [
        "# Methods",
        "",
        f"Images were reconstructed from brain activity with bidsrecon {__version__}, which follows Shen et al. "
        f"(2019) [shen2019], within Nipype {versions['nipype']} [nipype] and PyTorch {versions['torch']} "
        f"[pytorch] (Python {platform.python_version()}).",
        "",
        f"**Preprocessing.** {samples}",
        "",
        f"**Decoding.** The features of {encoder} ({layers}, images at {config.image_size} px) were decoded from "
        f"the voxels. {decoder}."
        + _small_image_text(config),
        "",
        f"**Reconstruction.** Each image was optimised so that its features matched the decoded ones, by "
        f"{OPTIMISER_TEXT[config.optimiser]}, {config.iterations} iterations, the decoded features corrected "
        f"first ({config.feature_correction}); the loss summed over layers the squared error of the features, "
        f"each layer weighted by the inverse of its decoded features' squared norm, plus the decoded small "
        f"image's term (weight {config.pixel_weight:g}).",
        "",
        "**Evaluation.** Reconstructions were scored by pairwise identification by pixel correlation (chance "
        "0.5) with a permutation test, by pixel correlation and by SSIM [ssim] on grayscale images "
        f"(scikit-image {versions['scikit-image']}).",
        "",
        "## References",
        "",
        *[f"- [{key}] {text}" for key, text in REFERENCES.items() if _cited(key, config)],
        "",
    ]
    return "\n".join(lines)


def _small_image_text(config):
    """What the decoding paragraph says of the 32-px image (a saved decoder decodes it as the ridge)."""
    if config.decoders_dir and config.bdata_dir:
        return ""
    if _prf_small_image(config):
        return (" A 32-pixel image (luminance and colour) was decoded by inverting a model of each voxel fitted on "
                "the training images: a Gaussian population receptive field [dumoulin2008] pooling the image's "
                "luminance, colour opponency and compressed contrast energy [kay2013]; the image was the most "
                "probable under that model and a Gaussian prior fitted on the training images. Its luminance was "
                "then passed through a local Wiener filter [lee1980] with the variance that measurement noise alone "
                "gives each pixel under the model, which sets what noise alone would paint back to the prior mean.")
    return " A 32-pixel image (luminance and colour) was decoded in the same way."


def _prf_small_image(config):
    return config.pixel_decoder == "prf" and not config.decoders_dir and config.decoder != "fastl2lir"


def _cited(key, config):
    if key in ("dumoulin2008", "kay2013", "lee1980"):
        return _prf_small_image(config)
    if key == "fmriprep":
        return bool(config.derivatives)
    if key == "baker2004":
        return not config.derivatives and not config.bdata_dir
    if key == "vgg19":
        return config.encoder.startswith("vgg19")
    if key == "efficientnet":
        return not config.encoder.startswith("vgg19")
    if key == "dgn":
        return config.optimiser == "generator"
    if key == "lbfgs":
        return config.optimiser == "lbfgs"
    return True


def _version(package):
    try:
        return version(package)
    except PackageNotFoundError:
        return "(not installed)"
