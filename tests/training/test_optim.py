"""The learning-rate schedule (warmup, rewarm at each optimizer reset, linear decay over the last epochs) and the
guard that skips non-finite steps."""

import pytest
import torch

from coconut_pytorch.training import TrainConfig
from coconut_pytorch.training.optim import NonFiniteSteps


def test_rewarm_restarts_the_warmup_at_each_optimizer_reset():
    from coconut_pytorch.training.optim import learning_rate

    plain = TrainConfig(lr = 1e-3, warmup_steps = 4)
    rewarm = TrainConfig(lr = 1e-3, warmup_steps = 4, rewarm_each_stage = True)
    # the first optimizer: both warm up over steps 0-3
    assert [learning_rate(c, step, 0) for c in (plain, rewarm) for step in (0, 3, 9)] == pytest.approx([2.5e-4, 1e-3, 1e-3] * 2)
    # an optimizer made at step 10: only rewarm starts over
    assert [learning_rate(plain, step, 10) for step in (10, 11, 13)] == pytest.approx([1e-3] * 3)
    assert [learning_rate(rewarm, step, 10) for step in (10, 11, 13)] == pytest.approx([2.5e-4, 5e-4, 1e-3])


def test_lr_decay_takes_the_last_epochs_linearly_to_zero():
    from coconut_pytorch.training.optim import learning_rate

    config = TrainConfig(lr = 1e-3, warmup_steps = 1, lr_decay_epochs = 2)
    assert [learning_rate(config, 100, 0, left) for left in (5., 2., 1., .5, 0.)] == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4, 0.])
    assert learning_rate(TrainConfig(lr = 1e-3, warmup_steps = 1), 100, 0, 0.) == pytest.approx(1e-3)  # off: constant
    with pytest.raises(ValueError, match = 'lr_decay_epochs'):
        TrainConfig(lr_decay_epochs = -1)


def test_non_finite_steps_are_skipped_on_the_device_with_a_fused_optimizer():
    # the GPU path: fused AdamW skips a flagged step itself, with no host sync; checked here on the CPU's fused AdamW
    model = torch.nn.Linear(3, 2)
    try:
        optimizer = torch.optim.AdamW(model.parameters(), lr = 0.1, fused = True)
    except (RuntimeError, TypeError):
        pytest.skip('no fused AdamW on this device')
    guard = NonFiniteSteps(limit = 3, device = torch.device('cpu'), check_every = 1)

    def step(loss_finite: bool, grad: float):
        for p in model.parameters():
            p.grad = torch.full_like(p, grad)
        guard.apply(model, optimizer, 0.1, 1., torch.tensor(loss_finite))

    before = [p.detach().clone() for p in model.parameters()]
    step(True, float('nan'))
    step(False, 1.)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(float(s['step']) == 0 for s in optimizer.state.values())
    step(True, 1.)
    assert not torch.equal(before[0], model.weight) and guard.in_a_row.item() == 0
    step(False, 1.)
    step(False, 1.)
    from coconut_pytorch.training.optim import Diverged
    with pytest.raises(Diverged, match = '3 optimizer steps in a row'):
        step(True, float('inf'))
