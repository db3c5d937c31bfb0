# moved: coconut_pytorch.training.step (this name goes with the tests' move)
from coconut_pytorch.training.step import *  # noqa: F401,F403
