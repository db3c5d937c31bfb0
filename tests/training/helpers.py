"""What the tests of the training side share: the checkout, a toy example and its tokenizer, small and tiny run
settings, and generated data files."""

from pathlib import Path

from coconut_pytorch.data import Example, WordTokenizer, save_json_examples

ROOT = Path(__file__).resolve().parents[2]     # the checkout: train_toy.py is here


EXAMPLE = Example(question = 'q1 q2 q3', steps = ['s1 a', 's2 b', 's3 c', 's4 d'], answer = 'ans')

TOKENIZER = WordTokenizer.from_texts([EXAMPLE.question, *EXAMPLE.steps, EXAMPLE.answer])

SEP, EOS = '<sep>', '<eos>'

# on the CPU wherever the tests run (the device's default, auto, would take a GPU): the tests' figures are the CPU's
SMALL = dict(task = 'running_sum', task_kwargs = dict(num_digits = 3), device = 'cpu', train_size = 512, eval_size = 64, batch_size = 64,
             epochs_per_stage = 1, final_epochs = 1, dim = 32, depth = 1, heads = 2, dim_head = 16, warmup_steps = 5)

TINY = dict(task = 'running_sum', task_kwargs = dict(num_digits = 3), device = 'cpu', train_size = 128, eval_size = 8, batch_size = 32,
            epochs_per_stage = 1, final_epochs = 0, dim = 16, depth = 1, heads = 2, dim_head = 8, num_residual_streams = 1,
            warmup_steps = 0)


def checkpoint_bytes(out: Path) -> bytes:
    return (out / 'checkpoint.pt').read_bytes()


def running_sum_files(tmp_path, train_size = 600, eval_size = 40):
    from coconut_pytorch.data.tasks import get_task
    task = get_task('running_sum', num_digits = 3)
    train_file, eval_file = tmp_path / 'train.json', tmp_path / 'eval.json'
    save_json_examples(task.generate(train_size, seed = 0), train_file)
    save_json_examples(task.generate(eval_size, seed = 1), eval_file)
    return train_file, eval_file
