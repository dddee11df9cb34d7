"""The stimulus catalogue: names, ids and indices as in ds001506, with their pixels.

Natural images get fake ImageNet stems ``n<WNID>_<imageID>`` and the float-looking
``WNID.imageID`` stimulus ids of ds001506; shapes and letters use the lab's names. The
imagery category mapping is the lab's (REFERENCE.md §3): 1–15 colour shapes, 16 fixation,
17–26 ten natural test images.
"""
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from bidsrecon.simulate import images

# The lab's imagery targets, in category_index order (shape varies fastest).
IMAGERY_SHAPE_COLOURS = ("red", "green", "blue", "white", "black")
IMAGERY_SHAPES = ("smallring", "+", "X")
FIXATION_INDEX = 16
LAB_TEST_IMAGES = (
    "n02416519_12793", "n01443537_22563", "n01677366_18182", "n02128385_20264",
    "n01858441_11077", "n02690373_7713", "n02882301_14188", "n03710193_22225",
    "n04297750_25624", "n04507155_21299",
)
N_IMAGERY_CATEGORIES = 26
LETTERS = "ACEINORSTU"


@dataclass(frozen=True)
class Stimulus:
    """One stimulus image as the events files name it."""

    name: str
    stimulus_id: str
    category_index: int
    image_index: int
    kind: str


@dataclass(frozen=True)
class StimulusSet:
    """All stimuli of a dataset, with their pixels.

    Attributes
    ----------
    stimuli : tuple of Stimulus
    pixels : ndarray, shape (n_stimuli, size, size, 3), uint8
        In the order of ``stimuli``.
    """

    stimuli: tuple
    pixels: np.ndarray

    def of_kind(self, kind):
        """Stimuli of one kind (``training``, ``test``, ``shape``, ``letter``)."""
        return [stimulus for stimulus in self.stimuli if stimulus.kind == kind]

    def row(self, name):
        """Row of a stimulus in ``pixels``."""
        return self._rows[name]

    @cached_property
    def _rows(self):
        return {stimulus.name: index for index, stimulus in enumerate(self.stimuli)}


def shape_name(colour, shape):
    """ds001506 file stem of a colour shape, e.g. ``colorExpStim01_red_square``."""
    colours = tuple(images.SHAPE_COLOURS)
    number = colours.index(colour) * len(images.SHAPE_NAMES) + images.SHAPE_NAMES.index(shape) + 1
    return f"colorExpStim{number:02d}_{colour}_{shape}"


def letter_name(letter):
    """ds001506 file stem of a letter, e.g. ``letter_black_img011_A``."""
    return f"letter_black_img{10 + ord(letter) - ord('A') + 1:03d}_{letter}"


def imagery_target(category_index):
    """Stimulus name the lab maps an imagery category_index to; None for fixation.

    Parameters
    ----------
    category_index : int
        1–26.

    Returns
    -------
    str or None
    """
    if not 1 <= category_index <= N_IMAGERY_CATEGORIES:
        raise ValueError(f"category_index must be in 1..26; got {category_index}")
    if category_index < FIXATION_INDEX:
        colour, shape = divmod(category_index - 1, len(IMAGERY_SHAPES))
        return shape_name(IMAGERY_SHAPE_COLOURS[colour], IMAGERY_SHAPES[shape])
    if category_index == FIXATION_INDEX:
        return None
    return LAB_TEST_IMAGES[category_index - FIXATION_INDEX - 1]


def natural_stimulus_id(name):
    """Float-looking ``WNID.imageID`` id of an ImageNet stem (n01518878_5958 → 1518878.005958)."""
    synset, image = name.split("_")
    return f"{int(synset[1:])}.{int(image):06d}"


def _fake_synsets(count, taken, rng):
    synsets = []
    while len(synsets) < count:
        candidate = int(rng.integers(1_000_000, 5_000_000))
        if candidate not in taken:
            taken.add(candidate)
            synsets.append(candidate)
    return synsets


def _natural_stimuli(names, kind):
    """Index natural stems as ds001506 does: by sorted name and sorted synset, from 1."""
    ordered = sorted(names)
    synsets = sorted({name.split("_")[0] for name in names})
    return [
        Stimulus(name, natural_stimulus_id(name), synsets.index(name.split("_")[0]) + 1,
                 ordered.index(name) + 1, kind)
        for name in names
    ]


def _training_images(preset, rng):
    """Training names and pixels: each fake synset is crops of one source or one texture kind."""
    sources = list(images.TRAINING_PHOTOGRAPHS) + list(images.TEXTURE_KINDS)
    sources = [sources[index] for index in rng.permutation(len(sources))]
    n_categories = -(-preset.n_training_images // preset.training_images_per_category)
    taken = {int(name[1:9]) for name in LAB_TEST_IMAGES}
    synsets = _fake_synsets(n_categories, taken, rng)
    photographs = {}
    per_category = preset.training_images_per_category
    image_ids = np.concatenate([
        rng.choice(np.arange(1, 30000), size=per_category, replace=False) for _ in synsets])
    names, pixels = [], []
    for image in range(preset.n_training_images):
        category = image // per_category
        source = sources[category % len(sources)]
        if source in images.TEXTURE_KINDS:
            pixels.append(images.texture(source, preset.image_size, rng))
        else:
            if source not in photographs:
                photographs[source] = images.load_photograph(source)
            pixels.append(images.photograph_crop(photographs[source], preset.image_size, rng))
        names.append(f"n{synsets[category]:08d}_{int(image_ids[image])}")
    return names, pixels, taken


def _test_images(preset, taken, rng):
    """Test names (the lab's ten imagery targets first) and crops of held-out photographs."""
    extra = _fake_synsets(max(preset.n_test_images - len(LAB_TEST_IMAGES), 0), taken, rng)
    names = list(LAB_TEST_IMAGES[:preset.n_test_images])
    names += [f"n{synset:08d}_{int(rng.integers(1, 30000))}" for synset in extra]
    photographs = [images.load_photograph(name) for name in images.TEST_PHOTOGRAPHS]
    pixels = [
        images.photograph_crop(photographs[index % len(photographs)], preset.image_size, rng)
        for index in range(preset.n_test_images)
    ]
    return names, pixels


def _shapes(preset):
    all_shapes = [(colour, shape) for colour in images.SHAPE_COLOURS for shape in images.SHAPE_NAMES]
    chosen = all_shapes[:preset.n_shapes]
    stimuli = []
    for colour, shape in chosen:
        name = shape_name(colour, shape)
        number = int(name[len("colorExpStim"):len("colorExpStim") + 2])
        stimuli.append(Stimulus(name, str(number), number, number, "shape"))
    pixels = [images.colour_shape(colour, shape, preset.image_size) for colour, shape in chosen]
    return stimuli, pixels


def _letters(preset):
    stimuli, pixels = [], []
    for index, letter in enumerate(LETTERS[:preset.n_letters]):
        name = letter_name(letter)
        stimuli.append(Stimulus(name, str(int(name.split("img")[1][:3])), index + 1, index + 1, "letter"))
        pixels.append(images.centred_text(letter, preset.image_size, 0.6))
    return stimuli, pixels


def make_stimulus_set(preset, rng):
    """Draw every stimulus of a dataset.

    Parameters
    ----------
    preset : SimulationPreset
    rng : numpy.random.Generator

    Returns
    -------
    StimulusSet
        Training, test, shape and letter stimuli, in that order.
    """
    training_names, training_pixels, taken = _training_images(preset, rng)
    test_names, test_pixels = _test_images(preset, taken, rng)
    shape_stimuli, shape_pixels = _shapes(preset)
    letter_stimuli, letter_pixels = _letters(preset)
    stimuli = (_natural_stimuli(training_names, "training") + _natural_stimuli(test_names, "test")
               + shape_stimuli + letter_stimuli)
    pixels = np.stack(training_pixels + test_pixels + shape_pixels + letter_pixels)
    return StimulusSet(tuple(stimuli), pixels)


def available_imagery_categories(stimulus_set):
    """Imagery category indices whose target the dataset contains (fixation always).

    Parameters
    ----------
    stimulus_set : StimulusSet

    Returns
    -------
    list of int
    """
    names = {stimulus.name for stimulus in stimulus_set.stimuli}
    return [
        index for index in range(1, N_IMAGERY_CATEGORIES + 1)
        if imagery_target(index) is None or imagery_target(index) in names
    ]


def misleading_category_names(stimulus_set):
    """The ``category_name`` / ``category_id`` columns of imagery events, index 1–26.

    ds001506 labels the 26 imagery categories with the first 26 natural test synsets,
    which are not what was imagined (REFERENCE.md §3); this mirrors that, cycling
    through the test synsets when there are fewer than 26.

    Returns
    -------
    dict of int to tuple of (str, str)
        category_index → (category_id, category_name).
    """
    synsets = sorted({stimulus.name.split("_")[0] for stimulus in stimulus_set.of_kind("test")})
    labels = {}
    for index in range(1, N_IMAGERY_CATEGORIES + 1):
        synset = synsets[(index - 1) % len(synsets)]
        target = imagery_target(index)
        if target is not None and target.startswith(synset) and len(synsets) > 1:
            # Never name the true target by chance: the labels are meant to mislead.
            synset = synsets[index % len(synsets)]
        labels[index] = (str(int(synset[1:])), synset)
    return labels
