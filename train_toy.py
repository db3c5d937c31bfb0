"""Train Coconut on a reasoning task, from scratch, with the paper's curriculum.

    python train_toy.py                                  # running sums on CPU, about a minute
    python train_toy.py --task prosqa --device cuda --bf16 --cuda-graphs   # graph-replayed steps: several times faster
    python train_toy.py --train-file prosqa_train.json --eval-file prosqa_valid.json   # the paper's data files
    python train_toy.py --method cot                     # or no_cot, pause, coconut_no_curriculum, ...
    python train_toy.py --resume                         # continue the run in --out where it stopped
    python train_toy.py --hf-model path/to/gpt2 --lr 1e-4   # a pretrained transformers model and its tokenizer

The last line printed is one JSON object: accuracy (exact match through generation on held-out examples), n,
seconds, method, task, and more.
"""

import argparse
import json
import signal
import sys

from tqdm import tqdm

from coconut_pytorch.curriculum import METHODS
from coconut_pytorch.data.tasks import TASKS
from coconut_pytorch.training import TrainConfig, json_safe, train


def parse_args():
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description = __doc__, formatter_class = argparse.RawDescriptionHelpFormatter)
    arg = parser.add_argument

    arg('--task', default = defaults.task, choices = sorted(TASKS))
    arg('--task-kwargs', type = json.loads, default = {}, help = 'JSON settings for the task, e.g. \'{"num_digits_a": 5, "num_digits_b": 5}\'')
    arg('--method', default = defaults.method, choices = METHODS)
    arg('--c-thought', type = int, default = defaults.c_thought, help = 'continuous thoughts per replaced step')
    arg('--max-latent-stage', type = int, default = None, help = "default: the task's largest number of steps")
    arg('--epochs-per-stage', type = int, default = defaults.epochs_per_stage)
    arg('--final-epochs', type = int, default = defaults.final_epochs)
    arg('--no-pad-latent-to-max', dest = 'pad_latent_to_max', action = 'store_false')
    arg('--uniform-prob', type = float, default = defaults.uniform_prob)
    arg('--one-thought-at-a-time', action = 'store_true')
    arg('--tokens-per-stage', type = int, default = None, help = "each stage removes this many language tokens instead of a whole step (with --method no_thoughts: iCoT's stepwise internalization)")
    arg('--removal-smoothing', type = float, default = None, help = "with --tokens-per-stage: iCoT's removal smoothing rate lambda (iCoT uses 4)")
    arg('--thought-loss', type = float, default = defaults.thought_loss, help = 'weight of a loss aligning each continuous thought with the words of the step it replaced (0: off, as in the paper)')
    arg('--rewarm-each-stage', action = 'store_true', help = 'warm the learning rate up again after each optimizer reset')
    arg('--train-size', type = int, default = defaults.train_size)
    arg('--fresh-data', action = 'store_true', help = 'generate a new training set of --train-size every epoch')
    arg('--eval-size', type = int, default = defaults.eval_size)
    arg('--no-exclude-held-out', dest = 'exclude_held_out', action = 'store_false',
        help = 'let generated training sets ask held-out questions (as runs before this option did)')
    arg('--train-file', default = None, help = "train on the paper's JSON or iCoT's lines instead of --task (--train-size is then unused)")
    arg('--eval-file', default = None, help = 'report accuracy on these examples (default: generated, or --eval-size split off --train-file)')
    arg('--batch-size', type = int, default = defaults.batch_size)
    arg('--grad-accum', type = int, default = defaults.grad_accum)
    arg('--lr', type = float, default = defaults.lr)
    arg('--warmup-steps', type = int, default = defaults.warmup_steps, help = 'linear learning-rate warmup, in optimizer steps')
    arg('--lr-decay-epochs', type = float, default = defaults.lr_decay_epochs, help = "the run's last N epochs take the learning rate linearly to 0 (0: constant to the end)")
    arg('--hf-model', default = None, help = 'train a pretrained transformers causal LM (a local folder with its tokenizer) instead of a '
        'new model; --dim, --depth, --heads, --dim-head and --num-residual-streams are then unused (needs pip install "coconut-pytorch[hf]")')
    arg('--download', action = 'store_true', help = 'let --hf-model name a model to fetch from the Hugging Face hub')
    arg('--dim', type = int, default = defaults.dim)
    arg('--depth', type = int, default = defaults.depth)
    arg('--heads', type = int, default = defaults.heads)
    arg('--dim-head', type = int, default = defaults.dim_head)
    arg('--num-residual-streams', type = int, default = defaults.num_residual_streams)
    arg('--checkpoint-activations', dest = 'checkpoint', action = 'store_true', help = 'recompute thought steps in backward')
    arg('--device', default = defaults.device)
    arg('--bf16', action = 'store_true')
    arg('--compile', action = 'store_true')
    arg('--cuda-graphs', action = 'store_true', help = 'replay each batch shape\'s training step as a CUDA graph (the step is host-bound on a GPU)')
    arg('--seed', type = int, default = defaults.seed)
    arg('--time-budget', type = float, default = None, help = 'seconds; stop after the epoch that crosses it, --resume later')
    arg('--max-nonfinite-steps', type = int, default = defaults.max_nonfinite_steps,
        help = 'optimizer steps with a non-finite loss or gradient are skipped; this many in a row stop the run as diverged')
    arg('--out', default = 'runs/toy')
    arg('--resume', action = 'store_true', help = 'continue the run in --out where it stopped (the same arguments)')
    arg('--overwrite', action = 'store_true', help = 'replace the run already in --out (without it, a new run refuses to)')
    arg('--allow-changed-data', action = 'store_true', help = 'with --resume: continue although --train-file or --eval-file changed since the checkpoint')
    return parser.parse_args()


def exit_on_sigterm(signum, frame):
    # as Ctrl-C does: unwind, so the data workers stop and the run's lock is released (SIGKILL needs neither:
    # the workers watch this process, and the kernel drops the lock)
    raise SystemExit(128 + signum)


def main():
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    args = vars(parse_args())
    out, resume, overwrite, allow_changed_data = args.pop('out'), args.pop('resume'), args.pop('overwrite'), args.pop('allow_changed_data')
    # a bad setting or data file is the user's to fix: say what and where, without a traceback
    try:
        config = TrainConfig(**args)
    except (ValueError, TypeError) as error:
        sys.exit(f'error: {error}')
    try:
        result = train(config, out, resume = resume, progress = tqdm, overwrite = overwrite, allow_changed_data = allow_changed_data)
    except ValueError as error:
        sys.exit(f'error: {error}')
    print(json.dumps(json_safe(result), allow_nan = False))
    if result.get('stopped') == 'diverged':
        sys.exit(f'error: {result["reason"]}')


if __name__ == '__main__':
    main()
