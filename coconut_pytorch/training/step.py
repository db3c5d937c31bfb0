"""A training micro-step (forward and backward of one batch), run eagerly or replayed as a CUDA graph.

On a GPU a Coconut step is host-bound: each thought is one more pass through every layer, so a ProsQA batch at
stage 6 launches tens of thousands of small kernels for a few milliseconds of GPU work. A CUDA graph records the
launches once and replays them in one call. A graph has fixed shapes, so batches are padded to a few shapes
(prompt and answer lengths rounded up, the most thoughts of the batch) and one graph is kept per shape; padding
costs nothing here because the GPU was idle anyway, and the padding-invariance tests show it changes no result.

What a replay leaves behind is exactly what an eager step leaves: gradients added into `.grad` of the parameters
the step used (the others stay None, so AdamW skips them as it does eagerly), and the batch's loss and
teacher-forced token counts.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import nullcontext
from typing import NamedTuple

import torch
from torch import Tensor

from coconut_pytorch.coconut import Coconut
from coconut_pytorch.training.batches import Batch
from coconut_pytorch.inputs import PAD_ID, as_padded_ids, check_reasoning_steps, left_align


class StepStats(NamedTuple):
    loss: Tensor        # () the batch's mean loss, detached
    correct: Tensor     # () real answer tokens whose teacher-forced argmax is right
    counted: Tensor     # () real answer tokens
    thought_loss: Tensor    # () the thought alignment loss, detached (0 without thought targets)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def token_counts(answer_logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    real = target != PAD_ID
    return ((answer_logits.argmax(dim = -1) == target) & real).sum(), real.sum()


def step_stats(loss: Tensor, breakdown, answer_logits: Tensor, target: Tensor) -> StepStats:
    thought_loss = breakdown.thought_loss.detach() if breakdown.thought_loss is not None else torch.zeros((), device = loss.device)
    return StepStats(loss.detach(), *token_counts(answer_logits, target), thought_loss)


def batch_inputs(batch: Batch) -> tuple[Tensor, ...]:
    """The tensors a graph reads: prompt, target, thoughts per row, and the thought targets if the batch has them."""
    return tuple(batch) if batch.thought_targets is not None else tuple(batch[:3])


class GraphedShape(NamedTuple):
    graph: torch.cuda.CUDAGraph
    inputs: tuple[Tensor, ...]              # static prompt (b, P) and target (b, T), -1 padded, row steps (b,) and
                                            # with thought targets, those (b, S, V)
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
    """

    def __init__(
        self,
        model: Coconut,
        autocast_dtype: torch.dtype | None = None,
        loss_scale: float = 1.,
        cuda_graphs: bool = False,
        prompt_multiple: int = 32,
        target_multiple: int = 16,
        max_graphs: int = 8
    ):
        if cuda_graphs and model.device.type != 'cuda':
            raise ValueError(f'cuda_graphs needs the model on a CUDA device, got {model.device}')
        if cuda_graphs and model.checkpoint:
            # not tried under capture: checkpointing saves and restores RNG state around each recomputation
            raise ValueError('cuda_graphs cannot be combined with a model built with checkpoint=True (not supported)')
        self.model = model
        self.autocast_dtype = autocast_dtype
        self.loss_scale = loss_scale
        self.cuda_graphs = cuda_graphs
        self.prompt_multiple, self.target_multiple, self.max_graphs = prompt_multiple, target_multiple, max_graphs
        self.graphs: OrderedDict[tuple, GraphedShape] = OrderedDict()
        self.batch_size: int | None = None
        self.min_lengths = (0, 0)

    def autocast(self, cache_enabled: bool = True):
        if self.autocast_dtype is None:
            return nullcontext()
        # inside a graph, autocast's cached weight casts would be freed when the context exits, and later replays
        # would read freed memory: casts are recorded in the graph instead
        return torch.autocast(self.model.device.type, dtype = self.autocast_dtype, cache_enabled = cache_enabled)

    def __call__(self, batch: Batch) -> StepStats:
        """`batch` (on the CPU for CUDA graphs); returns the step's statistics (tensors on the device)."""
        if self.batch_size is None:
            self.batch_size = batch.prompt.shape[0]
        if not self.cuda_graphs or batch.prompt.shape[0] != self.batch_size or batch.prompt.device.type != 'cpu':
            return self.eager(batch.to(self.model.device))
        return self.replay(batch)

    def eager(self, batch: Batch) -> StepStats:
        with self.autocast():
            loss, (breakdown, _, _, answer_logits, _) = self.model(
                batch.prompt, batch.target, num_reasoning_steps = batch.num_thoughts, return_intermediates = True,
                thought_targets = batch.thought_targets
            )
        (loss * self.loss_scale).backward()
        return step_stats(loss, breakdown, answer_logits, batch.target)

    # CUDA graphs

    def pad_to(self, prompt_length: int, target_length: int):
        """Pad later batches to at least these lengths (with graphs; e.g. an epoch's longest, so that one graph
        serves the whole epoch: batches that mix stages (`uniform_prob`) differ in answer length batch to batch,
        and more shapes than `max_graphs` would be captured again and again)."""
        self.min_lengths = (prompt_length, target_length)

    def shape_key(self, batch: Batch) -> tuple[int, int, int, bool]:
        """(thoughts, padded prompt length, padded answer length, with thought targets) of the graph that runs `batch`."""
        num_steps = int(batch.num_thoughts.max())
        prompt_length = max(batch.prompt.shape[1], self.min_lengths[0])
        target_length = max(batch.target.shape[1], self.min_lengths[1])
        return num_steps, round_up(prompt_length, self.prompt_multiple), round_up(target_length, self.target_multiple), batch.thought_targets is not None

    def replay(self, batch: Batch) -> StepStats:
        # the checks `forward` makes, here on the CPU copy: a graph reads whatever ids it is given
        num_tokens = self.model.num_tokens
        as_padded_ids(batch.prompt, 'prompt', num_tokens)
        as_padded_ids(batch.target, 'answer', num_tokens, require_tokens = False, require_any_token = True, padding_at_end = True)
        check_reasoning_steps(batch.num_thoughts, batch.prompt.shape[0], 'cpu')
        if batch.thought_targets is not None:
            self.model.check_thought_targets(batch.thought_targets, batch.prompt.shape[0], int(batch.num_thoughts.max()))

        key = self.shape_key(batch)
        if key not in self.graphs:
            self.graphs[key] = self.capture(*key)
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last = False)
        self.graphs.move_to_end(key)
        shape = self.graphs[key]

        # through pinned buffers, so the host goes on to the next batch while the GPU runs this one: a copy from
        # pageable memory synchronizes with the stream first (CUDA's documented behaviour). The buffers are this
        # shape's, reused once the copy out of them before the previous replay has run.
        shape.copied.synchronize()
        for staged, given in zip(shape.staging, batch_inputs(batch)):
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

    def graphed_body(self, prompt: Tensor, target: Tensor, row_steps: Tensor, num_steps: int, thought_targets: Tensor | None = None) -> StepStats:
        """The step on static buffers: `forward_aligned` with every mask and per-row count as a tensor, so the
        recorded work does not depend on the batch's contents."""
        aligned = left_align(prompt, has_padding = True)
        with self.autocast(cache_enabled = False):
            loss, (breakdown, _, _, answer_logits, _) = self.model.forward_aligned(
                aligned, target, num_steps, row_steps, return_intermediates = True, with_prompt_logits = False,
                thought_targets = thought_targets
            )
        (loss * self.loss_scale).backward()
        return step_stats(loss, breakdown, answer_logits, target)

    def capture(self, num_steps: int, prompt_length: int, target_length: int, with_thought_targets: bool = False) -> GraphedShape:
        device, batch = self.model.device, self.batch_size
        prompt = torch.full((batch, prompt_length), PAD_ID, dtype = torch.long, device = device)
        target = torch.full((batch, target_length), PAD_ID, dtype = torch.long, device = device)
        prompt[:, 0] = 0    # a real token per row and in the answer, so the warm-up's loss is finite
        target[:, 0] = 0
        row_steps = torch.full((batch,), num_steps, dtype = torch.long, device = device)
        inputs = (prompt, target, row_steps)
        if with_thought_targets:
            inputs += (torch.zeros((batch, num_steps, self.model.num_tokens), dtype = torch.bool, device = device),)

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
                self.graphed_body(*inputs[:3], num_steps, *inputs[3:])
                clear()
        torch.cuda.current_stream(device).wait_stream(side)

        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            stats = self.graphed_body(*inputs[:3], num_steps, *inputs[3:])

        grads = [(p, p.grad) for p in params if p.grad is not None]
        for p, grad in zip(params, kept):
            p.grad = grad

        staging = tuple(torch.empty(t.shape, dtype = t.dtype, pin_memory = True) for t in inputs)
        copied = torch.cuda.Event()
        copied.record()
        return GraphedShape(graph, inputs, staging, copied, stats, grads)
