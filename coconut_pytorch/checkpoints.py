# moved: coconut_pytorch.training.checkpoints (this name goes with the tests' move)
from coconut_pytorch.training.checkpoints import *  # noqa: F401,F403
