# moved: coconut_pytorch.training.fresh_sets (this name goes with the tests' move)
from coconut_pytorch.training.fresh_sets import *  # noqa: F401,F403
from coconut_pytorch.training.fresh_sets import fresh_data_seed, generate_epoch, generate_set, held_out_seed  # noqa: F401
