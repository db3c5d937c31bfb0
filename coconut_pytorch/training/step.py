"""A training micro-step (forward and backward of one batch), run eagerly or replayed as a CUDA graph.

On a GPU a Coconut step is host-bound: each thought is one more pass through every layer, so a ProsQA batch at
stage 6 launches tens of thousands of small kernels for a few milliseconds of GPU work. A CUDA graph records the
launches once and replays them in one call. A graph has fixed shapes, so batches are padded to a few shapes
(prompt and answer lengths rounded up, the most thoughts of the batch) and one graph is kept per shape; padding
costs nothing here because the GPU was idle anyway, and the padding-invariance tests show it changes no result.

What a replay leaves behind is exactly what an eager step leaves: gradients added into `.grad` of the parameters
the step used (the others stay None, so AdamW skips them as it does eagerly), and the batch's loss and
teacher-forced token counts.

Across processes (`distributed`), each rank steps on its part of the global batch with its `Share` of each loss
term, and every rank runs the batch's most thought passes. Eagerly the loss is `BatchLoss` under torch's
DistributedDataParallel (whose all-reduce is skipped on the micro-steps of gradient accumulation that do not step);
replayed, or under FSDP2, the step averages the gradients itself or leaves it to FSDP.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from contextlib import nullcontext
from typing import NamedTuple

import torch
from torch import Tensor, nn

from coconut_pytorch.coconut import Coconut
from coconut_pytorch.distributed import GradientAverage, Share, World, shard_model, wrap_ddp
from coconut_pytorch.training.batches import Batch
from coconut_pytorch.inputs import PAD_ID, as_padded_ids, check_reasoning_steps, left_align
from coconut_pytorch.helpers import default, exists


class StepStats(NamedTuple):
    loss: Tensor        # () the batch's mean loss, detached
    correct: Tensor     # () real answer tokens whose teacher-forced argmax is right
    counted: Tensor     # () real answer tokens
    thought_loss: Tensor    # () the thought alignment loss, detached (0 without thought targets)
    align_mse: Tensor       # () the latent alignment losses, detached (0 when off)
    align_cosine: Tensor
    thought_rms: Tensor     # () the sum over the batch's fed-back thoughts of each one's RMS over the model dimension
    thoughts: Tensor        # () how many fed-back thoughts that sum counts (0 at stage 0, and in pause mode)
    embedding_rms: Tensor   # () the RMS of the token embedding table (`Coconut.embedding_rms`)
    halt_loss: Tensor       # () the halting loss, detached (0 without halting targets)
    thought_token_loss: Tensor  # () the ordered thought-token loss, detached (0 without ordered targets)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def token_counts(answer_logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    real = target != PAD_ID
    return ((answer_logits.argmax(dim = -1) == target) & real).sum(), real.sum()


@torch.no_grad()
def thought_scale(model: Coconut, latent_tokens: Tensor, num_thoughts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(sum of the RMS over D of every fed-back thought within its row's thoughts, their count, the embedding table's
    RMS), on the device with no host sync. A thought as fed back is the hidden state, rescaled with
    `thought_rms_match`; before the mixing schedule's blend, which mixes in the target itself. Thoughts (b, N, D)."""
    embedding_rms = model.embedding_rms()
    if model.thought_mode != 'continuous' or latent_tokens.shape[1] == 0:
        zero = torch.zeros((), device = embedding_rms.device)
        return zero, zero, embedding_rms
    thoughts = model.rms_matched(latent_tokens, embedding_rms) if model.thought_rms_match else latent_tokens
    rms = thoughts.to(torch.promote_types(thoughts.dtype, torch.float32)).pow(2).mean(dim = -1).sqrt()     # (b, N)
    active = model.slots_within(num_thoughts.to(rms.device), rms.shape[1]).to(rms.dtype)
    return (rms * active).sum(), active.sum(), embedding_rms


def step_stats(model: Coconut, loss: Tensor, breakdown, latent_tokens: Tensor, answer_logits: Tensor, target: Tensor, num_thoughts: Tensor) -> StepStats:
    zero = torch.zeros((), device = loss.device)
    detached = lambda term: term.detach() if term is not None else zero
    return StepStats(loss.detach(), *token_counts(answer_logits, target), detached(breakdown.thought_loss), detached(breakdown.align_mse_loss),
                     detached(breakdown.align_cosine_loss), *thought_scale(model, latent_tokens, num_thoughts), detached(breakdown.halt_loss),
                     detached(breakdown.thought_token_loss))


def shared_objective(loss: Tensor, breakdown, weights: Tensor, model: Coconut) -> Tensor:
    """The loss whose gradients, averaged over ranks, are the whole batch's: each term times its `weights` entry
    (the rank's share of the term's count times the number of ranks: answer, thoughts, rows). The thought loss and
    the latent alignment losses are means over the thoughts that have a target: the thoughts' share."""
    answer = breakdown.answer_loss
    thought = torch.zeros_like(answer)
    for term, weight in ((breakdown.thought_loss, model.thought_loss_weight), (breakdown.align_mse_loss, model.align_mse_weight),
                         (breakdown.align_cosine_loss, model.align_cosine_weight)):
        if term is not None:
            thought = thought + term * weight
    rest = loss - answer - thought      # terms a training run does not add (exactly 0 then)
    return weights[0] * answer + weights[1] * thought + weights[2] * rest


def share_weights(share: Share, device) -> Tensor:
    return torch.tensor([share.answer, share.thoughts, share.rows], dtype = torch.float64, device = device) * share.size


class BatchLoss(nn.Module):
    """One batch's loss with a set number of thought passes, as a module: what DDP wraps and FSDP2 shards from, and
    what a CUDA graph records. `forward_aligned` with every mask and per-row count as a tensor, so the work does not
    depend on the batch's contents; inputs are trusted (`TrainStep` checks them). Returns (the loss to
    differentiate, the batch's statistics)."""

    def __init__(self, model: Coconut):
        super().__init__()
        self.model = model

    def forward(self, prompt: Tensor, target: Tensor, num_thoughts: Tensor, passes: int, thought_targets: Tensor | None = None,
                weights: Tensor | None = None, thought_mix: Tensor | None = None, halt_after: Tensor | None = None,
                thought_tokens: Tensor | None = None) -> tuple[Tensor, StepStats]:
        aligned = left_align(prompt, has_padding = True)
        loss, (breakdown, _, latent_tokens, answer_logits, _) = self.model.forward_aligned(
            aligned, target, passes, num_thoughts, return_intermediates = True, with_prompt_logits = False,
            thought_targets = thought_targets, thought_mix = default(thought_mix, 0.), halt_after = halt_after,
            thought_tokens = thought_tokens
        )
        objective = loss if weights is None else shared_objective(loss, breakdown, weights.to(loss.dtype), self.model)
        return objective, step_stats(self.model, loss, breakdown, latent_tokens, answer_logits, target, num_thoughts)


def check_batch(model: Coconut, batch: Batch, passes: int):
    """The checks `forward` makes, on the batch before it runs: a graph or `BatchLoss` reads whatever ids it gets."""
    num_tokens = model.num_tokens
    as_padded_ids(batch.prompt, 'prompt', num_tokens)
    as_padded_ids(batch.target, 'answer', num_tokens, require_tokens = False, require_any_token = True, padding_at_end = True)
    check_reasoning_steps(batch.num_thoughts, batch.prompt.shape[0], batch.num_thoughts.device)
    if batch.thought_targets is not None:
        model.check_thought_targets(batch.thought_targets, batch.prompt.shape[0], passes)
    if batch.halt_after is not None:
        model.check_halt_after(batch.halt_after, batch.prompt.shape[0])
    if batch.thought_tokens is not None:
        model.check_thought_tokens(batch.thought_tokens, batch.prompt.shape[0], passes)


def batch_inputs(batch: Batch) -> tuple[Tensor, ...]:
    """The tensors a graph reads, in its static buffers' order: prompt, target, thoughts per row, then the thought
    targets, the halting targets and the ordered thought tokens where the batch has them."""
    return tuple(t for t in (batch.prompt, batch.target, batch.num_thoughts, batch.thought_targets, batch.halt_after, batch.thought_tokens)
                 if t is not None)


class GraphedShape(NamedTuple):
    graph: torch.cuda.CUDAGraph
    inputs: tuple[Tensor, ...]              # static prompt (b, P) and target (b, T), -1 padded, thoughts per row (b,),
                                            # with thought targets those (b, S, V), with halting targets those (b,),
                                            # with ordered thought tokens those (b, S, m), and across ranks the share
                                            # weights (3,)
    staging: tuple[Tensor, ...]             # the same in pinned host memory, copied in without blocking the host
    copied: torch.cuda.Event                # the last copy out of `staging` has run once this completes
    stats: StepStats                        # static outputs
    grads: list[tuple[torch.nn.Parameter, Tensor]]   # each used parameter and the buffer its gradient lands in


class TrainStep:
    """Forward and backward of one batch, adding `loss * loss_scale`'s gradients into the parameters' `.grad`.

    Args:
        model: the Coconut model, in training mode.
        autocast_dtype: e.g. torch.bfloat16 for mixed precision, None for none.
        loss_scale: multiplies the loss before backward (1 / gradient accumulation steps).
        cuda_graphs: replay each batch shape's step as a CUDA graph (CUDA only). Batches of another size than the
            first (an epoch's last, partial batch) run eagerly.
        prompt_multiple, target_multiple: prompt and answer lengths are padded up to multiples of these, so a
            few graphs cover every batch.
        max_graphs: graphs kept at once (each holds its own activation memory); the least recently used goes.
        world: the processes of a distributed run (`distributed.World`); each call then gets the rank's `Share`.
        fsdp: the model's blocks are sharded by FSDP2 (`distributed.shard_model`, on `self.loss`), which reduces
            the gradients itself.
        thought_mix: the step blends the replaced words' embeddings into the fed-back thoughts with the weight
            `set_thought_mix` sets (the embedding-mixing schedule): a 0-dim tensor on the device that every step,
            eager or replayed, reads in place, so one graph serves every value.

    A model with a halting head (`Coconut(halt_loss_weight > 0)`) trains on batches' `halt_after`, eagerly or
    replayed (graphs of batches with halting targets read them from a static buffer of their own), in one process
    only: across processes its share of the loss would be its (row, step) pairs', which `Share` does not count
    (a ValueError).
    """

    def __init__(
        self,
        model: Coconut,
        autocast_dtype: torch.dtype | None = None,
        loss_scale: float = 1.,
        cuda_graphs: bool = False,
        prompt_multiple: int = 32,
        target_multiple: int = 16,
        max_graphs: int = 8,
        world: World = World(),
        fsdp: bool = False,
        thought_mix: bool = False
    ):
        if cuda_graphs and model.device.type != 'cuda':
            raise ValueError(f'cuda_graphs needs the model on a CUDA device, got {model.device}')
        if cuda_graphs and model.checkpoint:
            # not tried under capture: checkpointing saves and restores RNG state around each recomputation
            raise ValueError('cuda_graphs cannot be combined with a model built with checkpoint=True (not supported)')
        if exists(model.to_halt_logit) and world.distributed:
            raise ValueError('a halting model (halt_loss_weight > 0) cannot train across processes (not supported yet)')
        if exists(model.to_thought_tokens) and world.distributed:
            raise ValueError('a model with ordered thought heads (thought_token_heads > 0) cannot train across processes (not supported yet)')
        self.model = model
        self.autocast_dtype = autocast_dtype
        self.loss_scale = loss_scale
        self.cuda_graphs = cuda_graphs
        self.prompt_multiple, self.target_multiple, self.max_graphs = prompt_multiple, target_multiple, max_graphs
        self.graphs: OrderedDict[tuple, GraphedShape] = OrderedDict()
        self.replayed: set[tuple] = set()      # the shapes replayed since `release_unreplayed` last ran
        self.batch_size: int | None = None
        self.min_lengths = (0, 0)
        self.capture_seconds = 0.             # spent capturing graphs so far (warm-ups included)

        self.world, self.fsdp = world, fsdp
        # in the weights' dtype, so a float64 model blends with the weight it is given
        self.thought_mix = torch.zeros((), device = model.device, dtype = model.end_of_thought.dtype) if thought_mix else None
        self.loss = BatchLoss(model)
        self.ddp = wrap_ddp(self.loss, model.device) if world.distributed and not cuda_graphs and not fsdp else None
        # without DDP's hooks (graph replays, and the eager steps beside them), gradients are averaged by the step;
        # under FSDP2, only those of the parameters it leaves whole (`shard`)
        self.average = GradientAverage(list(model.parameters())) if world.distributed and cuda_graphs else None

    def shard(self, mixed_precision: torch.dtype | None = None):
        """FSDP2 on the model's blocks and on `self.loss` (`distributed.shard_model`); before the optimizer is made."""
        if not self.fsdp:
            raise ValueError('shard() is for a step made with fsdp = True')
        whole = shard_model(self.loss, self.model, mixed_precision)
        self.average = GradientAverage(whole) if whole else None

    def set_thought_mix(self, weight: float):
        """The blend weight w of the steps from now on (in place: captured graphs read the same buffer)."""
        if not exists(self.thought_mix):
            raise ValueError('set_thought_mix is for a step made with thought_mix = True')
        self.thought_mix.fill_(weight)

    def autocast(self, cache_enabled: bool = True):
        if self.autocast_dtype is None:
            return nullcontext()
        # inside a graph, autocast's cached weight casts would be freed when the context exits, and later replays
        # would read freed memory: casts are recorded in the graph instead
        return torch.autocast(self.model.device.type, dtype = self.autocast_dtype, cache_enabled = cache_enabled)

    def __call__(self, batch: Batch, share: Share | None = None, sync: bool = True) -> StepStats:
        """`batch` (on the CPU for CUDA graphs); returns the step's statistics (tensors on the device).

        Distributed, `batch` is this rank's part of the global batch and `share` its share (`distributed.shard_batch`);
        `sync=False` on the micro-steps of gradient accumulation that do not step leaves the gradients unreduced."""
        if self.world.distributed and share is None:
            raise ValueError('a distributed step needs the rank\'s share of the batch (distributed.shard_batch)')
        if self.batch_size is None:
            self.batch_size = batch.prompt.shape[0]
        if not self.cuda_graphs or batch.prompt.shape[0] != self.batch_size or batch.prompt.device.type != 'cpu':
            stats = self.eager(batch.to(self.model.device)) if share is None else self.eager_shared(batch, share, sync)
        else:
            stats = self.replay(batch, share)
        if sync and self.average is not None:
            self.average(self.world)
        return stats

    def eager_shared(self, batch: Batch, share: Share, sync: bool) -> StepStats:
        """A rank's eager step: the batch's most thought passes, its share of each loss term; the gradients reduced
        by DDP (or FSDP2) only when `sync`."""
        check_batch(self.model, batch, share.passes)
        batch = batch.to(self.model.device)
        module = self.ddp if self.ddp is not None else self.loss
        if self.fsdp:
            self.loss.set_requires_gradient_sync(sync)
        no_sync = self.ddp.no_sync() if self.ddp is not None and not sync else nullcontext()
        with no_sync:
            with self.autocast():
                objective, stats = module(batch.prompt, batch.target, batch.num_thoughts, share.passes, batch.thought_targets,
                                          share_weights(share, self.model.device), self.thought_mix)
            (objective * self.loss_scale).backward()
        return stats

    def eager(self, batch: Batch) -> StepStats:
        with self.autocast():
            loss, (breakdown, _, latent_tokens, answer_logits, _) = self.model(
                batch.prompt, batch.target, num_reasoning_steps = batch.num_thoughts, return_intermediates = True,
                thought_targets = batch.thought_targets, thought_mix = default(self.thought_mix, 0.), halt_after = batch.halt_after,
                thought_tokens = batch.thought_tokens
            )
        (loss * self.loss_scale).backward()
        return step_stats(self.model, loss, breakdown, latent_tokens, answer_logits, batch.target, batch.num_thoughts)

    # CUDA graphs

    def pad_to(self, prompt_length: int, target_length: int):
        """Pad later batches to at least these lengths (with graphs; e.g. an epoch's longest, so that one graph
        serves the whole epoch: batches that mix stages (`uniform_prob`) differ in answer length batch to batch,
        and more shapes than `max_graphs` would be captured again and again)."""
        self.min_lengths = (prompt_length, target_length)

    def shape_key(self, batch: Batch, share: Share | None = None) -> tuple[int, int, int, bool]:
        """(thought passes, padded prompt length, padded answer length, with thought targets) of the graph that runs
        `batch` (a rank's part of a batch runs the whole batch's passes: `share.passes`). A graph's key in
        `self.graphs` adds (with halting targets, with a rank's share weights)."""
        passes = share.passes if share is not None else int(batch.num_thoughts.max())
        prompt_length = max(batch.prompt.shape[1], self.min_lengths[0])
        target_length = max(batch.target.shape[1], self.min_lengths[1])
        return passes, round_up(prompt_length, self.prompt_multiple), round_up(target_length, self.target_multiple), batch.thought_targets is not None

    def replay(self, batch: Batch, share: Share | None = None) -> StepStats:
        # checked here on the CPU copy: a graph reads whatever ids it is given
        # graphs of batches with halting targets read them too (and ordered thought tokens, (b, S, m)), and a rank's
        # graph its share weights
        tokens_width = batch.thought_tokens.shape[-1] if batch.thought_tokens is not None else 0
        key = self.shape_key(batch, share) + (batch.halt_after is not None, share is not None) + ((tokens_width,) if tokens_width else ())
        check_batch(self.model, batch, key[0])

        shape = self.graph_for(key)

        # through pinned buffers, so the host goes on to the next batch while the GPU runs this one: a copy from
        # pageable memory synchronizes with the stream first (CUDA's documented behaviour). The buffers are this
        # shape's, reused once the copy out of them before the previous replay has run.
        shape.copied.synchronize()
        given_inputs = batch_inputs(batch) + ((share_weights(share, 'cpu'),) if share is not None else ())
        for staged, given in zip(shape.staging, given_inputs):
            if given.ndim == 2:
                staged.fill_(PAD_ID)
                staged[:, :given.shape[1]].copy_(given)
            else:
                staged.copy_(given)
        for static, staged in zip(shape.inputs, shape.staging):
            static.copy_(staged, non_blocking = True)
        shape.copied.record()
        shape.graph.replay()

        for param, grad in shape.grads:
            if param.grad is None:
                # a copy, not the buffer itself: the next replay overwrites the buffer, and gradients may accumulate
                param.grad = grad.clone()
            else:
                param.grad.add_(grad)

        return StepStats(*(t.clone() for t in shape.stats))

    def graph_for(self, key: tuple) -> GraphedShape:
        """The graph of shape `key` (captured now if it is not kept), marked as the most recently used and as replayed."""
        if key not in self.graphs:
            self.graphs[key] = self.capture(*key)
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last = False)
        self.graphs.move_to_end(key)
        self.replayed.add(key)
        return self.graphs[key]

    def release_unreplayed(self) -> int:
        """Drop the graphs that no batch replayed since the last call, and return how many. Called after each epoch:
        a curriculum stage's shapes do not come back once it has moved on, and each graph holds its activations (a
        ProsQA run kept 20-50 GiB in graphs of stages long past). The memory goes back to the device, for the other
        processes that may share it."""
        unused = [key for key in self.graphs if key not in self.replayed]
        for key in unused:
            del self.graphs[key]
        self.replayed = set()
        if unused and torch.cuda.is_available() and self.model.device.type == 'cuda':
            torch.cuda.empty_cache()
        return len(unused)

    def graphed_body(self, prompt: Tensor, target: Tensor, num_thoughts: Tensor, passes: int, thought_targets: Tensor | None = None,
                     weights: Tensor | None = None, halt_after: Tensor | None = None, thought_tokens: Tensor | None = None) -> StepStats:
        """The step on static buffers (`BatchLoss`, with autocast's weight casts recorded in the graph)."""
        with self.autocast(cache_enabled = False):
            objective, stats = self.loss(prompt, target, num_thoughts, passes, thought_targets, weights, self.thought_mix, halt_after, thought_tokens)
        (objective * self.loss_scale).backward()
        return stats

    def capture(self, passes: int, prompt_length: int, target_length: int, with_thought_targets: bool = False,
                with_halt_after: bool = False, with_weights: bool = False, tokens_width: int = 0) -> GraphedShape:
        device, batch = self.model.device, self.batch_size
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        prompt = torch.full((batch, prompt_length), PAD_ID, dtype = torch.long, device = device)
        target = torch.full((batch, target_length), PAD_ID, dtype = torch.long, device = device)
        prompt[:, 0] = 0    # a real token per row and in the answer, so the warm-up's loss is finite
        target[:, 0] = 0
        num_thoughts = torch.full((batch,), passes, dtype = torch.long, device = device)
        thought_targets = torch.zeros((batch, passes, self.model.num_tokens), dtype = torch.bool, device = device) if with_thought_targets else None
        halt_after = torch.full((batch,), passes, dtype = torch.long, device = device) if with_halt_after else None
        weights = torch.ones(3, dtype = torch.float64, device = device) if with_weights else None
        thought_tokens = torch.full((batch, passes, tokens_width), PAD_ID, dtype = torch.long, device = device) if tokens_width else None
        body = lambda: self.graphed_body(prompt, target, num_thoughts, passes, thought_targets, weights, halt_after, thought_tokens)

        params = [p for p in self.model.parameters() if p.requires_grad]
        kept = [p.grad for p in params]     # gradients accumulated so far are set aside, not disturbed

        def clear():
            for p in params:
                p.grad = None

        # warm up on a side stream (as CUDA graph capture requires), then throw its gradients away
        clear()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                body()
                clear()
        torch.cuda.current_stream(device).wait_stream(side)

        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            stats = body()

        grads = [(p, p.grad) for p in params if p.grad is not None]
        for p, grad in zip(params, kept):
            p.grad = grad

        # in `batch_inputs`' order, and the share weights last (`replay` fills them so)
        inputs = tuple(t for t in (prompt, target, num_thoughts, thought_targets, halt_after, thought_tokens, weights) if t is not None)
        staging = tuple(torch.empty(t.shape, dtype = t.dtype, pin_memory = True) for t in inputs)
        copied = torch.cuda.Event()
        copied.record()
        torch.cuda.synchronize(device)
        self.capture_seconds += time.perf_counter() - start
        return GraphedShape(graph, inputs, staging, copied, stats, grads)
