"""Answer accuracy through generation, as a library function and a command:

    python -m coconut_pytorch.evaluate --checkpoint CKPT --data FILE [--device auto] [--limit N] [--num-thoughts K]
    python -m coconut_pytorch.evaluate --checkpoint CKPT --data FILE --predictions predictions.jsonl   # each answer too
    python -m coconut_pytorch.evaluate --checkpoint CKPT --data FILE --show-thoughts 3     # what the thoughts hold
    python -m coconut_pytorch.evaluate --checkpoint CKPT --data FILE --num-samples 8 [--temperature 1.0] [--seed 0]
    python -m coconut_pytorch.evaluate --checkpoint CKPT --data FILE --halt-threshold 0.5 [--max-reasoning-steps N]
    torchrun --standalone --nproc_per_node 2 -m coconut_pytorch.evaluate ...     # the examples shared among processes

Reads the paper's JSON format or iCoT's line format, thinks for the checkpoint's number of thoughts (or K), lets the
model write whatever language steps it was trained to write, and scores the text after the last <sep> against the
gold answer by exact match after whitespace normalisation. Prints one JSON line. With --predictions, also writes one
JSON line per example: question, gold, prediction, correct, and text (everything the model wrote, steps included).
With --show-thoughts N, prints to stderr, for the first N examples, each continuous thought's most likely next tokens
under the model's head, and the answer (`coconut_pytorch.probing`); the JSON line is the same.
With --num-samples K, each question is also answered by K sampled paths from one prefill (`generate(...,
num_samples = K)`, at --temperature, default 1.0): the JSON line adds majority_accuracy (the answer most paths give,
`coconut_pytorch.paths.vote` on the normalised answer texts) and best_of_k_accuracy (the answer of the path of highest
log-probability), beside the greedy accuracy.
With --halt-threshold p (a checkpoint trained with --halt-loss), each question thinks until its halting head's
probability exceeds p, at most --max-reasoning-steps thoughts (default: the checkpoint's number, or --num-thoughts):
`generate(..., halt_threshold = p)`; the JSON line adds mean_num_thoughts, the thoughts used per question on average.
Generation is batched and runs on the KV cache.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from coconut_pytorch.coconut import Coconut
from coconut_pytorch.data.example import Example
from coconut_pytorch.data.loaders import load_examples
from coconut_pytorch.data.tokenizer import Tokenizer
from coconut_pytorch.distributed import World, gather_objects, join_world, leave_world, shard_indices
from coconut_pytorch.helpers import check_device, exists, in_eval_mode, resolve_device
from coconut_pytorch.paths import vote
from coconut_pytorch.probing import show_thoughts
from coconut_pytorch.training.checkpoints import load_trained


def answer_text(tokens: Sequence[int], tokenizer: Tokenizer) -> str:
    """The answer in generated ids: up to <eos>, after the last <sep> (language steps come before it)."""
    tokens = [t for t in tokens if t >= 0]
    if tokenizer.eos_id in tokens:
        tokens = tokens[:tokens.index(tokenizer.eos_id)]
    if tokenizer.sep_id in tokens:
        last_sep = len(tokens) - 1 - tokens[::-1].index(tokenizer.sep_id)
        tokens = tokens[last_sep + 1:]
    return tokenizer.decode(tokens)


def encode_questions(examples: Sequence[Example], tokenizer: Tokenizer, source: str = 'examples') -> list[torch.Tensor]:
    """The questions as id tensors. Each gold answer must encode too: an answer with a word the model cannot write
    would be scored wrong whatever the model did, so it is an error naming the example, not a silent miss."""
    prompts = []
    for index, example in enumerate(examples):
        try:
            prompts.append(torch.tensor(tokenizer.encode_question(example.question), dtype = torch.long))
            written = tokenizer.decode(tokenizer.encode(example.answer))
        except ValueError as error:
            raise ValueError(f'{source}: example {index} cannot be encoded: {error}') from None
        if tokenizer.normalize(written) != tokenizer.normalize(example.answer):
            # a pretrained tokenizer never refuses text, but may not give it back (unknown characters, its normaliser)
            raise ValueError(f'{source}: example {index}: the tokenizer cannot write its answer {example.answer[:60]!r} '
                             f'(it reads back as {written[:60]!r}), so no prediction could match it')
        if len(prompts[-1]) == 0:
            raise ValueError(f'{source}: example {index} has an empty question')
    return prompts


def length_sorted_batches(prompts: Sequence[torch.Tensor], per_batch: int, device: torch.device, progress: Callable | None,
                          desc: str) -> Iterator[tuple[list[int], list[torch.Tensor]]]:
    """`prompts` in batches of `per_batch`, shortest first, as (their indices in `prompts`, the prompts on `device`):
    batches of similar lengths waste less compute on padding (results are exact either way). `progress(iterable,
    **kwargs)` (e.g. tqdm) wraps the batches."""
    order = sorted(range(len(prompts)), key = lambda index: len(prompts[index]))
    offsets = range(0, len(order), per_batch)
    for offset in (progress(offsets, desc = desc, unit = 'batch', leave = False) if progress else offsets):
        indices = order[offset:offset + per_batch]
        yield indices, [prompts[index].to(device) for index in indices]


@torch.no_grad()
def generate_greedy(
    model: Coconut,
    prompts: Sequence[torch.Tensor],
    eos_id: int,
    num_thoughts: int,
    max_new_tokens: int,
    batch_size: int = 256,
    autocast_dtype: torch.dtype | None = None,
    progress: Callable | None = None,
    halt_threshold: float | None = None
) -> list[list[int]] | tuple[list[list[int]], list[int]]:
    """Each prompt's greedily generated ids after `num_thoughts` thoughts, up to and including `eos_id` (or
    `max_new_tokens` ids), in the order of `prompts`; batched, shortest prompts together. `progress(iterable, **kwargs)`
    (e.g. tqdm) wraps the batches. With `halt_threshold`, each prompt thinks until its halting probability exceeds
    it, at most `num_thoughts` thoughts (`generate`'s learned halting), and (ids, each prompt's thoughts) return."""
    device = model.device
    rows = [None] * len(prompts)
    used = [num_thoughts] * len(prompts)
    halting = dict(halt_threshold = halt_threshold, max_reasoning_steps = num_thoughts, return_num_thoughts = True) if exists(halt_threshold) else {}
    with in_eval_mode(model):
        for indices, batch in length_sorted_batches(prompts, batch_size, device, progress, 'held-out answers'):
            with torch.autocast(device.type, dtype = autocast_dtype, enabled = autocast_dtype is not None):
                generated = model.generate(batch, max_length = max_new_tokens, temperature = 0., eos_token_id = eos_id,
                                           num_reasoning_steps = None if halting else num_thoughts, **halting)
            if halting:
                generated, counts = generated
                for index, count in zip(indices, counts.tolist()):
                    used[index] = count
            for index, row in zip(indices, generated.tolist()):
                rows[index] = [token for token in row if token >= 0]
    return (rows, used) if halting else rows


@torch.no_grad()
def sample_paths(
    model: Coconut,
    prompts: Sequence[torch.Tensor],
    eos_id: int,
    num_thoughts: int,
    max_new_tokens: int,
    num_samples: int,
    temperature: float = 1.,
    batch_size: int = 256,
    autocast_dtype: torch.dtype | None = None,
    progress: Callable | None = None,
    seed: int = 0,
    thought_noise: float = 0.
) -> list[tuple[list[list[int]], list[float]]]:
    """Each prompt's `num_samples` sampled paths (`generate(..., num_samples)`: one prefill per prompt), in the order
    of `prompts`: (paths' ids, each up to and including `eos_id`; their log-probabilities), most probable first.
    Batched as `generate_greedy`, `batch_size` paths at a time (at least one prompt's); sampled from a generator
    seeded with `seed`, so a run repeats on the same device and batches. `thought_noise` s > 0 also perturbs each
    path's thoughts with Gaussian noise of scale s (`generate`'s `thought_noise`), so paths differ in latent space too."""
    device = model.device
    generator = torch.Generator(device = device).manual_seed(seed)
    sampled = [None] * len(prompts)
    with in_eval_mode(model):
        for indices, batch in length_sorted_batches(prompts, max(1, batch_size // num_samples), device, progress, 'sampled answers'):
            with torch.autocast(device.type, dtype = autocast_dtype, enabled = autocast_dtype is not None):
                paths = model.generate(batch, max_length = max_new_tokens, temperature = temperature, eos_token_id = eos_id,
                                       num_reasoning_steps = num_thoughts, num_samples = num_samples, generator = generator,
                                       thought_noise = thought_noise)
            for index, rows, log_probs in zip(indices, paths.tokens.tolist(), paths.log_probs.tolist()):
                sampled[index] = ([[token for token in row if token >= 0] for row in rows], log_probs)
    return sampled


def answer_questions(
    model: Coconut,
    tokenizer: Tokenizer,
    questions: Sequence[str],
    num_thoughts: int,
    max_new_tokens: int = 64,
    batch_size: int = 256,
    autocast_dtype: torch.dtype | None = None,
    with_text: bool = False
) -> list[str] | list[tuple[str, str]]:
    """Text in, text out: each question's answer by greedy generation after `num_thoughts` continuous thoughts
    (the text after the last step separator, up to the end token). With `with_text`, (answer, everything the model
    wrote) pairs, so language steps a model was trained to write can be read too.

        model, tokenizer, config, info = load_trained('runs/running_sum-coconut-TIME/checkpoint.pt')
        answer_questions(model, tokenizer, ['3 1 4 1'], num_thoughts = info['num_thoughts'])
    """
    if isinstance(questions, str):
        raise TypeError('questions must be a sequence of str, not one str (wrap it in a list)')
    questions = list(questions)     # a generator is read once
    if not all(isinstance(question, str) for question in questions):
        raise TypeError('questions must be a sequence of str')
    prompts = [torch.tensor(tokenizer.encode_question(question), dtype = torch.long) for question in questions]
    for index, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f'questions[{index}] is empty')
    rows = generate_greedy(model, prompts, tokenizer.eos_id, num_thoughts, max_new_tokens, batch_size, autocast_dtype)
    answers = [answer_text(row, tokenizer) for row in rows]
    return [(answer, tokenizer.decode(row)) for answer, row in zip(answers, rows)] if with_text else answers


def evaluate_examples(
    model: Coconut,
    tokenizer: Tokenizer,
    examples: Sequence[Example],
    num_thoughts: int,
    max_new_tokens: int,
    batch_size: int = 256,
    source: str = 'examples',
    autocast_dtype: torch.dtype | None = None,
    world: World = World(),
    progress: Callable | None = None,
    num_samples: int | None = None,
    temperature: float = 1.,
    seed: int = 0,
    halt_threshold: float | None = None,
    thought_noise: float = 0.
) -> dict:
    """Greedy generation for every example; returns accuracy, n, mean_new_tokens, seconds, the predictions, the texts
    they were read from (everything generated, language steps included) and whether each was correct.

    With `num_samples` K, also K sampled paths per example (`sample_paths`, at `temperature`, from `seed`, thoughts
    perturbed by `thought_noise`), and adds num_samples, temperature, thought_noise, majority_accuracy (the answer text most paths give, ties to the higher summed
    log-probability: `coconut_pytorch.paths.vote`), best_of_k_accuracy (the answer of the most probable path), and
    their per-example majority_predictions and best_of_k_predictions.

    With `halt_threshold` p, the greedy answers halt by the model's halting head (at most `num_thoughts` thoughts;
    `generate_greedy`): adds halt_threshold, mean_num_thoughts and the per-example thoughts_used. Not with
    `num_samples` (a ValueError).

    In a process group (`world`), each rank generates for every `world.size`-th example and the answers are gathered:
    every rank returns what one process would (the sampled paths: with the same seed on each rank)."""
    if len(examples) == 0:
        raise ValueError(f'{source}: no examples to evaluate')
    if exists(halt_threshold) and exists(num_samples):
        raise ValueError('halt_threshold cannot be combined with num_samples: sampled paths think a fixed number of thoughts')

    prompts = encode_questions(examples, tokenizer, source)
    start = time.perf_counter()
    mine = [prompts[index] for index in shard_indices(len(prompts), world)]
    rows = generate_greedy(model, mine, tokenizer.eos_id, num_thoughts, max_new_tokens, batch_size, autocast_dtype, progress, halt_threshold) if mine else []
    thoughts_used = None
    if exists(halt_threshold):
        rows, thoughts_used = rows if mine else ([], [])
        thoughts_used = gather_objects(thoughts_used, world)
    rows = gather_objects(rows, world)
    sampled = None
    if exists(num_samples):
        sampled = sample_paths(model, mine, tokenizer.eos_id, num_thoughts, max_new_tokens, num_samples, temperature, batch_size,
                               autocast_dtype, progress, seed, thought_noise) if mine else []
        sampled = gather_objects(sampled, world)
    seconds = time.perf_counter() - start

    predictions = [answer_text(row, tokenizer) for row in rows]
    texts = [tokenizer.decode(row) for row in rows]
    new_tokens = [len(row) for row in rows]
    is_correct = lambda prediction, example: tokenizer.normalize(prediction) == tokenizer.normalize(example.answer)
    correct = [is_correct(prediction, example) for prediction, example in zip(predictions, examples)]

    result = dict(
        accuracy = sum(correct) / len(correct),
        n = len(correct),
        mean_new_tokens = sum(new_tokens) / len(new_tokens),
        seconds = seconds,
        predictions = predictions,
        texts = texts,
        correct = correct
    )
    if exists(thoughts_used):
        result.update(halt_threshold = halt_threshold, mean_num_thoughts = sum(thoughts_used) / len(thoughts_used), thoughts_used = thoughts_used)
    if not exists(sampled):
        return result

    majority_predictions, best_predictions = [], []
    for paths, log_probs in sampled:
        answers = [answer_text(row, tokenizer) for row in paths]
        # paths vote on what they answer, not on how they got there: language steps may differ
        winner, _ = vote([tokenizer.normalize(answer) for answer in answers], log_probs)
        majority_predictions.append(answers[winner])
        best_predictions.append(answers[0])     # the paths come most probable first

    accuracy_of = lambda chosen: sum(is_correct(prediction, example) for prediction, example in zip(chosen, examples)) / len(examples)
    return dict(
        **result,
        num_samples = num_samples,
        temperature = temperature,
        thought_noise = thought_noise,
        majority_accuracy = accuracy_of(majority_predictions),
        best_of_k_accuracy = accuracy_of(best_predictions),
        majority_predictions = majority_predictions,
        best_of_k_predictions = best_predictions
    )


def write_predictions(examples: Sequence[Example], result: dict, path: str | Path):
    """One JSON line per example of `evaluate_examples`' `result`: question, gold, prediction, correct, text; with
    learned halting, the thoughts it used (num_thoughts); and with sampled paths, the majority and best_of_k predictions."""
    sampled = 'majority_predictions' in result
    with open(path, 'w', encoding = 'utf-8') as file:
        for index, (example, prediction, text, correct) in enumerate(zip(examples, result['predictions'], result['texts'], result['correct'])):
            record = dict(question = example.question, gold = example.answer, prediction = prediction, correct = correct, text = text)
            if 'thoughts_used' in result:
                record.update(num_thoughts = result['thoughts_used'][index])
            if sampled:
                record.update(majority = result['majority_predictions'][index], best_of_k = result['best_of_k_predictions'][index])
            file.write(json.dumps(record, ensure_ascii = False) + '\n')


def main(argv: Sequence[str] | None = None):
    """Evaluate a checkpoint on a data file with the options of `argv` (default `sys.argv[1:]`); print one JSON line."""
    parser = argparse.ArgumentParser(description = 'Answer accuracy of a trained checkpoint on a data file.')
    parser.add_argument('--checkpoint', required = True, help = 'checkpoint.pt written by train_toy.py')
    parser.add_argument('--data', required = True, help = "the paper's JSON format or iCoT's line format")
    parser.add_argument('--device', default = 'auto', help = 'auto (cuda when torch sees a GPU, else cpu), cpu, cuda, cuda:1, ...')
    parser.add_argument('--limit', type = int, default = None, help = 'evaluate the first N examples only')
    parser.add_argument('--num-thoughts', type = int, default = None, help = "continuous thoughts (default: the checkpoint's final stage; 0 = language reasoning)")
    parser.add_argument('--batch-size', type = int, default = 256)
    parser.add_argument('--max-new-tokens', type = int, default = None)
    parser.add_argument('--bf16', action = 'store_true')
    parser.add_argument('--predictions', default = None, help = 'also write one JSON line per example here: question, gold, prediction, correct, text')
    parser.add_argument('--show-thoughts', type = int, default = 0, metavar = 'N',
                        help = "print to stderr, for the first N examples, each thought's top next tokens under the model's head, and the answer")
    parser.add_argument('--num-samples', type = int, default = None, metavar = 'K',
                        help = 'also sample K paths per question from one prefill and report majority_accuracy and best_of_k_accuracy')
    parser.add_argument('--temperature', type = float, default = None, help = 'sampling temperature of the K paths (default 1.0; needs --num-samples)')
    parser.add_argument('--seed', type = int, default = 0, help = "seed of the K paths' sampling (needs --num-samples)")
    parser.add_argument('--thought-noise', type = float, default = None, metavar = 'S',
                        help = "Gaussian noise of scale S on each sampled path's thoughts, so the paths differ in latent space too (default 0; needs --num-samples)")
    parser.add_argument('--halt-threshold', type = float, default = None, metavar = 'P',
                        help = 'learned halting (a checkpoint trained with --halt-loss): stop thinking after the first thought whose halting '
                               'probability exceeds P, in (0, 1); reports mean_num_thoughts')
    parser.add_argument('--max-reasoning-steps', type = int, default = None, metavar = 'N',
                        help = "with --halt-threshold, the most thoughts a question may take (default: --num-thoughts, or the checkpoint's)")
    args = parser.parse_args(argv)

    if args.limit is not None and args.limit < 1:
        parser.error(f'--limit must be >= 1, got {args.limit}')
    if args.num_thoughts is not None and args.num_thoughts < 0:
        parser.error(f'--num-thoughts must be >= 0, got {args.num_thoughts}')
    if args.batch_size < 1:
        parser.error(f'--batch-size must be >= 1, got {args.batch_size}')
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        parser.error(f'--max-new-tokens must be >= 1, got {args.max_new_tokens}')
    if args.show_thoughts < 0:
        parser.error(f'--show-thoughts must be >= 0, got {args.show_thoughts}')
    if args.num_samples is not None and args.num_samples < 1:
        parser.error(f'--num-samples must be >= 1, got {args.num_samples}')
    if args.temperature is not None and (args.num_samples is None or not math.isfinite(args.temperature) or args.temperature < 0):
        parser.error(f'--temperature needs --num-samples and must be a finite number >= 0, got {args.temperature}')
    if args.thought_noise is not None and (args.num_samples is None or not math.isfinite(args.thought_noise) or args.thought_noise < 0):
        parser.error(f'--thought-noise needs --num-samples and must be a finite number >= 0, got {args.thought_noise}')
    if args.halt_threshold is not None and not (math.isfinite(args.halt_threshold) and 0 < args.halt_threshold < 1):
        parser.error(f'--halt-threshold must be in (0, 1), got {args.halt_threshold}')
    if args.halt_threshold is not None and args.num_samples is not None:
        parser.error('--halt-threshold cannot be combined with --num-samples')
    if args.max_reasoning_steps is not None and (args.halt_threshold is None or args.max_reasoning_steps < 1):
        parser.error(f'--max-reasoning-steps needs --halt-threshold and must be >= 1, got {args.max_reasoning_steps}')
    if args.predictions is not None:
        # before the model loads and generates: a path that cannot be written would waste the whole evaluation
        predictions = Path(args.predictions)
        if predictions.is_dir():
            parser.error(f'--predictions {predictions} is a directory')
        if not predictions.parent.is_dir():
            parser.error(f'--predictions: the directory {predictions.parent} does not exist')

    # a device this machine lacks is named before the checkpoint is read (torch's own error there is a traceback)
    try:
        check_device(args.device, '--device')
    except (ValueError, TypeError) as error:
        parser.exit(2, f'error: {error}\n')

    try:
        device = join_world(resolve_device(args.device))      # under torchrun: this rank's device, each rank a share of the examples
        world = World.current()
        model, tokenizer, config, info = load_trained(args.checkpoint, device = device)
        examples = load_examples(args.data)[:args.limit]
        num_thoughts = args.num_thoughts if args.num_thoughts is not None else info['num_thoughts']
        if args.max_reasoning_steps is not None:
            num_thoughts = args.max_reasoning_steps

        result = evaluate_examples(
            model, tokenizer, examples,
            num_thoughts = num_thoughts,
            max_new_tokens = args.max_new_tokens if args.max_new_tokens is not None else info['max_new_tokens'],
            batch_size = args.batch_size,
            source = str(args.data),
            autocast_dtype = torch.bfloat16 if args.bf16 else None,
            world = world,
            num_samples = args.num_samples,
            temperature = args.temperature if args.temperature is not None else 1.,
            seed = args.seed,
            halt_threshold = args.halt_threshold,
            thought_noise = args.thought_noise or 0.
        )
        if world.is_main and args.show_thoughts > 0:
            # one process probes: the model is whole on every rank, and the probe needs no other
            shown = examples[:args.show_thoughts]
            print(show_thoughts(model, tokenizer, [example.question for example in shown], result['predictions'][:len(shown)],
                                num_thoughts = num_thoughts, golds = [example.answer for example in shown],
                                autocast_dtype = torch.bfloat16 if args.bf16 else None), file = sys.stderr, flush = True)
    except ValueError as error:
        # bad files are the user's to fix: say what and where, without a traceback
        parser.exit(2, f'error: {error}\n')
    finally:
        leave_world()

    if world.is_main and args.predictions is not None:
        try:
            write_predictions(examples, result, args.predictions)
        except OSError as error:
            parser.exit(2, f'error: --predictions {args.predictions} could not be written: {error}\n')
    for key in ('predictions', 'texts', 'correct', 'majority_predictions', 'best_of_k_predictions', 'thoughts_used'):
        result.pop(key, None)
    if world.is_main:
        print(json.dumps(dict(**result, num_thoughts = num_thoughts, method = config.method, task = config.task if config.train_file is None else str(config.train_file), data = str(args.data))))


if __name__ == '__main__':
    main()
