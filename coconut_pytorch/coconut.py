"""Coconut: Chain of Continuous Thought (Hao et al., 2024).

After the prompt and a learned `<bot>` marker, the model thinks for `num_reasoning_steps` steps: the last hidden
states of one step are fed back, as they are, as the input embeddings of the next. Then a learned `<eot>` marker,
then the answer in language. Gradients flow through every thought.

The sequence, for S steps of c latents each (the KV cache holds all of it):

    prompt | <bot> x c | thought_1 x c | ... | thought_S x c | <eot> | answer
              -> thought_1  -> thought_2        -> (last thought's output unused)  -> answer[0] ...

Every row may have its own number of steps (a (b,) tensor): rows with fewer steps leave their later thought slots
masked, so a mixed batch gives each example exactly what it gets alone. Rows with 0 steps have no markers at all:
prompt then answer, as a plain language model, so CoT and no-CoT baselines train the same module.

Shapes: b batch, n prompt length, m answer length, c latents per step, S steps, H hypotheses, D model dim, V vocab.
"""

from __future__ import annotations

from functools import wraps
from numbers import Integral
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import Module
from torch.utils.checkpoint import checkpoint as checkpoint_fn

from einops import rearrange, repeat

from coconut_pytorch import generation
from coconut_pytorch.backbone import Backbone, BackboneOutput, is_backbone
from coconut_pytorch.inputs import (PAD_ID, AlignedPrompt, as_padded_ids, check_finite_number, check_positive_int, check_reasoning_steps,
                                    check_sequence_fits, left_align)
from coconut_pytorch.kv_cache import KVCache, join_masks
from coconut_pytorch.transformer import Transformer
from coconut_pytorch.helpers import default, exists


def accepts_legacy_positional_order(order: tuple[str, ...]):
    """coconut-pytorch 0.0.32 took the transformer second (`Coconut(3, dict(num_tokens = ..., ...))`), this package
    takes `num_latents_per_step` second, as its keyword examples read. A call whose second positional argument is a
    transformer or its settings binds all its positional arguments in the old `order` instead."""
    def decorate(init):
        @wraps(init)
        def init_in_either_order(self, *args, **kwargs):
            if len(args) >= 2 and (isinstance(args[1], dict) or is_backbone(args[1])):
                if len(args) > len(order):
                    raise TypeError(f'{type(self).__name__} takes at most {len(order)} positional arguments in the 0.0.32 order {order}, got {len(args)}')
                for name, value in zip(order, args):
                    if name in kwargs:
                        raise TypeError(f'{type(self).__name__} got multiple values for argument {name!r}')
                    kwargs[name] = value
                args = ()
            return init(self, *args, **kwargs)
        return init_in_either_order
    return decorate


# outputs

class Intermediates(NamedTuple):
    prompt_logits: Tensor | None    # (b, n, V), in the columns of the prompt as given
    latent_tokens: Tensor           # (b, S * c, D) thoughts in sequence order; (b, H, S * c, D) with hypotheses; in
                                    # pause mode the outputs at <bot> and the pauses but the last (nothing fed back)
    answer_logits: Tensor           # (b, m, V) logits predicting each answer token; (b, 1, V) with no answer
    cache: KVCache                  # everything up to the end of what was run


class LossBreakdown(NamedTuple):
    answer_loss: Tensor
    begin_thought_loss: Tensor | None
    thought_loss: Tensor | None = None
    hypothesis_similarity_loss: Tensor | None = None
    align_mse_loss: Tensor | None = None       # `Coconut.align_losses`, with thought targets and a weight > 0
    align_cosine_loss: Tensor | None = None
    halt_loss: Tensor | None = None            # `Coconut.halt_loss`, with `halt_after` and a halting head
    thought_token_loss: Tensor | None = None   # `Coconut.thought_token_loss`, with `thought_tokens` and the heads


def check_integer_tensor(value, name: str, shape: str = ''):
    """Raise a TypeError naming `name` unless `value` is a tensor of integers (not bool, float or complex)."""
    if not torch.is_tensor(value) or value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f'{name} must be a {shape}integer tensor, got {value.dtype if torch.is_tensor(value) else type(value).__name__}')


class ThoughtMix(NamedTuple):
    """The embedding-mixing schedule's blend of the fed-back thoughts (`Coconut.forward`'s `thought_mix`)."""
    embeddings: Tensor              # (b, S * c, D) mean input embedding of the words each thought replaced
    weights: Tensor                 # (b, S * c, 1) w where the thought has a target, else 0


class Reasoned(NamedTuple):
    """The state after the prompt and the thought recurrence, before the tokens that end it run."""
    cache: KVCache
    tail: list[Tensor]              # embeddings to run before the answer: the last thoughts and <eot>
    tail_mask: Tensor | None        # (b, len(tail)) bool
    thoughts: list[Tensor]          # [step] (b or b H, c, D)
    prompt_hiddens: Tensor          # (b, n, D) left-aligned prompt
    has_thoughts: Tensor | None     # (b,) bool: which rows think; None when all rows do the same
    num_thoughts: Tensor | None = None  # (b,) each row's thought steps, when halting decided them on the fly


def repeat_paths(reasoned: Reasoned, times: int, hyps: int = 1) -> Reasoned:
    """Each example's state repeated `times` times, adjacent: b rows -> (b times), and the thoughts' (b H) rows ->
    (b times H). Nothing is recomputed; the paths then run on from one shared prefix."""
    rows = lambda t: repeat(t, 'b ... -> (b r) ...', r = times) if exists(t) else None
    streams = lambda t: repeat(t, '(b h) ... -> (b r h) ...', r = times, h = hyps)

    return Reasoned(
        cache = reasoned.cache.repeat_batch(times),
        tail = [rows(t) for t in reasoned.tail],
        tail_mask = rows(reasoned.tail_mask),
        thoughts = [streams(t) for t in reasoned.thoughts],
        prompt_hiddens = rows(reasoned.prompt_hiddens),
        has_thoughts = rows(reasoned.has_thoughts),
        num_thoughts = rows(reasoned.num_thoughts)
    )


class Coconut(Module):
    """Chain of Continuous Thought around a causal language model: a Transformer of its own, or any backbone.

    Args:
        num_reasoning_steps: default number of thought steps S (0 = plain language model).
        num_latents_per_step: c, continuous thoughts produced per step.
        transformer: the keyword arguments of a `Transformer` to build (num_tokens, dim, depth, ...), or a model
            to think with: a `Transformer`, or anything with the methods of `coconut_pytorch.backbone.Backbone`.
        checkpoint: recompute each step's activations in backward (non-reentrant torch checkpointing).
        learn_begin_of_thought: add a loss teaching a head to predict where thinking begins (the end of the prompt).
        begin_thought_loss_weight: weight of that loss.
        num_hypotheses: H > 1 runs H thought streams in parallel over the shared prompt cache, each with its own
            `<bot>`; the answer attends to all of them (multi-stream reasoning).
        thought_mode: 'continuous' (Coconut) or 'pause' (the same slots filled by one learned pause embedding,
            with no feedback: the paper's pause-token baseline).
        thought_loss_weight: weight of the thought alignment loss, added when `forward` gets `thought_targets`. In
            pause mode it aligns the outputs at <bot> and at the pauses (a supervised pause control).
        mix_hypotheses: with H > 1, a learned linear map over all H streams' thoughts (the identity at
            initialisation) before they are fed back at every step, so the streams can exchange what they found.
        hypothesis_similarity_loss_weight: with H > 1, weight of a loss that is the mean cosine similarity between
            the H streams' thoughts at the same position: it pushes the hypotheses apart (0: off).
        align_mse_weight: weight of the latent alignment loss that is the mean squared error (per dimension) between
            each thought, as fed back, and the mean input embedding of the words it replaced (`align_losses`), added
            when `forward` gets `thought_targets` (0: off). Needs thought_mode = 'continuous'.
        align_cosine_weight: the same with 1 - cosine similarity (0: off).
        thought_rms_match: rescale every fed-back thought so that its root-mean-square over the model dimension is
            that of the token embedding table times a learned gain (`thought_gain`, from 1): thoughts enter at the
            scale of the embeddings they stand in for (`fed_back`). Needs thought_mode = 'continuous'.
        halt_loss_weight: > 0 adds a halting head (`to_halt_logit`) that reads each thought step's hidden state
            (the last of its c latents, as the backbone gives it) and gives the logit of "stop thinking after this
            step", trained by `halt_loss` when `forward` gets `halt_after` and used by `generate`'s
            `halt_threshold` (learned halting: latent mode ends when the model decides, not after a fixed count).
            Needs continuous thoughts in a single stream. 0: no head, every computation as without the option.
        thought_token_heads: m > 0 adds m small heads (`to_thought_tokens`, m linear maps of the model dimension,
            each started at the identity) through which a thought spells out, in order, the first m tokens of the
            language it replaced: head j's output under the language-model head should give its j-th token
            (`thought_token_loss`, when `forward` gets `thought_tokens`). A thought may so stand for several tokens
            with an ordered target for each, where `thought_targets` give it their unordered bag. Training only:
            generation never reads the heads. 0: no heads.
        thought_token_loss_weight: the weight of that loss.

    Positional arguments may also come in coconut-pytorch 0.0.32's order, with the transformer second:
    `Coconut(num_reasoning_steps, transformer, num_latents_per_step, learn_begin_of_thought, begin_thought_loss_weight, checkpoint)`.
    """

    @accepts_legacy_positional_order(('num_reasoning_steps', 'transformer', 'num_latents_per_step', 'learn_begin_of_thought', 'begin_thought_loss_weight', 'checkpoint'))
    def __init__(
        self,
        num_reasoning_steps: int,
        num_latents_per_step: int = 1,
        transformer: dict | Backbone | None = None,
        checkpoint: bool = False,
        learn_begin_of_thought: bool = False,
        begin_thought_loss_weight: float = 1.,
        num_hypotheses: int = 1,
        thought_mode: str = 'continuous',
        thought_loss_weight: float = 1.,
        mix_hypotheses: bool = False,
        hypothesis_similarity_loss_weight: float = 0.,
        align_mse_weight: float = 0.,
        align_cosine_weight: float = 0.,
        thought_rms_match: bool = False,
        halt_loss_weight: float = 0.,
        thought_token_heads: int = 0,
        thought_token_loss_weight: float = 1.
    ):
        super().__init__()

        if not isinstance(num_reasoning_steps, Integral) or isinstance(num_reasoning_steps, bool):
            raise TypeError(f'num_reasoning_steps must be an int, got {type(num_reasoning_steps).__name__}')
        if num_reasoning_steps < 0:
            raise ValueError(f'num_reasoning_steps must be >= 0, got {num_reasoning_steps}')

        check_positive_int(num_latents_per_step, 'num_latents_per_step')
        check_positive_int(num_hypotheses, 'num_hypotheses')

        if thought_mode not in ('continuous', 'pause'):
            raise ValueError(f'thought_mode must be "continuous" or "pause", got {thought_mode!r}')
        if thought_mode == 'pause' and num_hypotheses > 1:
            raise ValueError('num_hypotheses > 1 needs thought_mode = "continuous": pause slots are all alike')

        if isinstance(transformer, dict):
            transformer = Transformer(**transformer)
        elif not is_backbone(transformer):
            raise TypeError(f'transformer must be a dict of Transformer arguments, a Transformer, or a backbone with the methods of '
                            f'coconut_pytorch.backbone.Backbone, got {type(transformer).__name__}')

        self.model = transformer
        self.num_reasoning_steps = num_reasoning_steps
        self.num_latents_per_step = num_latents_per_step
        self.num_hypotheses = num_hypotheses
        self.thought_mode = thought_mode
        self.checkpoint = checkpoint

        dim = transformer.dim

        # one <bot> of c vectors per hypothesis, so parallel streams start apart
        self.begin_of_thought = nn.Parameter(torch.randn(num_hypotheses, num_latents_per_step, dim) * 1e-2)
        self.end_of_thought = nn.Parameter(torch.randn(dim) * 1e-2)
        self.pause_embed = nn.Parameter(torch.randn(dim) * 1e-2) if thought_mode == 'pause' else None

        for name, weight in (('thought_loss_weight', thought_loss_weight), ('begin_thought_loss_weight', begin_thought_loss_weight),
                             ('hypothesis_similarity_loss_weight', hypothesis_similarity_loss_weight)):
            check_finite_number(weight, name)
        self.thought_loss_weight = thought_loss_weight
        self.hypothesis_similarity_loss_weight = hypothesis_similarity_loss_weight

        for name, weight in (('align_mse_weight', align_mse_weight), ('align_cosine_weight', align_cosine_weight)):
            check_finite_number(weight, name)
            if weight > 0 and thought_mode != 'continuous':
                raise ValueError(f'{name} aligns the thoughts that are fed back: it needs thought_mode = "continuous", got {thought_mode!r}')
        if thought_rms_match and thought_mode != 'continuous':
            raise ValueError(f'thought_rms_match rescales the thoughts that are fed back: it needs thought_mode = "continuous", got {thought_mode!r}')
        self.align_mse_weight = align_mse_weight
        self.align_cosine_weight = align_cosine_weight

        # the gain exists only with the option, so that the state dicts of models without it are as they were
        self.thought_rms_match = thought_rms_match
        self.thought_gain = nn.Parameter(torch.ones(())) if thought_rms_match else None

        # streams mix through one linear map over their concatenated thoughts, started at the identity so that a
        # model begins as H independent streams
        self.hypothesis_mixer = None
        if mix_hypotheses and num_hypotheses > 1:
            self.hypothesis_mixer = nn.Linear(num_hypotheses * dim, num_hypotheses * dim)
            nn.init.eye_(self.hypothesis_mixer.weight)
            nn.init.zeros_(self.hypothesis_mixer.bias)

        self.learn_begin_of_thought = learn_begin_of_thought
        self.begin_thought_loss_weight = begin_thought_loss_weight
        self.to_begin_thought_logit = nn.Linear(dim, 1) if learn_begin_of_thought else None

        # the halting head exists only with the option, so that state dicts without it load as they were; made
        # last, so that every other parameter is initialised from the same random draws as without it
        check_finite_number(halt_loss_weight, 'halt_loss_weight')
        if halt_loss_weight > 0 and (thought_mode != 'continuous' or num_hypotheses > 1):
            raise ValueError('halt_loss_weight > 0 decides after each fed-back thought step: it needs thought_mode = "continuous" '
                             f'and num_hypotheses = 1, got {thought_mode!r} and {num_hypotheses}')
        self.halt_loss_weight = halt_loss_weight
        self.to_halt_logit = nn.Linear(dim, 1) if halt_loss_weight > 0 else None

        # the ordered heads likewise exist only with the option, made after everything else; each starts as the
        # identity, so that head j first reads the thought as the thought loss does
        if not isinstance(thought_token_heads, Integral) or isinstance(thought_token_heads, bool) or thought_token_heads < 0:
            raise ValueError(f'thought_token_heads must be an int >= 0, got {thought_token_heads!r}')
        check_finite_number(thought_token_loss_weight, 'thought_token_loss_weight')
        if thought_token_heads > 0 and num_hypotheses > 1:
            raise ValueError('thought_token_heads need thoughts in a single stream (num_hypotheses = 1)')
        self.thought_token_heads = thought_token_heads
        self.thought_token_loss_weight = thought_token_loss_weight
        self.to_thought_tokens = None
        if thought_token_heads > 0:
            self.to_thought_tokens = nn.Linear(dim, dim * thought_token_heads, bias = False)
            with torch.no_grad():
                self.to_thought_tokens.weight.copy_(repeat(torch.eye(dim), 'i j -> (m i) j', m = thought_token_heads))

    @classmethod
    def from_hf(cls, model_or_path, download: bool = False, **kwargs) -> Coconut:
        """Coconut over a Hugging Face causal LM (`coconut_pytorch.hf.HFBackbone`): a loaded `transformers` model, or
        the path of a saved one (a hub name is fetched only with `download = True`); `kwargs` go to `Coconut`
        (`num_reasoning_steps` defaults to 0). Needs the extra: `pip install "coconut-pytorch[hf]"`."""
        from coconut_pytorch.hf import HFBackbone, load_causal_lm
        model = load_causal_lm(model_or_path, download = download)
        model = cls(transformer = HFBackbone(model), **{'num_reasoning_steps': 0, **kwargs})
        return model.to(model.model.device)

    @property
    def device(self) -> torch.device:
        return self.end_of_thought.device

    @property
    def graphed_caches(self):
        """Static caches with their captured decode graphs, kept for later `generate` calls of the same shapes
        (they belong to `coconut_pytorch.generation`; a copy of the model starts with none)."""
        return generation.decoders(self)

    @property
    def num_tokens(self) -> int:
        return self.model.num_tokens

    def compile_blocks(self, **compile_kwargs) -> Coconut:
        """Regional compilation, for a training loop of your own: `model.compile_blocks()` once, then `model(prompt,
        answer)` as before. Each attention and feedforward block and the stream mixing between them is compiled
        (`Transformer.compile_blocks`): one graph serves every layer, and the prompt, every thought step and the
        answer, so the first step compiles a block rather than the unrolled model (BENCHMARKS.md gives the cost).
        The native Transformer only; `compile_kwargs` go to `torch.compile`."""
        if not hasattr(self.model, 'compile_blocks'):
            raise TypeError(f'compile_blocks needs the native Transformer backbone, not {type(self.model).__name__}: compile it yourself')
        self.model.compile_blocks(**compile_kwargs)
        return self

    # running the transformer, optionally checkpointed

    def run(self, inputs: list[Tensor], mask: Tensor | None, cache: KVCache | None) -> BackboneOutput:
        if self.checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint_fn(self.model.forward_with_cache, inputs, mask = mask, cache = cache, use_reentrant = False)
        return self.model.forward_with_cache(inputs, mask = mask, cache = cache)

    # the latent recurrence, written once for training, evaluation, generation and hypotheses

    def reason(self, prompt: Tensor, prompt_mask: Tensor | None, num_steps: int, row_steps: Tensor | None, cache = None,
               run: Callable[..., BackboneOutput] | None = None, mix: ThoughtMix | None = None, num_paths: int = 1,
               thought_noise: float = 0., generator: torch.Generator | None = None, halt_threshold: float | None = None) -> Reasoned:
        """The prompt, <bot> and the thought steps. `cache`: an empty static cache to run into (generation), else a
        fresh segment cache is built. `run(inputs, mask, cache)` runs each chunk: `self.run` (training and
        evaluation), or generation's run into its static cache. `mix`: the embedding-mixing schedule's blend of
        each fed-back thought (training only: it needs the words each thought replaced).

        `num_paths` k > 1 (generation's path exploration, segment cache only) returns the state of b x k rows, each
        example's k adjacent, (b k): repeated as late as the rows still agree, so the shared part runs once on b rows.
        That is after the thoughts, or with `thought_noise` s > 0 right after <bot>: the thought steps then run on
        the b x k rows, and every fed-back thought (the last one too) gets independent Gaussian noise of absolute
        standard deviation s, added to the thought as fed back (after `thought_rms_match`'s rescaling), drawn
        from `generator`.

        `halt_threshold` p (generation's learned halting; needs the halting head, `row_steps` None, continuous
        thoughts in one stream, one path): `num_steps` is then the most steps, and each row stops after the first
        step whose halting probability exceeds p. The per-row counts are decided on the fly, in this same loop: the
        mask of step s only needs whether a row halted before s, known by then, so every row gets exactly what it
        gets with its count given up front. The loop stops once every row has halted (a host sync per step). The
        counts come back as `Reasoned.num_thoughts`."""
        run = default(run, self.run)
        batch, prompt_length, c, hyps = *prompt.shape, self.num_latents_per_step, self.num_hypotheses
        device = prompt.device
        has_thoughts = (row_steps > 0) if exists(row_steps) else None

        if num_paths > 1 and exists(mix):
            raise ValueError('the embedding-mixing blend (training) cannot be combined with num_paths (generation)')
        if num_paths > 1 and exists(cache):
            raise ValueError('a static cache cannot be repeated into paths; load it from the reasoned segment cache instead')
        if thought_noise > 0 and (self.thought_mode != 'continuous' or hyps > 1):
            raise ValueError('thought_noise needs continuous thoughts in a single stream (thought_mode = "continuous", num_hypotheses = 1)')

        halting = exists(halt_threshold) and num_steps > 0
        if halting and (not exists(self.to_halt_logit) or exists(row_steps) or self.thought_mode != 'continuous' or hyps > 1 or num_paths > 1):
            raise ValueError('halt_threshold needs the halting head (halt_loss_weight > 0), continuous thoughts in one stream, one path, '
                             'and no per-row steps (they are what halting decides)')

        # with noise the paths part right after <bot>; without, they part where the answers begin
        branch_early = thought_noise > 0 and num_steps > 0

        def in_paths(reasoned: Reasoned) -> Reasoned:
            return repeat_paths(reasoned, num_paths, hyps) if num_paths > 1 and not branch_early else reasoned

        def noised(thoughts: Tensor) -> Tensor:
            if thought_noise <= 0:
                return thoughts
            noise = torch.randn(thoughts.shape, generator = generator, device = thoughts.device, dtype = thoughts.dtype)
            return thoughts + noise * thought_noise

        def used_by(active: Tensor | None, length: int, streams: int = 1) -> Tensor | None:
            # (b streams, length) mask of a slot that only rows with `active` (b,) use; None when every row does
            return repeat(active, 'b -> (b h) n', h = streams, n = length) if exists(active) else None

        def at_step(step: int) -> Tensor | None:
            return (row_steps >= step) if exists(row_steps) else None

        if num_steps == 0:
            out = run([prompt], prompt_mask, cache)
            return in_paths(Reasoned(out.cache, [], None, [], out.hiddens, has_thoughts))

        eot = repeat(self.end_of_thought, 'd -> b 1 d', b = batch)
        eot_mask = used_by(has_thoughts, 1)

        # pause baseline: every slot is known up front, so one pass runs them all

        if self.thought_mode == 'pause':
            bot = repeat(self.begin_of_thought[0], 'c d -> b c d', b = batch)
            pauses = repeat(self.pause_embed, 'd -> b n d', b = batch, n = c)

            segments = [(prompt, prompt_mask), (bot, used_by(has_thoughts, c))]
            segments += [(pauses, used_by(at_step(step), c)) for step in range(1, num_steps + 1)]

            mask = join_masks([(m, t.shape[1]) for t, m in segments], batch, device)
            out = run([t for t, _ in segments], mask, cache)
            # the outputs at <bot> and at every pause but the last: where Coconut's thoughts would come from, so
            # that they can be given the same thought targets (a control: compute and supervision, nothing fed back)
            outputs = [out.hiddens[:, prompt_length + step * c:prompt_length + (step + 1) * c] for step in range(num_steps)]
            return in_paths(Reasoned(out.cache, [eot], eot_mask, outputs, out.hiddens[:, :prompt_length], has_thoughts))

        # continuous thoughts: step 1 reads the hidden states at <bot>, each later step those of the step before

        # the scale thoughts are fed back at (thought_rms_match): once per call, from the embeddings as they are now
        target_rms = self.embedding_rms() if self.thought_rms_match else None

        def feed(thought: Tensor, step: int) -> Tensor:
            # the thoughts made at step `step` (0: those read at <bot>), as the next input
            blend = None
            if exists(mix):
                blend = tuple(t[:, step * c:(step + 1) * c] for t in mix)
            return self.fed_back(thought, target_rms, blend)

        bot = repeat(self.begin_of_thought, 'h c d -> (b h) c d', b = batch)
        bot_mask = used_by(has_thoughts, c, hyps)

        if hyps == 1:
            out = run([prompt, bot], join_masks([(prompt_mask, prompt_length), (bot_mask, c)], batch, device), cache)
            prompt_hiddens = out.hiddens[:, :-c]
        else:
            if exists(cache):
                raise ValueError('a static cache cannot hold hypotheses; load it from the reasoned segment cache instead')
            # hypotheses share the prompt's cache and think as a batch of b x H rows, each from its own <bot>
            prompt_out = run([prompt], prompt_mask, None)
            prompt_hiddens = prompt_out.hiddens
            out = run([bot], bot_mask, prompt_out.cache.repeat_batch(hyps))

        cache = out.cache
        thoughts = [out.hiddens[:, -c:]]

        halted = None
        if halting:
            # (b,) every row's steps so far as many as it may take; a row that halts after step t gets t, so
            # `at_step` masks its later slots exactly as with the count given up front
            row_steps = torch.full((batch,), num_steps, dtype = torch.long, device = device)
            halted = torch.zeros(batch, dtype = torch.bool, device = device)

        def all_halted(step: int) -> bool:
            # after thought `step` is made (thoughts[-1]): rows whose halting probability exceeds the threshold stop
            # here, unless they already did. Past the last step nothing is left to decide
            nonlocal row_steps, halted
            if not halting or step >= num_steps:
                return False
            stops = (self.halt_probability(thoughts[-1]) > halt_threshold) & ~halted
            row_steps = torch.where(stops, step, row_steps)
            halted = halted | stops
            return bool(halted.all())

        if branch_early:
            # everything so far is shared by the k paths of an example: repeat it, then think on b x k rows
            branched = repeat_paths(Reasoned(cache, [eot], eot_mask, thoughts, prompt_hiddens, has_thoughts), num_paths, hyps)
            cache, (eot,), eot_mask, thoughts, prompt_hiddens, has_thoughts, _ = branched
            row_steps = repeat(row_steps, 'b -> (b k)', k = num_paths) if exists(row_steps) else None
            batch = batch * num_paths

        if not all_halted(1):
            for step in range(1, num_steps):
                out = run([noised(feed(thoughts[-1], step - 1))], used_by(at_step(step), c, hyps), cache)
                cache = out.cache
                thoughts.append(out.hiddens)
                if all_halted(step + 1):
                    break

        # fewer than `num_steps` when every row halted early
        num_steps = len(thoughts)
        last_mask = used_by(at_step(num_steps), c, hyps)

        if hyps == 1:
            tail_mask = join_masks([(last_mask, c), (eot_mask, 1)], batch, device)
            return in_paths(Reasoned(cache, [noised(feed(thoughts[-1], num_steps - 1)), eot], tail_mask, thoughts, prompt_hiddens, has_thoughts,
                                     row_steps if halting else None))

        # the last thoughts enter their own streams' caches; then the streams fold into one row per example,
        # side by side after the shared prompt (segment 0), so <eot> and the answer attend to every hypothesis
        cache = run([feed(thoughts[-1], num_steps - 1)], last_mask, cache).cache
        cache = cache.merge_batch_segments(hyps, from_segment = 1)
        return in_paths(Reasoned(cache, [eot], eot_mask, thoughts, prompt_hiddens, has_thoughts))

    def halt_probability(self, thoughts: Tensor) -> Tensor:
        """(b,) the probability of stopping after the step whose thoughts (b, c, D) these are, from the last of them."""
        logits = rearrange(self.to_halt_logit(thoughts[:, -1]), 'b 1 -> b')
        return logits.to(torch.promote_types(logits.dtype, torch.float32)).sigmoid()

    def fed_back(self, thoughts: Tensor, target_rms: Tensor | None = None, blend: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """The next input of the H streams' thoughts (b H, c, D): themselves; with `thought_rms_match`, rescaled to
        `target_rms` (default: `embedding_rms()`) times the learned gain; mixed across streams (`mix_hypotheses`);
        and with `blend` = (embeddings (b, c, D), weights (b, c, 1)), moved by each weight w toward the mean
        embedding of the words the thought replaced: (1 - w) * thought + w * embedding, exactly the one or the
        other at w = 0 or 1 (`torch.lerp`)."""
        if self.thought_rms_match:
            thoughts = self.rms_matched(thoughts, default(target_rms, self.embedding_rms()))

        if exists(self.hypothesis_mixer):
            mixed = self.hypothesis_mixer(rearrange(thoughts, '(b h) c d -> b c (h d)', h = self.num_hypotheses))
            thoughts = rearrange(mixed, 'b c (h d) -> (b h) c d', h = self.num_hypotheses)

        if exists(blend):
            embeddings, weights = blend
            thoughts = torch.lerp(thoughts, embeddings.to(thoughts.dtype), weights.to(thoughts.dtype))
        return thoughts

    # the thoughts against the token embeddings (latent alignment)

    def embedding_table(self) -> Tensor:
        """(V, D) the input embedding of every token: the backbone's table where it offers one
        (`embedding_weight()`), else every id embedded."""
        if hasattr(self.model, 'embedding_weight'):
            return self.model.embedding_weight()
        return self.model.embed(torch.arange(self.num_tokens, device = self.device)[None])[0]

    def embedding_rms(self) -> Tensor:
        """() the root-mean-square of the token embedding table's rows (over all of its entries: the root of the
        rows' mean square), detached: the learned gain sets the thoughts' scale, and letting the answer loss
        resize the whole table to rescale the thoughts would tie the two together."""
        table = self.embedding_table().detach()
        # the norm accumulates in float32 (or wider) without a converted copy of the table: it runs every step
        norm = torch.linalg.vector_norm(table, dtype = torch.promote_types(table.dtype, torch.float32))
        return norm / table.numel() ** 0.5

    def rms_matched(self, thoughts: Tensor, target_rms: Tensor) -> Tensor:
        """`thoughts` (..., D), each rescaled to root-mean-square `target_rms` times `thought_gain` over D."""
        dtype = torch.promote_types(thoughts.dtype, torch.float32)
        computed = thoughts.to(dtype)
        rms = computed.pow(2).mean(dim = -1, keepdim = True).add(torch.finfo(dtype).eps).sqrt()
        return (computed * (self.thought_gain * target_rms / rms)).to(thoughts.dtype)

    def slots_within(self, row_steps: Tensor, num_slots: int) -> Tensor:
        """(b, N) bool: which of N = S * c thought slots lie within each row's own steps (`row_steps` (b,)). The
        slots past them hold whatever a masked input gives, and no loss or statistic may count them."""
        slot_step = torch.arange(num_slots, device = row_steps.device) // self.num_latents_per_step
        return slot_step < rearrange(row_steps, 'b -> b 1')

    def step_embeddings(self, thought_targets: Tensor, row_steps: Tensor | None) -> tuple[Tensor, Tensor]:
        """(b, N, D) the mean input embedding of the words each thought replaced, and (b, N) bool whether it has
        any (N = S * c). `thought_targets` marks a set of words per thought (a word that came twice in the step is
        marked, and counts, once); real weights give the weighted mean. Slots past a row's own steps have none."""
        table = self.embedding_table()
        weights = thought_targets.to(table.dtype)

        if exists(row_steps):
            weights = weights * rearrange(self.slots_within(row_steps, weights.shape[1]), 'b n -> b n 1').to(weights.dtype)

        totals = weights.sum(dim = -1)                                  # (b, N)
        means = torch.einsum('b n v, v d -> b n d', weights / totals.clamp(min = 1e-12).unsqueeze(-1), table)
        return means, totals > 0

    def align_losses(self, thoughts: Tensor, step_embeddings: Tensor, has_target: Tensor) -> tuple[Tensor, Tensor]:
        """Latent alignment of each thought (b, N, D) with the mean embedding of the words it replaced: (mean
        squared error per dimension, 1 - cosine similarity), each averaged over the thoughts that have a target
        (`has_target` (b, N)); 0, not NaN, when none has.

        Why: a thought stands in for a language step as the next input, where the model has only ever read token
        embeddings; pulling it toward the embeddings of the words it replaced keeps it in that input space."""
        dtype = torch.promote_types(thoughts.dtype, torch.float32)
        thoughts, step_embeddings = thoughts.to(dtype), step_embeddings.to(dtype)
        counted = has_target.to(dtype)
        num_counted = counted.sum().clamp(min = 1)

        squared_error = (thoughts - step_embeddings).pow(2).mean(dim = -1)                 # (b, N)
        cosine_distance = 1. - F.cosine_similarity(thoughts, step_embeddings, dim = -1)     # (b, N)
        return (squared_error * counted).sum() / num_counted, (cosine_distance * counted).sum() / num_counted

    def finish(self, reasoned: Reasoned, answer_inputs: Tensor | None, answer_mask: Tensor | None,
               run: Callable[..., BackboneOutput] | None = None) -> tuple[Tensor, BackboneOutput | None]:
        """Run the tail (last thoughts, <eot>) and the answer inputs; return logits predicting the answer tokens.
        `run`: as in `reason`.

        The first answer token is predicted at <eot>, or at the last prompt token for rows that do not think.
        """
        batch = reasoned.prompt_hiddens.shape[0]
        tail_length = sum(t.shape[-2] for t in reasoned.tail)

        segments = []
        if tail_length > 0:
            segments = [(torch.cat(reasoned.tail, dim = -2), reasoned.tail_mask)]
        if exists(answer_inputs) and answer_inputs.shape[-1] > 0:
            segments.append((answer_inputs, answer_mask))

        last_prompt_hiddens = reasoned.prompt_hiddens[:, -1:]

        if len(segments) == 0:
            return self.model.to_logits(last_prompt_hiddens), None

        inputs = [t for t, _ in segments]
        mask = join_masks([(m, t.shape[1]) for t, m in segments], batch, self.device)

        out = default(run, self.run)(inputs, mask, reasoned.cache)
        hiddens = out.hiddens

        if tail_length > 0:
            first = hiddens[:, tail_length - 1:tail_length]
            if exists(reasoned.has_thoughts):
                first = torch.where(rearrange(reasoned.has_thoughts, 'b -> b 1 1'), first, last_prompt_hiddens)
            hiddens = torch.cat((first, hiddens[:, tail_length:]), dim = -2)
        else:
            hiddens = torch.cat((last_prompt_hiddens, hiddens), dim = -2)

        return self.model.to_logits(hiddens), out

    # inputs

    def prepare(self, prompt, num_reasoning_steps) -> tuple[AlignedPrompt, int, Tensor | None]:
        """Check the prompt and the step counts, and left-align the prompt."""
        checked = as_padded_ids(prompt, 'prompt', self.num_tokens, device = self.device)
        num_steps, row_steps = check_reasoning_steps(default(num_reasoning_steps, self.num_reasoning_steps), checked.ids.shape[0], self.device)
        return left_align(checked.ids, checked.has_padding), num_steps, row_steps

    def thought_columns(self, num_steps: int) -> int:
        """Columns the thoughts take in the sequence: H streams of <bot> and `num_steps` thoughts, c each, and <eot>."""
        return self.num_hypotheses * self.num_latents_per_step * (num_steps + 1) + 1 if num_steps > 0 else 0

    def check_sequence_fits(self, batch: int, prompt_length: int, num_steps: int, answer_name: str, answer_value: int | None, answer_length: int):
        """Raise ValueError, before any compute, when prompt + thoughts + answer (`answer_name`: 'answer', or
        'max_length' in generate) is longer than supported or its keys and values cannot fit in the memory left
        on the model's device (`inputs.check_sequence_fits`)."""
        parts = {
            'prompt': (None, prompt_length),
            'num_reasoning_steps': (num_steps, self.thought_columns(num_steps)),
            answer_name: (answer_value, answer_length)
        }
        check_sequence_fits(parts, batch, self.model.kv_bytes, self.device)

    # training and teacher-forced evaluation

    def forward(
        self,
        prompt: Tensor | Sequence[Tensor],
        answer: Tensor | Sequence[Tensor] | None = None,
        return_loss: bool = True,
        return_intermediates: bool = False,
        num_reasoning_steps: int | Tensor | None = None,
        thought_targets: Tensor | None = None,
        thought_mix: float | Tensor = 0.,
        halt_after: Tensor | None = None,
        thought_tokens: Tensor | None = None
    ):
        """Loss of the answer given the prompt and the thoughts, or the intermediates.

        Args:
            prompt: (b, n) ids with -1 padding, or a list of 1-d id tensors.
            answer: (b, m) ids with -1 padding (ignored by the loss), or a list of 1-d id tensors. Padding may only
                trail a row: a -1 followed by a real id is a ValueError naming the row and position.
            return_loss: False returns `Intermediates(prompt_logits, latent_tokens, answer_logits, cache)`.
            return_intermediates: with the loss, return `(loss, (LossBreakdown, *Intermediates))`.
            num_reasoning_steps: overrides the default; an int, or a (b,) tensor giving each row its own. Steps
                whose sequence could never be held (longer than `inputs.MAX_SEQUENCE_LENGTH` columns, or keys and
                values larger than the device's free memory) are a ValueError before any compute.
            thought_targets: (b, S * c, V), nonnegative weights (e.g. bool) over the vocabulary per thought, in
                sequence order: adds the thought alignment loss (`thought_loss`), weighted by `thought_loss_weight`.
                A thought whose row is all zero, or past its row's steps, has no target. With `align_mse_weight` or
                `align_cosine_weight`, also the latent alignment losses (`align_losses`).
            thought_mix: w in [0, 1], a number or a 0-dim tensor (the embedding-mixing schedule): each fed-back
                thought that has a target becomes (1 - w) * thought + w * the mean input embedding of the words it
                replaced (needs `thought_targets`; 0: off).
            halt_after: (b,) integers >= 0, the step count after which each row should stop thinking: adds the
                halting loss (`halt_loss`), weighted by `halt_loss_weight`. Needs the halting head.
            thought_tokens: (b, S * c, m) token ids, -1 where there is none: per thought, in sequence order, the
                first m tokens of the language it replaced, in their order: adds `thought_token_loss`, weighted by
                `thought_token_loss_weight`. Needs `thought_token_heads` = m.

        Returns the scalar loss (mean cross-entropy over real answer tokens, plus the weighted <bot> loss, thought
        alignment loss, latent alignment losses and halting loss).
        """
        aligned, num_steps, row_steps = self.prepare(prompt, num_reasoning_steps)
        batch = aligned.ids.shape[0]

        if exists(answer):
            answer = as_padded_ids(answer, 'answer', self.num_tokens, device = self.device, require_tokens = False, require_any_token = return_loss, padding_at_end = True).ids
            if answer.shape[0] != batch:
                raise ValueError(f'prompt and answer must have the same batch size, got {batch} and {answer.shape[0]}')

        self.check_sequence_fits(batch, aligned.ids.shape[1], num_steps, 'answer', None, answer.shape[1] if exists(answer) else 0)

        if return_loss and not exists(answer):
            return_loss = False

        if exists(thought_targets):
            self.check_thought_targets(thought_targets, batch, num_steps)
            thought_targets = thought_targets.to(self.device)

        self.check_thought_mix(thought_mix, exists(thought_targets))
        if torch.is_tensor(thought_mix):
            thought_mix = thought_mix.to(self.device)

        if exists(halt_after):
            self.check_halt_after(halt_after, batch)
            halt_after = halt_after.to(self.device)

        if exists(thought_tokens):
            self.check_thought_tokens(thought_tokens, batch, num_steps)
            thought_tokens = thought_tokens.to(self.device)

        return self.forward_aligned(aligned, answer, num_steps, row_steps, return_loss = return_loss, return_intermediates = return_intermediates,
                                    thought_targets = thought_targets, thought_mix = thought_mix, halt_after = halt_after,
                                    thought_tokens = thought_tokens)

    def check_thought_tokens(self, thought_tokens, batch: int, num_steps: int):
        """Raise unless `thought_tokens` is a (batch, steps x latents per step, m) integer tensor of ids or -1, for a
        model with m ordered heads; moves nothing."""
        if not exists(self.to_thought_tokens):
            raise ValueError('thought_tokens train the ordered heads: they need Coconut(thought_token_heads > 0)')
        check_integer_tensor(thought_tokens, 'thought_tokens')
        expected = (batch, num_steps * self.num_latents_per_step, self.thought_token_heads)
        if tuple(thought_tokens.shape) != expected:
            raise ValueError(f'thought_tokens must have shape (batch, steps x latents per step, thought_token_heads) = {expected}, got {tuple(thought_tokens.shape)}')
        if bool(((thought_tokens < PAD_ID) | (thought_tokens >= self.num_tokens)).any()):
            raise ValueError(f'thought_tokens must hold token ids in [0, {self.num_tokens}) or {PAD_ID} (none)')

    def check_halt_after(self, halt_after, batch: int):
        """Raise unless `halt_after` is a (batch,) integer tensor of counts >= 0 and the model has a halting head."""
        if not exists(self.to_halt_logit):
            raise ValueError('halt_after trains the halting head: it needs Coconut(halt_loss_weight > 0)')
        check_integer_tensor(halt_after, 'halt_after', '(batch,) ')
        if tuple(halt_after.shape) != (batch,):
            raise ValueError(f'halt_after must have shape (batch,) = ({batch},), got {tuple(halt_after.shape)}')
        if bool((halt_after < 0).any()):
            raise ValueError('halt_after must be >= 0 in every row')

    def check_thought_mix(self, thought_mix, with_thought_targets: bool):
        """Raise unless `thought_mix` is a number or 0-dim real tensor in [0, 1] that can be used here (reads a
        tensor on the host: a check before compute, not in `forward_aligned`)."""
        if torch.is_tensor(thought_mix):
            if thought_mix.ndim != 0 or not thought_mix.is_floating_point():
                raise TypeError(f'thought_mix must be a number or a 0-dim floating point tensor, got a {thought_mix.dtype} tensor of shape {tuple(thought_mix.shape)}')
            value = float(thought_mix)
        else:
            check_finite_number(thought_mix, 'thought_mix')
            value = thought_mix
        if not 0. <= value <= 1.:
            raise ValueError(f'thought_mix must be in [0, 1], got {value}')
        if torch.is_tensor(thought_mix) or value != 0:
            if self.thought_mode != 'continuous':
                raise ValueError(f'thought_mix blends the thoughts that are fed back: it needs thought_mode = "continuous", got {self.thought_mode!r}')
            if not with_thought_targets:
                raise ValueError('thought_mix needs thought_targets: it blends in the embeddings of the words each thought replaced')

    def check_thought_targets(self, thought_targets, batch: int, num_steps: int):
        """Raise if `thought_targets` cannot serve a batch of `batch` rows with `num_steps` steps; moves nothing."""
        if not torch.is_tensor(thought_targets):
            raise TypeError(f'thought_targets must be a tensor of shape (batch, thoughts, num_tokens), got {type(thought_targets).__name__}')
        if self.num_hypotheses > 1:
            raise ValueError('thought_targets need thoughts in a single stream (num_hypotheses = 1)')
        expected = (batch, num_steps * self.num_latents_per_step, self.num_tokens)
        if tuple(thought_targets.shape) != expected:
            raise ValueError(f'thought_targets must have shape (batch, steps x latents per step, num_tokens) = {expected}, got {tuple(thought_targets.shape)}')
        if thought_targets.is_complex() or (thought_targets.dtype != torch.bool and bool(((thought_targets < 0) | ~torch.isfinite(thought_targets)).any())):
            raise ValueError('thought_targets must be finite nonnegative weights over the vocabulary (bool or real)')

    def forward_aligned(
        self,
        aligned: AlignedPrompt,
        answer: Tensor | None,
        num_steps: int,
        row_steps: Tensor | None,
        return_loss: bool = True,
        return_intermediates: bool = False,
        with_prompt_logits: bool = True,
        thought_targets: Tensor | None = None,
        thought_mix: float | Tensor = 0.,
        halt_after: Tensor | None = None,
        thought_tokens: Tensor | None = None
    ):
        """`forward` after its checks: a left-aligned prompt, a (b, m) -1 padded answer (or None), the most steps of
        any row and the per-row steps ((b,) or None when all rows take `num_steps`).

        Free of host syncs and of shapes that depend on tensor contents, so a training step built on it can be
        captured as a CUDA graph (`train_step`). Inputs are trusted: check them with `forward` first.
        `with_prompt_logits=False` skips the prompt's logits in the intermediates (None there), which training
        does not need. `thought_targets`, `thought_mix`: as in `forward` (a tensor `thought_mix` is always blended
        in, so that a graph captured once serves every value). `halt_after`: as in `forward` (ignored without a
        halting head). `thought_tokens`: as in `forward` (ignored without the ordered heads).
        """
        batch = aligned.ids.shape[0]

        mixing = exists(thought_targets) and (torch.is_tensor(thought_mix) or thought_mix != 0)
        aligning = exists(thought_targets) and (self.align_mse_weight > 0 or self.align_cosine_weight > 0)

        step_embeddings = has_step_target = mix = None
        if mixing or aligning:
            step_embeddings, has_step_target = self.step_embeddings(thought_targets, row_steps)
        if mixing:
            # not detached: the blended-in embedding is an input, as the replaced words were when they were language,
            # and gets the gradients those words would get; no distance between thought and table is minimised
            # through it, so nothing pulls the table toward the thoughts (the collapse the losses' stop-gradient avoids)
            mix = ThoughtMix(step_embeddings, rearrange(has_step_target, 'b n -> b n 1').to(step_embeddings.dtype) * thought_mix)

        reasoned = self.reason(aligned.ids, aligned.mask, num_steps, row_steps, mix = mix)

        answer_inputs = answer_mask = None
        if exists(answer):
            # the answer pass always builds an attention mask (it follows a cache), so its key mask costs nothing
            answer_inputs = answer[:, :-1]
            answer_mask = answer_inputs != PAD_ID
            answer_inputs = answer_inputs.clamp(min = 0)

        answer_logits, final = self.finish(reasoned, answer_inputs, answer_mask)
        cache = final.cache if exists(final) else reasoned.cache

        latent_tokens = self.stack_thoughts(reasoned.thoughts, batch)

        want_prompt_logits = with_prompt_logits and (not return_loss or return_intermediates)
        prompt_logits = self.prompt_logits(reasoned.prompt_hiddens, aligned.order) if want_prompt_logits else None

        intermediates = Intermediates(prompt_logits, latent_tokens, answer_logits, cache)

        if not return_loss:
            return intermediates

        answer_loss = F.cross_entropy(
            rearrange(answer_logits, 'b m v -> b v m'),
            answer,
            ignore_index = PAD_ID
        )

        loss = answer_loss
        begin_thought_loss = None

        if self.learn_begin_of_thought:
            begin_thought_loss = self.begin_thought_loss(reasoned.prompt_hiddens, aligned.mask, num_steps, row_steps)
            loss = loss + begin_thought_loss * self.begin_thought_loss_weight

        thought_loss = None
        if exists(thought_targets):
            thought_loss = self.thought_loss(latent_tokens, thought_targets, row_steps)
            loss = loss + thought_loss * self.thought_loss_weight

        align_mse_loss = align_cosine_loss = None
        if aligning:
            # the thoughts as fed back, before the schedule's blend (which mixes in the target itself), against
            # targets detached: with gradients into both sides, the embedding table is pulled toward the thoughts
            # as much as the thoughts toward it, and table and thoughts can collapse together (toward 0 under MSE)
            thoughts = self.rms_matched(latent_tokens, self.embedding_rms()) if self.thought_rms_match else latent_tokens
            align_mse_loss, align_cosine_loss = self.align_losses(thoughts, step_embeddings.detach(), has_step_target)
            loss = loss + align_mse_loss * self.align_mse_weight + align_cosine_loss * self.align_cosine_weight

        halt_loss = None
        if exists(halt_after) and exists(self.to_halt_logit):
            halt_loss = self.halt_loss(latent_tokens, halt_after, row_steps)
            loss = loss + halt_loss * self.halt_loss_weight

        thought_token_loss = None
        if exists(thought_tokens) and exists(self.to_thought_tokens):
            thought_token_loss = self.thought_token_loss(latent_tokens, thought_tokens, row_steps)
            loss = loss + thought_token_loss * self.thought_token_loss_weight

        similarity_loss = None
        if self.num_hypotheses > 1 and self.hypothesis_similarity_loss_weight > 0 and num_steps > 0:
            similarity_loss = self.hypothesis_similarity_loss(latent_tokens, row_steps)
            loss = loss + similarity_loss * self.hypothesis_similarity_loss_weight

        if not return_intermediates:
            return loss

        breakdown = LossBreakdown(answer_loss, begin_thought_loss, thought_loss, similarity_loss, align_mse_loss, align_cosine_loss, halt_loss,
                                  thought_token_loss)
        return loss, (breakdown, *intermediates)

    def hypothesis_similarity_loss(self, latent_tokens: Tensor, row_steps: Tensor | None) -> Tensor:
        """Mean cosine similarity between every pair of the H streams' thoughts at the same position (b, H, N, D),
        over the positions within each row's steps: in [-1, 1], lower when the hypotheses differ."""
        hyps = self.num_hypotheses
        normed = F.normalize(latent_tokens.to(torch.promote_types(latent_tokens.dtype, torch.float32)), dim = -1)
        similarity = torch.einsum('b i n d, b j n d -> b n i j', normed, normed)
        pairs = torch.ones(hyps, hyps, device = similarity.device).triu(1)
        per_position = (similarity * pairs).sum(dim = (-1, -2)) / pairs.sum()     # (b, N)

        if not exists(row_steps):
            return per_position.mean()
        active = self.slots_within(row_steps, per_position.shape[1]).to(per_position.dtype)
        return (per_position * active).sum() / active.sum().clamp(min = 1)

    def thought_loss(self, latent_tokens: Tensor, thought_targets: Tensor, row_steps: Tensor | None) -> Tensor:
        """Aligns each thought with the language it replaced: the KL divergence from the targets, normalised to a
        distribution over the vocabulary (a uniform bag of the replaced words), to the thought's own next-token
        distribution under the language-model head. 0 when a thought puts exactly that distribution on them.
        Averaged over the thoughts that have a target.

        Why: a thought that replaces a breadth-first layer of a graph search is thought to hold the layer's nodes
        in superposition (Zhu et al., 2025); from scratch, the curriculum's only signal to the thoughts is the
        answer, which may not reach them. This tells each thought directly what it replaced."""
        logits = self.model.to_logits(latent_tokens)                    # (b, N, V), N = S * c
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        weights = thought_targets.to(logits.dtype)

        if exists(row_steps):
            weights = weights * rearrange(self.slots_within(row_steps, logits.shape[1]), 'b n -> b n 1').to(weights.dtype)

        totals = weights.sum(dim = -1)                                  # (b, N)
        has_target = (totals > 0).to(logits.dtype)
        targets = weights / totals.clamp(min = 1e-12).unsqueeze(-1)

        # KL(targets || softmax(logits)) = sum t log t - sum t log p
        kl = (torch.special.xlogy(targets, targets) - targets * logits.log_softmax(dim = -1)).sum(dim = -1)
        return (kl * has_target).sum() / has_target.sum().clamp(min = 1)

    def thought_token_loss(self, latent_tokens: Tensor, thought_tokens: Tensor, row_steps: Tensor | None) -> Tensor:
        """Cross-entropy of each thought's ordered heads against the tokens it replaced: head j of thought i, read
        by the language-model head, against `thought_tokens[:, i, j]`; averaged over the (thought, position) pairs
        that have a token within each row's steps, 0 (not NaN) when none has.

        Why: `thought_loss` tells a thought which words it replaced, as a bag; a thought that replaces several
        tokens of a product's digits must also hold their order, which a bag cannot say (Coconut on 4x4 and 5x5
        multiplication solved them with one thought a token, not with fewer; issue 22)."""
        spelled = rearrange(self.to_thought_tokens(latent_tokens), 'b n (m d) -> b n m d', m = self.thought_token_heads)
        logits = self.model.to_logits(spelled)                              # (b, N, m, V)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        targets = thought_tokens
        if exists(row_steps):
            targets = torch.where(rearrange(self.slots_within(row_steps, targets.shape[1]), 'b n -> b n 1'), targets, PAD_ID)
        losses = F.cross_entropy(rearrange(logits, 'b n m v -> b v n m'), targets.clamp(min = 0), reduction = 'none')
        counted = (targets != PAD_ID).to(losses.dtype)
        return (losses * counted).sum() / counted.sum().clamp(min = 1)

    def halt_loss(self, latent_tokens: Tensor, halt_after: Tensor, row_steps: Tensor | None) -> Tensor:
        """Binary cross-entropy of the halting head at each thought step t = 1.. of a row's own steps, with target
        1 (stop after this step) when t >= halt_after[row], else 0; averaged over the (row, step) pairs counted,
        0 (not NaN) when there are none. The head reads each step's last thought as the backbone gave it
        (`latent_tokens` (b, S * c, D)), the state `generate`'s `halt_threshold` reads.

        A row with halt_after = 0 should not think: run without steps it counts nowhere. A row made to run more
        steps than halt_after (the curriculum's `pad_latent_to_max` runs every row to the batch's most) gets
        target 1 at each extra step, "should have stopped": its reasoning was done at halt_after (that is where
        its language steps ran out), so going on is what halting must learn not to do, and the targets stay
        monotone in t (once stopped, stopped), as generation's halting is. Generation never stops before step 1,
        so for halt_after = 0 target 1 at step 1 is the nearest it can come."""
        c = self.num_latents_per_step
        logits = rearrange(self.to_halt_logit(latent_tokens[:, c - 1::c]), 'b s 1 -> b s')
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))

        step = torch.arange(1, logits.shape[1] + 1, device = logits.device)                    # (S,) t = 1..S
        targets = (step >= rearrange(halt_after, 'b -> b 1')).to(logits.dtype)              # (b, S)
        counted = torch.ones_like(targets)
        if exists(row_steps):
            # steps past a row's own count hold whatever a masked input gives: never counted
            counted = (step <= rearrange(row_steps, 'b -> b 1')).to(logits.dtype)

        losses = F.binary_cross_entropy_with_logits(logits, targets, reduction = 'none')
        return (losses * counted).sum() / counted.sum().clamp(min = 1)

    def begin_thought_loss(self, prompt_hiddens: Tensor, prompt_mask: Tensor | None, num_steps: int, row_steps: Tensor | None) -> Tensor:
        """Binary loss: thinking begins right after the last real prompt token (for rows that think), nowhere else."""
        logits = rearrange(self.to_begin_thought_logit(prompt_hiddens), 'b n 1 -> b n')
        targets = torch.zeros_like(logits)

        thinks = (row_steps > 0) if exists(row_steps) else torch.full((logits.shape[0],), num_steps > 0, device = logits.device)
        targets[:, -1] = thinks.to(logits.dtype)

        losses = F.binary_cross_entropy_with_logits(logits, targets, reduction = 'none')
        if not exists(prompt_mask):
            return losses.mean()
        # a masked mean without boolean indexing, whose result shape would depend on the mask (a host sync)
        mask = prompt_mask.to(losses.dtype)
        return (losses * mask).sum() / mask.sum()

    def stack_thoughts(self, thoughts: list[Tensor], batch: int) -> Tensor:
        if len(thoughts) == 0:
            return torch.empty((batch, 0, self.model.dim), device = self.device, dtype = self.end_of_thought.dtype)

        stacked = torch.cat(thoughts, dim = -2)
        if self.num_hypotheses > 1:
            stacked = rearrange(stacked, '(b h) n d -> b h n d', h = self.num_hypotheses)
        return stacked

    def prompt_logits(self, prompt_hiddens: Tensor, order: Tensor) -> Tensor:
        """Logits of the left-aligned prompt, put back in the columns the prompt was given in."""
        logits = self.model.to_logits(prompt_hiddens)
        restored = torch.empty_like(logits)
        restored.scatter_(1, repeat(order, 'b n -> b n v', v = logits.shape[-1]), logits)
        return restored

    # generation: `coconut_pytorch.generation.generate`, as a method (its docstring has the arguments)

    generate = generation.generate
