"""How many of a run's generated held-out questions it also trained on, and optionally the held-out examples it did
not, as a JSON file for `python -m coconut_pytorch.evaluate`.

    python scripts/held_out_overlap.py --checkpoint runs/mult4/checkpoint.pt
    python scripts/held_out_overlap.py --epochs 21 --config '{"task": "multiplication", "task_kwargs": {"num_digits_a": 4, "num_digits_b": 4}, "train_size": 20000, "eval_size": 1000, "fresh_data": true, "exclude_held_out": false}'
    python scripts/held_out_overlap.py --checkpoint runs/mult3/checkpoint.pt --unseen runs/mult3/unseen.json
    python -m coconut_pytorch.evaluate --checkpoint runs/mult3/checkpoint.pt --data runs/mult3/unseen.json

Runs with `exclude_held_out` (the default since it was added) never train on a held-out question, and the count is 0
by construction; earlier runs' checkpoints (and `--config` with `"exclude_held_out": false`) drew training sets
without that filter, and the count says how many held-out questions they trained on (RESULTS.md). This regenerates,
from the configuration, every training set the run drew (its first set, and with `fresh_data` one per epoch it
trained) and compares questions. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from coconut_pytorch.training.fresh_sets import fresh_data_seed, generate_excluding  # noqa: E402
from coconut_pytorch.data.loaders import save_json_examples  # noqa: E402
from coconut_pytorch.data.tasks import get_task  # noqa: E402
from coconut_pytorch.training.checkpoints import TRAINING_KEYS  # noqa: E402
from coconut_pytorch.training import TrainConfig, load_run  # noqa: E402
from coconut_pytorch.training.datasets import held_out_questions, load_data  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description = __doc__, formatter_class = argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', default = None)
    parser.add_argument('--config', type = json.loads, default = None, help = 'instead of --checkpoint: TrainConfig settings as JSON')
    parser.add_argument('--epochs', type = int, default = None, help = 'with --config: epochs the run trained')
    parser.add_argument('--unseen', default = None, help = 'write the held-out examples never trained on here (JSON)')
    args = parser.parse_args()

    if (args.checkpoint is None) == (args.config is None) or (args.config is not None and args.epochs is None):
        parser.error('give --checkpoint, or --config with --epochs')
    if args.checkpoint is not None:
        try:
            run = load_run(args.checkpoint, keys = TRAINING_KEYS)
        except ValueError as error:
            parser.exit(2, f'error: {error}\n')
        config, epochs_trained = run.config, run.state['epoch'] + 1
    else:
        config, epochs_trained = TrainConfig(**args.config), args.epochs
    if config.train_file is not None:
        raise ValueError('the run trained on a file, not on generated sets')

    train_set, eval_set, _, _ = load_data(config)
    seen = {example.question for example in train_set}
    if config.fresh_data:
        task = get_task(config.task, **config.task_kwargs)
        excluded = held_out_questions(config, eval_set)
        for epoch in range(1, epochs_trained):
            seen |= {example.question for example in generate_excluding(task, config.train_size, fresh_data_seed(config.seed, epoch), excluded)}

    unseen = [example for example in eval_set if example.question not in seen]
    if args.unseen is not None:
        save_json_examples(unseen, args.unseen)
    print(json.dumps(dict(held_out = len(eval_set), also_trained_on = len(eval_set) - len(unseen), distinct_questions_trained = len(seen),
                          epochs = epochs_trained, unseen_file = args.unseen)))


if __name__ == '__main__':
    main()
