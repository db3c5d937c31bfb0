"""The test suite's small training run (tests/training/test_loop.py::test_training_run_learns) at a seed and a
thought-loss weight, for RESULTS.md's comparison of the two objectives on it:

    python scripts/small_run_seeds.py --seed 1 --thought-loss 1
"""
import argparse
import tempfile

import torch

from coconut_pytorch.training import TrainConfig, train

parser = argparse.ArgumentParser(description = __doc__, formatter_class = argparse.RawDescriptionHelpFormatter)
parser.add_argument('--seed', type = int, default = 0)
parser.add_argument('--thought-loss', type = float, default = 0.)
args = parser.parse_args()
torch.set_num_threads(1)
config = TrainConfig(method = 'coconut', task = 'running_sum', task_kwargs = dict(num_digits = 3), train_size = 1000, eval_size = 200,
                     batch_size = 64, epochs_per_stage = 2, final_epochs = 10, dim = 64, depth = 2, heads = 4, dim_head = 16, lr = 2e-3,
                     seed = args.seed, thought_loss = args.thought_loss)
result = train(config, tempfile.mkdtemp())
history = torch.load(result['checkpoint'], weights_only = True)['history']
print(dict(seed = args.seed, thought_loss = args.thought_loss, accuracy = result['accuracy'],
           last_token_accuracies = [round(h['token_accuracy'], 3) for h in history[-3:]]))
