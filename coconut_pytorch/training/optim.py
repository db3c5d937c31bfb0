"""The optimizer side of a run: AdamW with decay on matrices only, the learning-rate schedule (warmup, optional
re-warmup per stage, linear decay at the end), and the step that skips non-finite gradients and stops a run that
keeps producing them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from coconut_pytorch.coconut import Coconut
from coconut_pytorch.distributed import local_part
from coconut_pytorch.training.config import TrainConfig


def learning_rate(config: TrainConfig, step: int, optimizer_start: int, epochs_left: float = math.inf) -> float:
    """The lr of optimizer step `step` (counted over the run); `optimizer_start` is the step the optimizer was made at,
    `epochs_left` how much of the run is left after this step, in epochs (fractional; for `lr_decay_epochs`)."""
    since = step - optimizer_start if config.rewarm_each_stage else step
    warmup = min(1., (since + 1) / max(1, config.warmup_steps))
    decay = min(1., max(0., epochs_left) / config.lr_decay_epochs) if config.lr_decay_epochs > 0 else 1.
    return config.lr * warmup * decay


def make_optimizer(model: Coconut, config: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [dict(params = decay, weight_decay = config.weight_decay), dict(params = no_decay, weight_decay = 0.)]
    fused = config.device.startswith('cuda') and not config.fsdp     # FSDP2's sharded parameters take the foreach kernels
    return torch.optim.AdamW(groups, lr = config.lr, betas = (0.9, 0.98), fused = fused)


def apply_gradients(model: Coconut, optimizer: torch.optim.Optimizer, lr: float, max_grad_norm: float, losses_finite: Tensor | None = None) -> Tensor | None:
    """One optimizer step at `lr` on the accumulated gradients, clipped to `max_grad_norm`; then clears them.

    With `losses_finite` (a () bool tensor), the step is skipped when it is False or the gradients' norm is not
    finite: every weight and its optimizer state stay as they were. A fused optimizer (on a GPU) decides that on
    the device, with no host sync; another (on the CPU, where a sync costs nothing) on the host. Returns that skip
    flag (() bool), or None without `losses_finite`."""
    for group in optimizer.param_groups:
        group['lr'] = lr
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    norm = norm.full_tensor() if hasattr(norm, 'full_tensor') else norm     # sharded gradients (FSDP2) give a sharded norm
    skip = ~(losses_finite & torch.isfinite(norm)) if losses_finite is not None else None

    if skip is None:
        optimizer.step()
    elif optimizer.defaults.get('fused'):
        # fused AdamW's own input for this (GradScaler's found_inf): the update and the step count are undone
        optimizer.found_inf = skip.float()
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif not bool(skip):
        optimizer.step()
    optimizer.zero_grad(set_to_none = True)
    return skip


class Diverged(Exception):
    """The run produced `max_nonfinite_steps` non-finite optimizer steps in a row, or non-finite weights."""


class NonFiniteSteps:
    """Counts the optimizer steps `apply_gradients` skipped for a non-finite loss or gradient, and stops a run that
    keeps making them. The count of skipped steps in a row stays on the device and is read every `check_every`
    steps and at each epoch's end, so a GPU step never waits for it."""

    def __init__(self, limit: int, device: torch.device, check_every: int = 16):
        self.limit, self.check_every = limit, check_every
        self.in_a_row = torch.zeros((), device = device)
        self.skipped = torch.zeros((), device = device)     # over the current epoch
        self.steps = 0

    def apply(self, model: Coconut, optimizer: torch.optim.Optimizer, lr: float, max_grad_norm: float, losses_finite: Tensor):
        """An optimizer step, unless the losses accumulated for it (`losses_finite`, () bool) or its gradients
        are not finite."""
        skip = apply_gradients(model, optimizer, lr, max_grad_norm, losses_finite)
        self.in_a_row = (self.in_a_row + 1) * skip
        self.skipped = self.skipped + skip
        self.steps += 1
        if self.steps % self.check_every == 0:
            self.check()

    def check(self):
        in_a_row = int(self.in_a_row.item())
        if in_a_row >= self.limit:
            raise Diverged(f'{in_a_row} optimizer steps in a row had a non-finite loss or gradient (max_nonfinite_steps = {self.limit})')

    def end_epoch(self) -> int:
        """Check, and return (and reset) the epoch's count of skipped steps."""
        self.check()
        skipped = int(self.skipped.item())
        self.skipped = torch.zeros_like(self.skipped)
        return skipped


def weights_finite(model: Coconut) -> Tensor:
    """() bool: every weight of this rank (its shards, under FSDP2) is finite; one host sync when read."""
    return torch.stack([torch.isfinite(local_part(p)).all() for p in model.parameters()]).all()
