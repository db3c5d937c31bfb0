"""Generation: think, then decode, on a preallocated cache.

The prompt runs once into a static cache (`Backbone.static_cache`); every thought step, `<eot>` and each new token
then writes into it in place, so every step after the prompt has fixed shapes and buffer addresses. On CUDA those
steps are captured as CUDA graphs and replayed (`coconut_pytorch.decoding`). A cache and its graphs are kept for
later calls of the same batch size and cache length (`decoders`), per model; they belong to this module, not to the
model or the cache.

The recurrence itself is `Coconut.reason` and `Coconut.finish`, the same code that trains: generation hands them
a `StaticRun` in place of the training-time run over the segment cache.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Mapping
from numbers import Integral
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from coconut_pytorch.backbone import Backbone, BackboneOutput
from coconut_pytorch.decoding import DecodeGraphs
from coconut_pytorch.inputs import PAD_ID, check_finite_number, check_positive_int
from coconut_pytorch.paths import SampledPaths, rank_paths
from coconut_pytorch.sampling import NoTokenToSampleError, gumbel_sample, min_p_filter, unusable_rows
from coconut_pytorch.transformer import autocast_dtype
from coconut_pytorch.helpers import default, exists

if TYPE_CHECKING:
    from coconut_pytorch.coconut import Coconut


# running steps against a static cache

class StaticRun:
    """What `Coconut.reason` and `Coconut.finish` call to run inputs during generation: the backbone's pass into
    its static cache (in place), replayed from a CUDA graph after the prefill when `graphs` is given."""

    def __init__(self, backbone: Backbone, graphs: DecodeGraphs | None = None):
        self.backbone, self.graphs = backbone, graphs

    def __call__(self, inputs: Sequence[Tensor], mask: Tensor | None, cache) -> BackboneOutput:
        if exists(self.graphs) and cache.length > 0:
            return BackboneOutput(self.graphs.step(self.backbone.embed(inputs), mask), cache)
        return self.backbone.forward_with_cache(inputs, mask = mask, cache = cache)


class Decoder(NamedTuple):
    cache: Any                      # the backbone's static cache
    graphs: DecodeGraphs | None     # captured against that cache's buffers, when decoding on CUDA graphs


# per model, the decoders kept for later calls: weakly keyed, so they go with the model, and a copy or a pickle of a
# model carries none (CUDA graphs can be neither)
DECODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

DECODERS_KEPT = 4


def decoders(model: Coconut) -> OrderedDict[tuple, Decoder]:
    """The decoders (static caches with their graphs) kept for `model`, least recently used first."""
    return DECODERS.setdefault(model, OrderedDict())


def decoder(model: Coconut, batch: int, length: int, cuda_graph: bool, compile_steps: bool = False) -> Decoder:
    """An empty static cache for `length` positions; with `cuda_graph`, one (with its graphs) reused across calls."""
    backbone = model.model
    # lengths round up, so prompts of similar lengths share a cache and its graphs
    capacity = -(-length // 64) * 64

    if not cuda_graph:
        return Decoder(backbone.static_cache(batch, capacity, model.device), None)

    # graphs read parameters and buffers at fixed addresses: moving or recasting the model must not reuse them
    dtype = autocast_dtype(model.device.type, default = None)
    key = (batch, capacity, dtype, model.device, model.training, compile_steps, tuple(p.data_ptr() for p in model.parameters()))
    kept = decoders(model)
    found = kept.pop(key, None)

    if exists(found):
        found.cache.reset()
    else:
        cache = backbone.static_cache(batch, capacity, model.device)
        found = Decoder(cache, DecodeGraphs(backbone, cache, compile_steps = compile_steps))

    kept[key] = found
    while len(kept) > DECODERS_KEPT:
        kept.popitem(last = False)
    return found


# checks

def callable_name(fn: Callable) -> str:
    return getattr(fn, '__qualname__', None) or repr(fn)


def check_filtered_shape(filtered, shape: torch.Size):
    if not torch.is_tensor(filtered) or filtered.shape != shape:
        raise ValueError(f'filter_fn must return logits of the shape it was given, {tuple(shape)}, got '
                         f'{tuple(filtered.shape) if torch.is_tensor(filtered) else type(filtered).__name__}')


def check_filter(model: Coconut, filter_fn: Callable[..., Tensor], filter_kwargs: Mapping):
    """Call the filter once on a (1, V) tensor of logits on the model's device, so that a filter or keyword
    arguments that cannot work fail before the prompt runs, naming filter_fn and filter_kwargs."""
    dtype = autocast_dtype(model.device.type, default = model.end_of_thought.dtype)
    logits = torch.linspace(-1., 1., model.num_tokens, device = model.device, dtype = dtype)[None]

    try:
        filtered = filter_fn(logits, **filter_kwargs)
    except Exception as error:
        # a TypeError is most often a keyword filter_fn does not take; anything else, a value it rejects
        kind = TypeError if isinstance(error, TypeError) else ValueError
        raise kind(f'filter_fn {callable_name(filter_fn)} with filter_kwargs {dict(filter_kwargs)!r} failed on logits of shape '
                   f'{tuple(logits.shape)}: {type(error).__name__}: {error}') from error

    check_filtered_shape(filtered, logits.shape)


def no_token_error(unusable_at: Tensor, model_unusable: Tensor, filter_fn: Callable, temperature: float) -> NoTokenToSampleError:
    """The error for rows whose logits left no token to choose (read from the device: only on the way out)."""
    rows = (unusable_at >= 0).nonzero().flatten()
    step = int(unusable_at[rows].min())
    at_step = rows[unusable_at[rows] == step]
    from_model = bool(model_unusable[at_step].any())
    where = f'row{"s" if len(at_step) > 1 else ""} {at_step.tolist()} at generated token {step}'

    if temperature > 0 and not from_model:
        return NoTokenToSampleError(f'filter_fn {callable_name(filter_fn)} left no finite logit to sample from (all -inf, or NaN) in {where}; '
                                    'a filter must keep at least one token per row')
    return NoTokenToSampleError(f"the model's logits hold NaN (or are all -inf) in {where}, so there is no token to "
                                f"{'sample' if temperature > 0 else 'pick greedily'}: its weights or activations are not finite")


# the loop

@torch.no_grad()
def generate(
    model: Coconut,
    prompt: Tensor | Sequence[Tensor],
    max_length: int = 16,
    filter_fn: Callable[..., Tensor] = min_p_filter,
    filter_kwargs: dict | None = None,
    temperature: float = 1.,
    eos_token_id: int | None = None,
    num_reasoning_steps: int | Tensor | None = None,
    generator: torch.Generator | None = None,
    cuda_graph: bool | None = None,
    compile_steps: bool = False,
    num_samples: int | None = None,
    thought_noise: float = 0.,
    halt_threshold: float | None = None,
    max_reasoning_steps: int | None = None,
    return_num_thoughts: bool = False
) -> Tensor | SampledPaths | tuple[Tensor | SampledPaths, Tensor]:
    """`Coconut.generate`: think, then decode up to `max_length` tokens.

    The prompt runs once into a preallocated cache; every thought step, <eot> and each new token then writes
    into it in place. On CUDA those steps are captured as CUDA graphs and replayed (`cuda_graph`, default on
    for CUDA); the cache and its graphs are kept for later calls of the same batch size and cache length.

    Every argument is checked before the prompt runs: `max_length` and `num_reasoning_steps` must leave a
    sequence that could be held (at most `inputs.MAX_SEQUENCE_LENGTH` columns, and keys and values that fit in
    the device's free memory), and when sampling, `filter_fn(logits, **filter_kwargs)` is called once on a
    (1, V) tensor of logits, so a filter that raises, or returns another shape, fails here and not mid-way.

    Args:
        prompt: (b, n) ids with -1 padding, or a list of 1-d id tensors of any lengths.
        max_length: number of tokens to generate.
        filter_fn, filter_kwargs: logit filter applied before sampling (`min_p_filter`, `top_k_filter`, or any
            callable taking logits (b, V) and keyword arguments and returning logits of the same shape).
            A filter that leaves a row nothing to sample (all -inf, or a NaN) raises `NoTokenToSampleError`
            (a ValueError naming filter_fn) instead of yielding token 0.
        temperature: 0. is greedy (the filter is then not applied). Greedy decoding of logits that hold a NaN
            (a model whose weights are not finite) raises `NoTokenToSampleError` too.
        eos_token_id: rows that emit it stop; their later positions are -1.
        num_reasoning_steps: overrides the default; an int or a (b,) tensor.
        generator: a torch.Generator for reproducible sampling.
        cuda_graph: replay decoding steps as CUDA graphs; None = on when the model is on a CUDA device.
        compile_steps: `torch.compile` each decoding step before its graph is captured (needs `cuda_graph`):
            fewer, fused kernels per step; the first call of a shape compiles for tens of seconds.
        num_samples: k, explore k paths per prompt (`coconut_pytorch.paths`). The prompt, <bot> and the thoughts
            run once for the b prompts; the cache is then repeated to b x k rows (each prompt's k adjacent) and k
            answers per prompt are decoded with `temperature` and the filter (temperature 0 gives k copies of the
            greedy answer). Every path draws from `generator` as row i k + j of a batch of the prompts repeated
            k times (`repeat_interleave(k, 0)`) would, so its tokens are those `generate` gives that batch.
        thought_noise: s >= 0, with `num_samples` and continuous thoughts in one stream: s > 0 runs the thought
            steps on the b x k rows (the prompt and <bot> still once on b), adding to every fed-back thought
            independent Gaussian noise of absolute standard deviation s, in the units of the thoughts as fed
            back (the hidden states, or with `thought_rms_match` the token embeddings' RMS times the gain: compare
            s with their RMS), drawn from `generator` before any token is, so the k paths differ in latent space too.
        halt_threshold: p in (0, 1), learned halting (needs `Coconut(halt_loss_weight > 0)`, continuous thoughts
            in one stream, no `num_samples`): each row thinks step by step, up to `max_reasoning_steps`, and stops
            after the first step whose halting probability exceeds p (a row that never crosses it takes them all).
            Rows of a batch stop at different steps, each getting exactly what it gets alone with
            `num_reasoning_steps` = the count it halted at. Always at least one step.
        max_reasoning_steps: with `halt_threshold`, the most steps a row may take (>= 1); default the given int
            `num_reasoning_steps`, else the model's.
        return_num_thoughts: also return (b,) each row's number of thought steps (those it halted at, with
            `halt_threshold`): `(tokens, num_thoughts)`.

    Returns (b, max_length) token ids; with `num_samples`, `SampledPaths(tokens (b, k, max_length), log_probs (b, k),
    sample_index (b, k))`, each prompt's paths sorted by log-probability, highest first (ties in draw order).
    A path's log-probability is the sum, over its generated tokens up to and including eos (nothing after), of the
    model's own log-softmax at temperature 1 before any filter: log p(answer | prompt, thoughts), whatever the
    temperature and filter that sampled it. It is computed in float64 (float32 on MPS, which has no float64),
    whatever the model's dtype.
    """
    check_positive_int(max_length, 'max_length')
    check_finite_number(temperature, 'temperature')
    if not callable(filter_fn):
        raise TypeError(f'filter_fn must be a callable (logits, **filter_kwargs) -> logits, e.g. min_p_filter, got {filter_fn!r}')
    if exists(filter_kwargs) and not isinstance(filter_kwargs, Mapping):
        raise TypeError(f'filter_kwargs must be a dict of keyword arguments for filter_fn, got {type(filter_kwargs).__name__}')
    if exists(eos_token_id) and not (isinstance(eos_token_id, Integral) and not isinstance(eos_token_id, bool) and 0 <= eos_token_id < model.num_tokens):
        raise ValueError(f'eos_token_id must be an int in [0, {model.num_tokens}), got {eos_token_id!r}')
    if exists(generator) and not isinstance(generator, torch.Generator):
        raise TypeError(f'generator must be a torch.Generator, got {type(generator).__name__}')
    if exists(num_samples):
        check_positive_int(num_samples, 'num_samples')
    check_finite_number(thought_noise, 'thought_noise')
    if thought_noise > 0:
        if not exists(num_samples):
            raise ValueError(f'thought_noise = {thought_noise} needs num_samples: the noise sets apart the paths of one prompt')
        if model.thought_mode != 'continuous':
            raise ValueError(f'thought_noise needs continuous thoughts; thought_mode is {model.thought_mode!r}, whose pauses feed nothing back to perturb')
        if model.num_hypotheses > 1:
            raise ValueError(f'thought_noise needs a single thought stream; the model has num_hypotheses = {model.num_hypotheses}')
    if exists(max_reasoning_steps) and not exists(halt_threshold):
        raise ValueError('max_reasoning_steps bounds learned halting: it needs halt_threshold (else give num_reasoning_steps)')
    if exists(halt_threshold):
        check_finite_number(halt_threshold, 'halt_threshold')
        if not 0. < halt_threshold < 1.:
            raise ValueError(f'halt_threshold is a probability to exceed: it must be in (0, 1), got {halt_threshold}')
        if not exists(model.to_halt_logit):
            raise ValueError('halt_threshold needs a halting head: a model made with Coconut(halt_loss_weight > 0)')
        if model.thought_mode != 'continuous':
            raise ValueError(f'halt_threshold decides after each fed-back thought step: it needs thought_mode = "continuous", got {model.thought_mode!r}')
        if model.num_hypotheses > 1:
            raise ValueError(f'halt_threshold needs a single thought stream; the model has num_hypotheses = {model.num_hypotheses}')
        if exists(num_samples):
            raise ValueError('halt_threshold cannot be combined with num_samples (path exploration)')
        if torch.is_tensor(num_reasoning_steps) and num_reasoning_steps.numel() != 1:
            raise ValueError('halt_threshold decides each row\'s steps: num_reasoning_steps must then be one int (the most steps), not per row')
        if exists(max_reasoning_steps):
            check_positive_int(max_reasoning_steps, 'max_reasoning_steps')
        num_reasoning_steps = default(max_reasoning_steps, default(num_reasoning_steps, model.num_reasoning_steps))
        if int(num_reasoning_steps) < 1:
            raise ValueError(f'halt_threshold needs at least one step to decide after: max_reasoning_steps must be >= 1, got {int(num_reasoning_steps)}')
    if not isinstance(return_num_thoughts, bool):
        raise TypeError(f'return_num_thoughts must be a bool, got {type(return_num_thoughts).__name__}')
    device = model.device
    if cuda_graph and device.type != 'cuda':
        raise ValueError(f'cuda_graph = True needs the model on a CUDA device, it is on {device}')
    # a backbone whose decoding step is not fixed in shape (one that grows its cache) says so
    capturable = getattr(model.model, 'graph_capturable', True)
    if cuda_graph and not capturable:
        raise ValueError(f'cuda_graph = True: the decoding steps of {type(model.model).__name__} cannot be captured as CUDA graphs')

    filter_kwargs = default(filter_kwargs, {})
    cuda_graph = default(cuda_graph, device.type == 'cuda' and capturable)
    if compile_steps and not cuda_graph:
        raise ValueError('compile_steps = True needs CUDA graphs (cuda_graph not False, the model on a CUDA device): a compiled step is captured once and replayed')

    aligned, num_steps, row_steps = model.prepare(prompt, num_reasoning_steps)
    prompts, prompt_length = aligned.ids.shape
    # rows decoded: each prompt once, or k times (its paths)
    num_paths = default(num_samples, 1)
    batch = prompts * num_paths

    model.check_sequence_fits(batch, prompt_length, num_steps, 'max_length', max_length, max_length)
    if temperature > 0:
        check_filter(model, filter_fn, filter_kwargs)

    # everything the sequence can hold: prompt, H streams of <bot> and thoughts, <eot>, the new tokens
    cache, graphs = decoder(model, batch, prompt_length + model.thought_columns(num_steps) + max_length, cuda_graph, compile_steps)
    run = StaticRun(model.model, graphs)

    if model.num_hypotheses == 1 and not exists(num_samples):
        reasoned = model.reason(aligned.ids, aligned.mask, num_steps, row_steps, cache = cache, run = run, halt_threshold = halt_threshold)
    else:
        # hypotheses think as b x H rows on the segment cache, then fold into one row each; paths run what they
        # share once on b rows there, then are repeated to b x k rows. The static cache takes over the result
        reasoned = model.reason(aligned.ids, aligned.mask, num_steps, row_steps, num_paths = num_paths,
                                thought_noise = thought_noise, generator = generator)
        cache.load(reasoned.cache)
        reasoned = reasoned._replace(cache = cache)

    logits, _ = model.finish(reasoned, None, None, run = run)

    tokens = torch.full((batch, max_length), PAD_ID, dtype = torch.long, device = device)
    done = torch.zeros(batch, dtype = torch.bool, device = device)

    # per row, the first step whose logits left nothing to choose (all -inf, or a NaN), -1 while none did; and
    # whether the model's own logits were already so there. Kept on the device and read where the loop syncs
    # anyway (the eos check) and once at the end: a check per token would stall the host on every token
    unusable_at = torch.full((batch,), -1, dtype = torch.long, device = device)
    model_unusable = torch.zeros(batch, dtype = torch.bool, device = device)

    # each path's log-probability so far (see the docstring): in float64, so that paths compare, and sum, exactly
    score_dtype = torch.float32 if device.type == 'mps' else torch.float64
    log_probs = torch.zeros(batch, dtype = score_dtype, device = device)

    for index in range(max_length):
        step_logits = logits[:, -1]
        model_logits = step_logits
        model_bad = bad = unusable_rows(step_logits)

        if temperature > 0:
            step_logits = filter_fn(step_logits, **filter_kwargs)
            check_filtered_shape(step_logits, logits[:, -1].shape)
            bad = unusable_rows(step_logits)

        # a row that has ended ignores its logits, whatever they are
        first = bad & ~done & (unusable_at < 0)
        unusable_at = torch.where(first, index, unusable_at)
        model_unusable = model_unusable | (first & model_bad)

        token = gumbel_sample(step_logits, temperature, generator = generator)
        tokens[:, index] = token.masked_fill(done, PAD_ID)

        if exists(num_samples):
            token_log_prob = model_logits.to(score_dtype).log_softmax(dim = -1).gather(-1, token[:, None])[:, 0]
            log_probs = log_probs + token_log_prob.masked_fill(done, 0.)

        if exists(eos_token_id):
            done = done | (token == eos_token_id)
            all_done, any_unusable = torch.stack((done.all(), (unusable_at >= 0).any())).tolist()
            if any_unusable:
                raise no_token_error(unusable_at, model_unusable, filter_fn, temperature)
            if all_done:
                break

        if index == max_length - 1:
            break

        hiddens, _ = run([token[:, None]], None, cache)
        logits = model.model.to_logits(hiddens)

    if bool((unusable_at >= 0).any()):
        raise no_token_error(unusable_at, model_unusable, filter_fn, temperature)

    result = rank_paths(tokens, log_probs, num_paths) if exists(num_samples) else tokens
    if not return_num_thoughts:
        return result

    num_thoughts = reasoned.num_thoughts
    if not exists(num_thoughts):
        num_thoughts = row_steps if exists(row_steps) else torch.full((prompts,), num_steps, dtype = torch.long, device = device)
    # (b,) one count per prompt: with paths, its k paths share them
    return result, num_thoughts
