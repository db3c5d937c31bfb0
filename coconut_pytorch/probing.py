"""What the continuous thoughts say: each thought's hidden state read through the language-model head.

A continuous thought is never decoded during reasoning; it is fed back as the next input embedding. But it is the
last hidden state of its position, so the model's own head turns it into a next-token distribution, and that
distribution shows what the thought holds (the paper reads ProsQA's thoughts this way: a thought that replaced a
breadth-first layer puts its mass on that layer's nodes, several at once).

    probes = thought_distributions(model, tokenizer, questions, num_thoughts = 3)     # probs (b, 3, V), counts (b,)
    top = top_thought_tokens(probes, tokenizer, k = 5)                                 # [example][thought] -> [(text, p)]
    print(format_thoughts(questions, top, answers))

    thought 1: Tom 0.41 | wumpus 0.22 | ...

`python -m coconut_pytorch.evaluate ... --show-thoughts N` prints this for the first N examples, and training
(`--show-thoughts N`) at each held-out evaluation.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from einops import rearrange

from coconut_pytorch.coconut import Coconut
from coconut_pytorch.data.tokenizer import Tokenizer
from coconut_pytorch.helpers import in_eval_mode

DEFAULT_TOP_K = 5
QUESTION_CHARS = 240    # a ProsQA question is over a thousand characters: its start and its query are shown


class ThoughtDistributions(NamedTuple):
    """Each example's thoughts as next-token distributions of the language-model head."""

    probs: Tensor       # (b, N, V) float32; N the most thoughts of any row; a row's slots past its own count are all 0
    counts: Tensor      # (b,) long: the thoughts of each row (its reasoning steps x latents per step)


def check_count(value, name: str):
    """Raise unless `value` is an int >= 1 (TypeError for another kind, ValueError for a smaller one), naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'{name} must be an int, got {type(value).__name__}')
    if value < 1:
        raise ValueError(f'{name} must be >= 1, got {value}')


def check_probe_model(model: Coconut):
    """Raise unless `model` has one stream of continuous thoughts to read."""
    if not isinstance(model, Coconut):
        raise TypeError(f'model must be a Coconut, got {type(model).__name__}')
    if model.num_hypotheses > 1:
        raise ValueError(f'model has {model.num_hypotheses} hypothesis streams; probing reads a single stream (num_hypotheses = 1)')


@torch.no_grad()
def thought_probabilities(
    model: Coconut,
    prompts: Tensor | Sequence[Tensor],
    num_thoughts: int | Tensor | None = None,
    autocast_dtype: torch.dtype | None = None
) -> ThoughtDistributions:
    """The next-token distribution of every continuous thought of one batch of prompts: the softmax of
    `model.model.to_logits` over the hidden state that is fed back (`Intermediates.latent_tokens`).

    Args:
        model: a Coconut with one thought stream; run in eval mode (restored after).
        prompts: (b, n) ids with -1 padding, or a list of 1-d id tensors.
        num_thoughts: reasoning steps, as `num_reasoning_steps` of `Coconut.forward` (default: the model's): an int,
            or a (b,) tensor giving each row its own. Each step makes `model.num_latents_per_step` thoughts.
        autocast_dtype: run the model under autocast in this dtype (e.g. torch.bfloat16); probabilities are float32.

    A pause-token model (`thought_mode = 'pause'`) has nothing fed back: every row gets 0 thoughts.
    """
    check_probe_model(model)
    aligned, num_steps, row_steps = model.prepare(prompts, num_thoughts)
    batch, c = aligned.ids.shape[0], model.num_latents_per_step
    model.check_sequence_fits(batch, aligned.ids.shape[1], num_steps, 'answer', None, 0)

    device = model.device
    with in_eval_mode(model), torch.autocast(device.type, dtype = autocast_dtype, enabled = autocast_dtype is not None):
        # the prompt and the thought recurrence only: <eot> and the answer cannot change what a thought is
        reasoned = model.reason(aligned.ids, aligned.mask, num_steps, row_steps)
        latent_tokens = model.stack_thoughts(reasoned.thoughts, batch)          # (b, N, D)
        logits = model.model.to_logits(latent_tokens)

    probs = logits.float().softmax(dim = -1)
    steps = row_steps if row_steps is not None else torch.full((batch,), num_steps, device = device)
    counts = steps.long() * c if model.thought_mode == 'continuous' else torch.zeros(batch, dtype = torch.long, device = device)

    # a slot past a row's own steps holds whatever a masked input gives (a where, not a product: it may not be finite)
    slot = torch.arange(probs.shape[1], device = device)
    used = rearrange(slot, 'n -> 1 n') < rearrange(counts, 'b -> b 1')
    probs = torch.where(rearrange(used, 'b n -> b n 1'), probs, 0.)
    return ThoughtDistributions(probs, counts)


def thought_distributions(
    model: Coconut,
    tokenizer: Tokenizer,
    questions: Sequence[str],
    num_thoughts: int | Tensor | None = None,
    batch_size: int = 256,
    autocast_dtype: torch.dtype | None = None
) -> ThoughtDistributions:
    """`thought_probabilities` of questions in text, encoded by `tokenizer` and run `batch_size` at a time, in the
    order given. `num_thoughts`: an int, or a (len(questions),) tensor of each question's reasoning steps."""
    if isinstance(questions, str):
        raise TypeError('questions must be a sequence of str, not one str (wrap it in a list)')
    questions = list(questions)
    if len(questions) == 0:
        raise ValueError('questions is empty')
    if not all(isinstance(question, str) for question in questions):
        raise TypeError('questions must be a sequence of str')
    check_count(batch_size, 'batch_size')
    if torch.is_tensor(num_thoughts) and num_thoughts.ndim == 1 and num_thoughts.shape[0] != len(questions):
        raise ValueError(f'num_thoughts must have one entry per question ({len(questions)}), got shape {tuple(num_thoughts.shape)}')

    prompts = []
    for index, question in enumerate(questions):
        ids = tokenizer.encode_question(question)
        if len(ids) == 0:
            raise ValueError(f'questions[{index}] is empty')
        prompts.append(torch.tensor(ids, dtype = torch.long))

    parts = []
    for start in range(0, len(prompts), batch_size):
        steps = num_thoughts[start:start + batch_size] if torch.is_tensor(num_thoughts) and num_thoughts.ndim == 1 else num_thoughts
        parts.append(thought_probabilities(model, [p.to(model.device) for p in prompts[start:start + batch_size]], steps, autocast_dtype))

    # batches may differ in their most thoughts (per-row counts): pad each to the longest with empty slots
    longest = max(part.probs.shape[1] for part in parts)
    probs = torch.cat([torch.nn.functional.pad(part.probs, (0, 0, 0, longest - part.probs.shape[1])) for part in parts])
    return ThoughtDistributions(probs, torch.cat([part.counts for part in parts]))


def token_text(tokenizer: Tokenizer, token: int) -> str:
    """One token as text to show: specials by name, a token that reads as nothing by its repr."""
    text = tokenizer.decode([token], skip_special = False)
    return text if text.strip() else repr(text)


def top_thought_tokens(distributions: ThoughtDistributions, tokenizer: Tokenizer, k: int = DEFAULT_TOP_K) -> list[list[list[tuple[str, float]]]]:
    """Per example, per thought of its own (padding slots are left out), the `k` most likely next tokens as
    (text, probability), most likely first."""
    check_count(k, 'k')
    probs, counts = distributions
    top = probs.topk(min(k, probs.shape[-1]), dim = -1) if probs.shape[1] > 0 else None
    result = []
    for row, count in enumerate(counts.tolist()):
        thoughts = []
        for slot in range(count):
            values, indices = top.values[row, slot].tolist(), top.indices[row, slot].tolist()
            thoughts.append([(token_text(tokenizer, index), value) for index, value in zip(indices, values)])
        result.append(thoughts)
    return result


def shorten(text: str, limit: int = QUESTION_CHARS) -> str:
    """`text`, or its start and end around ' ... ' when longer than `limit` (a ProsQA question's query is last)."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    return text[:head].rstrip() + ' ... ' + text[-(limit - head - 5):].lstrip()


def format_thoughts(
    questions: Sequence[str],
    thoughts: Sequence[Sequence[Sequence[tuple[str, float]]]],
    answers: Sequence[str],
    golds: Sequence[str] | None = None,
    question_chars: int = QUESTION_CHARS
) -> str:
    """A readable block: for each example its question (shortened to `question_chars`), each thought's top tokens
    with their probabilities (`top_thought_tokens`), and the greedy answer (shortened alike: an untrained model
    rambles), with the gold answer if given.

        example 1: Every wumpus is a yumpus. ... Is Tom a lempus or scrompus?
          thought 1: terpus 0.41 | wumpus 0.22 | brimpus 0.09
          answer: Tom is a lempus.   (gold: Tom is a lempus.)
    """
    if not len(questions) == len(thoughts) == len(answers):
        raise ValueError(f'questions, thoughts and answers must have one entry per example, got {len(questions)}, {len(thoughts)} and {len(answers)}')
    if golds is not None and len(golds) != len(questions):
        raise ValueError(f'golds must have one entry per example ({len(questions)}), got {len(golds)}')
    lines = []
    for index, (question, example_thoughts, answer) in enumerate(zip(questions, thoughts, answers)):
        lines.append(f'example {index + 1}: {shorten(question, question_chars)}')
        if len(example_thoughts) == 0:
            lines.append('  (no continuous thoughts)')
        for number, tokens in enumerate(example_thoughts, start = 1):
            lines.append(f'  thought {number}: ' + ' | '.join(f'{text} {probability:.2f}' for text, probability in tokens))
        gold = f'   (gold: {golds[index]})' if golds is not None else ''
        lines.append(f'  answer: {shorten(answer, question_chars)}{gold}')
    return '\n'.join(lines)


def show_thoughts(
    model: Coconut,
    tokenizer: Tokenizer,
    questions: Sequence[str],
    answers: Sequence[str],
    num_thoughts: int | None = None,
    golds: Sequence[str] | None = None,
    k: int = DEFAULT_TOP_K,
    autocast_dtype: torch.dtype | None = None
) -> str:
    """`format_thoughts` of `questions` with their (already generated) greedy `answers`: the thoughts are probed here
    with `num_thoughts` reasoning steps, as the answers were generated."""
    probes = thought_distributions(model, tokenizer, questions, num_thoughts, autocast_dtype = autocast_dtype)
    return format_thoughts(questions, top_thought_tokens(probes, tokenizer, k), answers, golds)
