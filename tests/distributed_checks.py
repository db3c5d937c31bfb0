"""Run by tests/test_distributed.py under `torchrun --standalone --nproc_per_node 2` on CPU processes (gloo): each
rank computes what a single process computes and what the ranks compute together, and writes the differences to
OUT/rank{R}.json for the test to judge.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_checks.py OUT
"""

import importlib.util
import json
import sys
from pathlib import Path

import torch

from coconut_pytorch.distributed import GradientAverage, World, full_model_state, join_world, leave_world, shard_batch
from coconut_pytorch.evaluate import evaluate_examples
from coconut_pytorch.training import loop
from coconut_pytorch.training.batches import EpochLayout
from coconut_pytorch.training.config import TrainConfig
from coconut_pytorch.training.datasets import load_data
from coconut_pytorch.training.model import build_model
from coconut_pytorch.training.optim import apply_gradients, make_optimizer
from coconut_pytorch.training.step import TrainStep

# rows at mixed stages (uniform_prob), with thought targets: the ranks' parts differ in answer tokens and thoughts
CONFIG = TrainConfig(task = 'running_sum', task_kwargs = dict(num_digits = 3), train_size = 96, eval_size = 12, batch_size = 11,
                     dim = 16, depth = 2, heads = 2, dim_head = 8, num_residual_streams = 2, uniform_prob = 0.7, thought_loss = 0.5,
                     epochs_per_stage = 1, lr = 1e-2)

RUN = dict(task = 'running_sum', task_kwargs = dict(num_digits = 3), train_size = 96, eval_size = 8, batch_size = 16,
           epochs_per_stage = 1, final_epochs = 1, dim = 16, depth = 1, heads = 2, dim_head = 8, num_residual_streams = 1, warmup_steps = 0)


def float64_model(train_set, tokenizer, curriculum):
    return build_model(CONFIG, len(tokenizer), curriculum).double()


def biggest_difference(model, reference: dict) -> float:
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    return max(float((state[name].double() - value.double()).abs().max()) for name, value in reference.items())


def train_steps(step: TrainStep, model, batches, world: World | None, grads_after_first: list | None = None):
    """Two micro-steps of gradient accumulation, then one AdamW step; on ranks, each its part."""
    optimizer = make_optimizer(model, CONFIG)
    for index, batch in enumerate(batches):
        share = None
        if world is not None:
            batch, share = shard_batch(batch, world)
        step(batch, share, sync = index == len(batches) - 1) if world is not None else step(batch)
        if index == 0 and grads_after_first is not None:
            grads_after_first.append(float(sum(p.grad.double().square().sum() for p in model.parameters() if p.grad is not None)))
    apply_gradients(model, optimizer, CONFIG.lr, CONFIG.max_grad_norm)


def pretrained_backbone_checks(world: World, out: Path) -> dict:
    if importlib.util.find_spec('transformers') is None:
        return {}
    from tiny_hf import save_tiny_model
    from coconut_pytorch.data.tasks import get_task

    folder = out / 'tiny-llama'
    if world.is_main:
        texts = [text for example in get_task('running_sum', num_digits = 3).generate(200, seed = 0) for text in (example.question, *example.steps, example.answer)]
        save_tiny_model(folder, texts, family = 'llama', dim = 32, layers = 2)
    torch.distributed.barrier()
    config = TrainConfig(**{**{f: getattr(CONFIG, f) for f in ('task', 'task_kwargs', 'train_size', 'eval_size', 'batch_size', 'uniform_prob', 'thought_loss', 'lr')},
                            'hf_model': str(folder)})
    train_set, _, tokenizer, max_steps = load_data(config)
    curriculum = config.curriculum(max_steps, 0)
    batches = EpochLayout(tokenizer, curriculum, config.batch_size, config.seed, with_thought_targets = True).batches(train_set, 2)[:2]

    def trained(world: World | None, fsdp: bool = False):
        model = build_model(config, len(tokenizer), curriculum).double()
        step = TrainStep(model, loss_scale = 0.5, world = world if world is not None else World(), fsdp = fsdp)
        if fsdp:
            step.shard()
        train_steps(step, model, batches, world)
        return full_model_state(model, everywhere = True) if fsdp else model.state_dict()

    reference = trained(None)
    return dict(hf_ddp = biggest_difference(trained(world), reference), hf_fsdp = biggest_difference(trained(world, fsdp = True), reference))


def main(out: Path):
    join_world('cpu')
    world = World.current()
    results = dict(rank = world.rank, size = world.size)

    train_set, eval_set, tokenizer, max_steps = load_data(CONFIG)
    curriculum = CONFIG.curriculum(max_steps, 0)
    batches = EpochLayout(tokenizer, curriculum, CONFIG.batch_size, CONFIG.seed, with_thought_targets = True).batches(train_set, 2)[:2]
    results['rows_thoughts'] = [batch.num_thoughts.tolist() for batch in batches]

    # one process, the whole batches
    reference_model = float64_model(train_set, tokenizer, curriculum)
    train_steps(TrainStep(reference_model, loss_scale = 0.5), reference_model, batches, None)
    reference = {name: value.detach().clone() for name, value in reference_model.state_dict().items()}

    # DDP, each rank its rows; the first micro-step's gradients stay the rank's own (no all-reduce)
    ddp_model = float64_model(train_set, tokenizer, curriculum)
    first = []
    train_steps(TrainStep(ddp_model, loss_scale = 0.5, world = world), ddp_model, batches, world, first)
    results['ddp'] = biggest_difference(ddp_model, reference)
    results['ddp_first_micro_step_grad'] = first[0]
    local_model = float64_model(train_set, tokenizer, curriculum)
    local_step = TrainStep(local_model, loss_scale = 0.5, world = world)
    local_step.ddp = None       # the rank's own gradient of its part, reduced by nobody
    part, share = shard_batch(batches[0], world)
    local_step(part, share, sync = False)
    results['local_first_micro_step_grad'] = float(sum(p.grad.double().square().sum() for p in local_model.parameters() if p.grad is not None))

    # what the CUDA-graph step does after its replays: one flat all-reduce by the step itself, no DDP hooks
    averaged_model = float64_model(train_set, tokenizer, curriculum)
    averaged_step = TrainStep(averaged_model, loss_scale = 0.5, world = world)
    averaged_step.ddp, averaged_step.average = None, GradientAverage(list(averaged_model.parameters()))
    train_steps(averaged_step, averaged_model, batches, world)
    results['gradient_average'] = biggest_difference(averaged_model, reference)

    # FSDP2: every block sharded, then the step's root
    fsdp_model = float64_model(train_set, tokenizer, curriculum)
    fsdp_step = TrainStep(fsdp_model, loss_scale = 0.5, world = world, fsdp = True)
    fsdp_step.shard()
    results['fsdp_sharded'] = type(next(fsdp_model.model.layers[0][1].parameters())).__name__
    train_steps(fsdp_step, fsdp_model, batches, world)
    results['fsdp'] = biggest_difference(full_model_state(fsdp_model, everywhere = True), reference)

    # a pretrained backbone (a tiny random Llama): DDP, and FSDP2 per decoder layer
    results.update(pretrained_backbone_checks(world, out))

    # evaluation: each rank a share of the examples, the answers gathered
    alone = evaluate_examples(reference_model, tokenizer, eval_set, num_thoughts = 2, max_new_tokens = 12)
    shared = evaluate_examples(reference_model, tokenizer, eval_set, num_thoughts = 2, max_new_tokens = 12, world = world)
    results['evaluation_equal'] = alone['predictions'] == shared['predictions'] and alone['accuracy'] == shared['accuracy']
    results['evaluation_n'] = shared['n']

    # whole runs: across stage changes; only rank 0 writes; a resumed run equals an uninterrupted one
    writes = []
    for name in ('save_checkpoint', 'plot_history'):
        original = getattr(loop, name)
        setattr(loop, name, lambda *args, _original = original, _name = name, **kwargs: (writes.append(_name), _original(*args, **kwargs))[1])
    whole = loop.train(TrainConfig(**RUN), out / 'whole')
    stopped = loop.train(TrainConfig(**RUN, time_budget = 0.), out / 'resumed')
    resumed = loop.train(TrainConfig(**RUN), out / 'resumed', resume = True)
    results['runs'] = dict(whole = whole, stopped = stopped, resumed = resumed, writes = list(writes))
    # methods whose runs leave parameters unused on every rank (no thoughts at all, or pause embeddings instead)
    results['methods'] = {method: loop.train(TrainConfig(**{**RUN, 'final_epochs': 0}, method = method), out / method)['finished']
                          for method in ('pause', 'no_cot', 'pause_as_thought')}
    results['all_writes'] = writes

    (out / f'rank{world.rank}.json').write_text(json.dumps(results))
    leave_world()


if __name__ == '__main__':
    main(Path(sys.argv[1]))
