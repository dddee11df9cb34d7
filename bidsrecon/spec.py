"""What is trained on and what is reconstructed: the decoding specification.

A specification names, by BIDS entities and events, the training trials and each test set.
The built-in one, ``ds001506``, matches OpenNeuro ds001506 (Shen et al. 2019) and the simulated
dataset, where the stimulus set is in the session label (REFERENCE.md §3).
"""
import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TrialSet:
    """One set of trials: the training split or one named test set.

    Parameters
    ----------
    name : str
        ``training`` or the test set's name (``natural``, ``shapes``...); used in output names.
    session : str
        Regular expression that the whole session label must match.
    task : str
        The task label.
    event_types : tuple of int
        Events rows kept (ds001506: 1 = stimulus block; 2 = one-back repeat, left out).
    stimulus_column : str
        Events column naming the stimulus.
    stimulus_map : dict, optional
        Maps values of ``stimulus_column`` (as strings) to stimulus names; a value mapped to
        ``None`` has no target (a fixation trial) and is dropped. Values absent from the map are
        an error.
    """

    name: str
    session: str
    task: str
    event_types: tuple = (1,)
    stimulus_column: str = "stimulus_name"
    stimulus_map: dict = field(default=None, hash=False, compare=False)

    def matches(self, session, task):
        """Whether a run with these entities belongs to this set."""
        return task == self.task and re.fullmatch(self.session, session or "") is not None


@dataclass(frozen=True)
class Spec:
    """A decoding specification: the training split and the test sets."""

    name: str
    training: TrialSet
    tests: tuple

    def trial_set_of(self, session, task):
        """The set a run belongs to (training first), or None."""
        for trial_set in (self.training, *self.tests):
            if trial_set.matches(session, task):
                return trial_set
        return None


_SHAPE_COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan", "white", "black")
_SHAPES = ("square", "smallring", "largering", "+", "X")


def shape_stimulus_name(colour, shape):
    """ds001506's name of a shape stimulus: colour-major, shape fastest (``colorExpStim01_red_square``)."""
    index = _SHAPE_COLOURS.index(colour) * len(_SHAPES) + _SHAPES.index(shape) + 1
    return f"colorExpStim{index:02d}_{colour}_{shape}"


# The lab's own imagery code maps category_index to targets; the published category_name column
# is misleading (REFERENCE.md §3): 1-15 shapes, 16 fixation, 17-26 natural test images.
_IMAGERY_SHAPES = [
    shape_stimulus_name(colour, shape)
    for colour in ("red", "green", "blue", "white", "black")
    for shape in ("smallring", "+", "X")
]
_IMAGERY_NATURAL = (
    "n02416519_12793", "n01443537_22563", "n01677366_18182", "n02128385_20264", "n01858441_11077",
    "n02690373_7713", "n02882301_14188", "n03710193_22225", "n04297750_25624", "n04507155_21299",
)
IMAGERY_TARGETS = {
    **{str(i + 1): name for i, name in enumerate(_IMAGERY_SHAPES)},
    "16": None,
    **{str(i + 17): name for i, name in enumerate(_IMAGERY_NATURAL)},
}

DS001506 = Spec(
    name="ds001506",
    training=TrialSet("training", r"perceptionNaturalImageTraining\d+", "perception"),
    tests=(
        TrialSet("natural", r"perceptionNaturalImageTest\d+", "perception"),
        TrialSet("shapes", r"perceptionArtificialImage\d+", "perception"),
        TrialSet("letters", r"perceptionLetterImage\d+", "perception"),
        TrialSet("imagery", r"imagery\d+", "imagery", event_types=(2,), stimulus_column="category_index",
                 stimulus_map=IMAGERY_TARGETS),
    ),
)

SPECS = {"ds001506": DS001506}
