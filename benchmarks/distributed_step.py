"""The distributed training step on GPUs: eager DDP, the CUDA-graph step's own all-reduce and FSDP2 against one process
on the whole batch (float64: the parameters after two accumulated micro-steps and one AdamW step), then the time of a
step of each at float32.

    torchrun --standalone --nproc_per_node 1 benchmarks/distributed_step.py                 # NCCL, one GPU
    torchrun --standalone --nproc_per_node 2 benchmarks/distributed_step.py --backend gloo  # two ranks sharing GPU 0

NCCL takes one GPU per rank; with `--backend gloo` every rank uses GPU 0 (gloo reduces CUDA tensors through the host),
so two ranks can be checked on a machine with one GPU. Rank 0 prints one JSON line per measurement.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from coconut_pytorch.distributed import World, full_model_state, shard_batch  # noqa: E402
from coconut_pytorch.training.batches import EpochLayout  # noqa: E402
from coconut_pytorch.training.config import TrainConfig  # noqa: E402
from coconut_pytorch.training.datasets import load_data  # noqa: E402
from coconut_pytorch.training.model import build_model  # noqa: E402
from coconut_pytorch.training.optim import apply_gradients, make_optimizer  # noqa: E402
from coconut_pytorch.training.step import TrainStep  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description = __doc__, formatter_class = argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--backend', default = 'nccl', choices = ('nccl', 'gloo'))
    parser.add_argument('--task', default = 'prosqa')
    parser.add_argument('--batch-size', type = int, default = 32, help = 'the global batch')
    parser.add_argument('--dim', type = int, default = 256)
    parser.add_argument('--depth', type = int, default = 6)
    parser.add_argument('--epoch', type = int, default = 40, help = "the epoch whose batches are used (its stage's thoughts)")
    parser.add_argument('--timed-steps', type = int, default = 20)
    return parser.parse_args()


def main():
    args = parse_args()
    local_rank = int(os.environ['LOCAL_RANK'])
    device = torch.device('cuda', 0 if args.backend == 'gloo' else local_rank)
    torch.cuda.set_device(device)
    dist.init_process_group(args.backend)
    world = World.current()
    say = lambda **fields: print(json.dumps(dict(ranks = world.size, backend = args.backend, **fields)), flush = True) if world.is_main else None

    config = TrainConfig(task = args.task, train_size = args.batch_size * 4, eval_size = 8, batch_size = args.batch_size, dim = args.dim,
                         depth = args.depth, heads = 8, dim_head = args.dim // 8, num_residual_streams = 1, uniform_prob = 0.3,
                         thought_loss = 0.5, device = str(device))
    train_set, _, tokenizer, max_steps = load_data(config)
    curriculum = config.curriculum(max_steps, 0)
    batches = EpochLayout(tokenizer, curriculum, config.batch_size, config.seed, with_thought_targets = True).batches(train_set, args.epoch)

    def model(dtype):
        return build_model(config, len(tokenizer), curriculum).to(device, dtype)

    def steps(step, net, chosen, shared, optimizer = None):
        optimizer = optimizer if optimizer is not None else make_optimizer(net, config)
        for index, batch in enumerate(chosen):
            share = None
            if shared:
                batch, share = shard_batch(batch, world)
            step(batch if step.cuda_graphs else batch.to(device), share, sync = index == len(chosen) - 1) if shared else step(batch.to(device))
        apply_gradients(net, optimizer, config.lr, config.max_grad_norm)
        return optimizer

    # float64: each distributed path against one process on the whole batches
    chosen = batches[:2]
    reference = model(torch.float64)
    steps(TrainStep(reference, loss_scale = 0.5), reference, chosen, shared = False)
    expected = reference.state_dict()
    difference = lambda state: max(float((state[name].to(device, torch.float64) - value).abs().max()) for name, value in expected.items())

    eager = model(torch.float64)
    steps(TrainStep(eager, loss_scale = 0.5, world = world), eager, chosen, shared = True)
    graphed = model(torch.float64)
    graph_step = TrainStep(graphed, loss_scale = 0.5, world = world, cuda_graphs = True)
    steps(graph_step, graphed, chosen, shared = True)
    say(check = 'float64 parameters after 2 micro-steps and one AdamW step, against one process on the whole batches',
        rows_thoughts = [b.num_thoughts.tolist() for b in chosen], ddp_eager = difference(eager.state_dict()),
        cuda_graphs = difference(graphed.state_dict()), graphs_vs_eager = max(float((graphed.state_dict()[k] - v).abs().max()) for k, v in eager.state_dict().items()))
    if args.backend == 'gloo':
        say(check = 'the same with FSDP2', skipped = "FSDP2 over gloo with CUDA tensors crashed (torch 2.11): NCCL only")
    else:
        sharded = model(torch.float64)
        fsdp_step = TrainStep(sharded, loss_scale = 0.5, world = world, fsdp = True)
        fsdp_step.shard()
        steps(fsdp_step, sharded, chosen, shared = True)
        say(check = 'the same with FSDP2', fsdp = difference(full_model_state(sharded, everywhere = True)))

    # float32 step times (each rank its part of every batch; one optimizer step per batch)
    for name, make in (('ddp_eager', lambda net: TrainStep(net, world = world)),
                       ('ddp_cuda_graphs', lambda net: TrainStep(net, world = world, cuda_graphs = True))):
        net = model(torch.float32)
        step, optimizer = make(net), None
        timed = batches[:args.timed_steps]
        step.pad_to(max(b.prompt.shape[1] for b in timed), max(b.target.shape[1] for b in timed))
        for batch in timed[:3]:      # warm-up (graph capture)
            optimizer = steps(step, net, [batch], shared = True, optimizer = optimizer)
        torch.cuda.synchronize()
        dist.barrier()
        start = time.perf_counter()
        for batch in timed:
            optimizer = steps(step, net, [batch], shared = True, optimizer = optimizer)
        torch.cuda.synchronize()
        say(measure = name, dim = args.dim, depth = args.depth, global_batch = args.batch_size,
            most_thoughts = max(int(b.num_thoughts.max()) for b in timed), ms_per_step = 1000 * (time.perf_counter() - start) / len(timed))
    dist.destroy_process_group()


if __name__ == '__main__':
    main()
