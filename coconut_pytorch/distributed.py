"""Training and evaluation across the processes `torchrun` starts, applied from outside the model: the model knows
nothing of it, and a single process never touches `torch.distributed`.

    torchrun --standalone --nproc_per_node 2 train_toy.py --device cuda ...          # DDP: one process per GPU (NCCL)
    torchrun --standalone --nproc_per_node 2 train_toy.py --device cpu ...           # the same on CPU processes (gloo)
    torchrun --standalone --nproc_per_node 2 train_toy.py --device cuda --fsdp ...   # FSDP2: weights, gradients and
                                                                                     # AdamW's state sharded

- `World`: this process's rank among how many; `join_world` joins torchrun's process group, `World.current` reads it.
- `shard_batch`: a rank's rows of a global batch, and its `Share` of each loss term, so that averaging the ranks'
  gradients gives exactly the gradient of the whole batch's loss (each term is a mean over the whole batch's tokens,
  not a mean of the ranks' means), and every rank runs as many thought passes as the batch's longest row.
- `GradientAverage`: one all-reduce of the flattened gradients, for the CUDA-graph step (DDP's hooks do not run
  inside a graph replay).
- `wrap_ddp` / `shard_model`: torch's `DistributedDataParallel`, or FSDP2's `fully_shard` on every attention and
  feedforward block (every decoder layer of a pretrained model) and then the whole model; `full_model_state` and
  `full_optimizer_state` gather what a checkpoint keeps (a checkpoint holds whole tensors, however it was trained).
- `shard_indices`, `gather_objects`, `all_reduce_sum`, `all_agree`: the collectives the loop and evaluation use.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from coconut_pytorch.inputs import PAD_ID


@dataclass(frozen = True)
class World:
    """This process among the processes of a run: rank `rank` of `size`. `distributed` is False for a plain process
    (rank 0 of 1, no process group), True under torchrun, even with one process (which runs every collective)."""

    rank: int = 0
    size: int = 1
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        """The process that writes files and prints."""
        return self.rank == 0

    @classmethod
    def current(cls) -> World:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), True)
        return cls()


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR'))


def join_world(device: str) -> str:
    """Under torchrun, join its process group (NCCL for CUDA devices, gloo for the CPU) and return the device this
    rank trains on (`cuda` becomes `cuda:LOCAL_RANK`); otherwise return `device` unchanged."""
    if not launched_by_torchrun():
        return device
    device = rank_device(device)
    if not dist.is_initialized():
        backend = 'nccl' if device.startswith('cuda') else 'gloo'
        if device.startswith('cuda'):
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
    return device


def rank_device(device: str) -> str:
    """`cuda` (or `cuda:0` given to every rank) is `cuda:LOCAL_RANK` under torchrun: one GPU per process."""
    if not device.startswith('cuda') or not launched_by_torchrun():
        return device
    local_rank = int(os.environ['LOCAL_RANK'])
    if not torch.cuda.is_available() or torch.cuda.device_count() <= local_rank:
        raise ValueError(f'device {device!r}: rank {local_rank} of this machine needs GPU {local_rank}, and this machine '
                         f'has {torch.cuda.device_count() if torch.cuda.is_available() else 0}')
    return f'cuda:{local_rank}'


def leave_world():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# batches

class Share(NamedTuple):
    """One rank's part of a global batch. Each loss term of the rank's rows is a mean over its own tokens; times the
    rank's share of the term's count and the number of ranks, the ranks' average (what gradient averaging computes)
    is the whole batch's mean."""

    answer: float       # the rank's real answer tokens / the batch's
    thoughts: float     # the rank's thoughts that have a target / the batch's (0 without thought targets)
    rows: float         # the rank's rows / the batch's (weights any other term)
    passes: int         # thought passes every rank runs: the most thoughts of any row of the batch
    size: int           # ranks


def shard_batch(batch, world: World):
    """(the rank's rows of `batch`, its `Share`). Rows are cut into `world.size` contiguous, near-equal parts; a rank
    whose part is empty (a last batch smaller than the world) runs its step on the batch's first row with a share of
    0, so that every rank makes the same collective calls."""
    rows = batch.prompt.shape[0]
    start, end = world.rank * rows // world.size, (world.rank + 1) * rows // world.size
    taken = slice(start, end) if end > start else slice(0, 1)
    part = type(batch)(*(t[taken] if t is not None else None for t in batch))
    part = part._replace(prompt = trim_padding(part.prompt), target = trim_padding(part.target))

    answer_tokens = (batch.target != PAD_ID).sum(dim = -1)              # (b,)
    has_target = batch.thought_targets.any(dim = -1).sum(dim = -1) if batch.thought_targets is not None else torch.zeros(rows, dtype = torch.long)
    weight = lambda counts: float(counts[start:end].sum()) / max(1, float(counts.sum()))
    share = Share(answer = weight(answer_tokens), thoughts = weight(has_target), rows = (end - start) / rows,
                  passes = int(batch.num_thoughts.max()), size = world.size)
    return part, share


def trim_padding(ids: Tensor) -> Tensor:
    """Drop the columns at the end that are padding in every row (a part of a batch needs no more than its rows')."""
    real = (ids != PAD_ID).any(dim = 0).nonzero()
    return ids[:, :int(real.max()) + 1] if len(real) else ids[:, :1]


# gradients

class GradientAverage:
    """Averages the gradients of `params` across ranks in one all-reduce per dtype, of one flat buffer holding every
    gradient and a flag per parameter. A parameter no rank gave a gradient keeps `.grad = None` (AdamW then leaves
    it alone, as in a single process); one that only some ranks used counts zeros for the others."""

    def __init__(self, params: Sequence[nn.Parameter]):
        self.params = [p for p in params if p.requires_grad]

    def __call__(self, world: World):
        by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
        for param in self.params:
            by_dtype.setdefault(param.dtype, []).append(param)
        for dtype, params in by_dtype.items():
            sizes = [p.numel() for p in params]
            flat = torch.zeros(sum(sizes) + len(params), dtype = dtype, device = params[0].device)
            grads, flags = flat[:sum(sizes)].split(sizes), flat[sum(sizes):]
            for index, (param, grad) in enumerate(zip(params, grads)):
                if param.grad is not None:
                    grad.copy_(param.grad.reshape(-1))
                    flags[index] = 1
            dist.all_reduce(flat)
            used = flags.tolist()       # one host sync per step, after the reduction
            for param, grad, count in zip(params, grads, used):
                if count == 0:
                    continue
                averaged = (grad / world.size).view_as(param)
                if param.grad is None:
                    param.grad = averaged.clone()
                else:
                    param.grad.copy_(averaged)


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """torch's DistributedDataParallel around `module` (which runs the same thought passes on every rank, so every
    parameter the loss uses is used on every rank; `find_unused_parameters` covers those a method never uses)."""
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(module, device_ids = [device] if device.type == 'cuda' else None, find_unused_parameters = True)


def sharded_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP2 shards one by one: the native Transformer's attention and feedforward blocks, or a
    pretrained model's decoder layers."""
    backbone = model.model
    layers = getattr(backbone, 'layers', None)
    if layers is not None and hasattr(backbone, 'run_layers'):
        return [module for _, attn, _, ff in layers for module in (attn, ff)]
    lm = getattr(backbone, 'lm', None)
    if lm is not None:
        decoder_layers = [module for name, module in lm.named_modules() if name.endswith('.layers') or name.endswith('.h')]
        if decoder_layers:
            return list(decoder_layers[0])
    raise TypeError(f'no blocks to shard in a {type(backbone).__name__}')


def shard_model(root: nn.Module, model: nn.Module, mixed_precision: torch.dtype | None = None) -> list[nn.Parameter]:
    """FSDP2 (`fully_shard`) on each block of `model` (a Coconut), then on `root` (the module whose forward a step
    calls, holding `model`: its embeddings, norms and heads), in place. With `mixed_precision`, weights are gathered
    and computed in that dtype and gradients reduced in float32; the float32 shards are what AdamW updates.

    Returns the parameters FSDP2 cannot shard (scalars, such as the hyper-connections' scales): they stay whole on
    every rank, and their gradients are the caller's to average (`GradientAverage`)."""
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:
        from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard   # torch < 2.6
    if 'ignored_params' not in inspect.signature(fully_shard).parameters:
        raise ValueError(f'fsdp needs a torch whose fully_shard takes ignored_params (torch {torch.__version__} does not)')
    policy = MixedPrecisionPolicy(param_dtype = mixed_precision, reduce_dtype = torch.float32) if mixed_precision is not None else MixedPrecisionPolicy()
    scalars = [p for p in root.parameters() if p.ndim == 0]
    for block in sharded_blocks(model):
        fully_shard(block, mp_policy = policy, ignored_params = set(scalars))
    fully_shard(root, mp_policy = policy, ignored_params = set(scalars))
    return scalars


def state_options(**options):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict = True, **options)


def full_model_state(model: nn.Module, everywhere: bool = False) -> dict:
    """The whole, unsharded state dict of an FSDP2-sharded `model` (a collective: every rank calls it), on the CPU
    of rank 0 only, or with `everywhere` on every rank's device."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    return get_model_state_dict(model, options = state_options(cpu_offload = not everywhere))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's whole state, keyed by parameter names, on rank 0's CPU (a collective)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    return get_optimizer_state_dict(model, optimizer, options = state_options(cpu_offload = True))


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict):
    """`full_optimizer_state`'s dict (read by every rank) into a sharded model's optimizer. Parameters without state
    are those no step has updated yet (unused so far, as the thought markers at stage 0 of a curriculum)."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
    set_optimizer_state_dict(model, optimizer, optim_state_dict = state, options = state_options(strict = False))


def local_part(tensor: Tensor) -> Tensor:
    """A sharded tensor's part on this rank (the tensor itself when not sharded)."""
    return tensor.to_local() if hasattr(tensor, 'to_local') else tensor


# collectives for the loop and evaluation

def shard_indices(count: int, world: World) -> range:
    """The rank's items of `count`, strided (rank, rank + size, ...): the ranks' parts differ in length by at most one."""
    return range(world.rank, count, world.size)


def gather_objects(items: list, world: World) -> list:
    """Every rank's `items` (picklable), interleaved back into the order `shard_indices` took them in."""
    if not world.distributed:
        return items
    parts: list[Any] = [None] * world.size
    dist.all_gather_object(parts, items)
    merged = []
    for index in range(max(len(part) for part in parts)):
        merged.extend(part[index] for part in parts if index < len(part))
    return merged


def all_reduce_sum(tensors: Sequence[Tensor], world: World) -> list[Tensor]:
    """The sums over ranks of `tensors` (on one device, of any shapes), in one call: flattened into one buffer,
    summed, and cut back into their shapes."""
    if not world.distributed:
        return list(tensors)
    flat = torch.cat([t.reshape(-1).to(torch.float64 if t.device.type == 'cpu' else torch.float32) for t in tensors])
    dist.all_reduce(flat)
    return [part.reshape(t.shape) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def all_agree(flag: Tensor, world: World) -> Tensor:
    """() bool: True when `flag` is True on every rank (a step is skipped everywhere if any rank's loss was not finite)."""
    if not world.distributed:
        return flag
    value = flag.to(torch.int32)
    dist.all_reduce(value, op = dist.ReduceOp.MIN)
    return value.bool()
