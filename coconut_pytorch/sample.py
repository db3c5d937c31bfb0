"""Answer questions with a trained checkpoint, from the command line (`coconut-sample`):

    python -m coconut_pytorch.sample --checkpoint runs/running_sum-coconut-TIME/checkpoint.pt "3 1 4 1" "2 7 1 8"
    python -m coconut_pytorch.sample --checkpoint CKPT --file questions.txt     # one question per line
    python -m coconut_pytorch.sample --checkpoint CKPT --show-steps "3 1 4 1"   # also what the model wrote before it
    python -m coconut_pytorch.sample --checkpoint CKPT --json "3 1 4 1"         # {"question", "answer", "text"} lines

Greedy, after the checkpoint's own number of continuous thoughts (or --num-thoughts), within its token budget (or
--max-new-tokens). Prints one line per question, `question -> answer`, in the order given (arguments first, then the
file's lines). The same from Python: `coconut_pytorch.load(CKPT).answer(questions)`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence


from coconut_pytorch.helpers import check_device, resolve_device


def read_questions(path: str | Path) -> list[str]:
    """The questions of a file, one a line; blank lines are skipped, surrounding whitespace stripped."""
    try:
        text = Path(path).read_text(encoding = 'utf-8-sig')
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f'--file {path} cannot be read: {error}') from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def main(argv: Sequence[str] | None = None):
    parser = argparse.ArgumentParser(description = __doc__, formatter_class = argparse.RawDescriptionHelpFormatter)
    parser.add_argument('questions', nargs = '*', help = 'questions, each one argument (quote it)')
    parser.add_argument('--checkpoint', required = True, help = 'checkpoint.pt written by coconut-train / train_toy.py')
    parser.add_argument('--file', default = None, help = 'a file of questions, one a line (blank lines skipped)')
    parser.add_argument('--device', default = None, help = 'default: cuda if a GPU is seen, else cpu')
    parser.add_argument('--num-thoughts', type = int, default = None, help = "continuous thoughts (default: the checkpoint's final stage; 0 = language reasoning)")
    parser.add_argument('--max-new-tokens', type = int, default = None, help = "default: the checkpoint's budget")
    parser.add_argument('--batch-size', type = int, default = 256)
    parser.add_argument('--show-steps', action = 'store_true', help = 'also print everything the model wrote (its language steps)')
    parser.add_argument('--json', action = 'store_true', help = 'one JSON object per line: question, answer, text')
    args = parser.parse_args(argv)

    # every mistake in the arguments is said before the checkpoint loads
    if args.num_thoughts is not None and args.num_thoughts < 0:
        parser.error(f'--num-thoughts must be >= 0, got {args.num_thoughts}')
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        parser.error(f'--max-new-tokens must be >= 1, got {args.max_new_tokens}')
    if args.batch_size < 1:
        parser.error(f'--batch-size must be >= 1, got {args.batch_size}')
    if args.device is not None:
        try:
            check_device(resolve_device(args.device), '--device')     # the one device rule of every command
        except (ValueError, TypeError) as error:
            parser.error(str(error))

    try:
        questions = [question.strip() for question in args.questions]
        for index, question in enumerate(questions):
            if not question:
                raise ValueError(f'question {index + 1} is empty')
        if args.file is not None:
            questions += read_questions(args.file)
        if not questions:
            raise ValueError('no questions: give them as arguments or with --file')
        if not Path(args.checkpoint).is_file():
            raise ValueError(f'checkpoint {args.checkpoint} does not exist')

        from coconut_pytorch import load
        run = load(args.checkpoint, device = args.device)
        results = run.answer(questions, num_thoughts = args.num_thoughts, max_new_tokens = args.max_new_tokens,
                             with_text = True, batch_size = args.batch_size)
    except (ValueError, TypeError) as error:
        # a missing or damaged checkpoint, a question the vocabulary cannot encode: the user's to fix, no traceback
        sys.exit(f'error: {error}')

    for question, (answer, text) in zip(questions, results):
        if args.json:
            print(json.dumps(dict(question = question, answer = answer, text = text), ensure_ascii = False))
        else:
            print(f'{question} -> {answer}')
            if args.show_steps:
                print(f'    {text}')


if __name__ == '__main__':
    main()
