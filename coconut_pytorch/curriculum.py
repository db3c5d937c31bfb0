# moved: coconut_pytorch.training.schedule and coconut_pytorch.training.batches (this name goes with the tests' move)
from coconut_pytorch.training.batches import *  # noqa: F401,F403
from coconut_pytorch.training.batches import thought_targets, words_per_thought  # noqa: F401
from coconut_pytorch.training.schedule import ALIGNABLE_METHODS, METHODS, PAUSE_METHODS, Curriculum  # noqa: F401
