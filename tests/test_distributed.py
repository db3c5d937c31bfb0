"""Training and evaluation across processes: DDP, the CUDA-graph step's own all-reduce and FSDP2 each give, in float64,
the parameters one process gets from the whole batch; sharded evaluation answers as one process does; whole runs
cross stage changes, resume exactly, and only rank 0 writes. Two CPU processes under torchrun (gloo)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from coconut_pytorch.distributed import World, gather_objects, shard_batch, shard_indices
from coconut_pytorch.inputs import PAD_ID
from coconut_pytorch.training.batches import Batch
from coconut_pytorch.training.checkpoints import load_trained

ROOT = Path(__file__).resolve().parents[1]


# On the project's 2-core CPU a rank of these gloo runs sometimes aborts in C++ in the middle of training ("terminate
# called without an active exception", SIGABRT): about 1 launch in 4 at commit 6696005 and at the fourteenth
# session's end alike, not yet traced to its cause (notes of that session). Such a launch is run again once; any other
# failure, or the same abort twice, still fails the test.
KNOWN_ABORT = 'terminate called without an active exception'


def torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    environment = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')])), 'OMP_NUM_THREADS': '1'}
    for _ in range(2):
        done = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(processes), *args],
                              capture_output = True, text = True, env = environment, cwd = ROOT, timeout = 300)
        if done.returncode == 0 or KNOWN_ABORT not in done.stderr:
            return done
    return done


@pytest.fixture(scope = 'module')
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp('ranks')
    done = torchrun(str(ROOT / 'tests' / 'distributed_checks.py'), str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f'rank{rank}.json').read_text()) for rank in range(2)], out


def test_ddp_graph_average_and_fsdp_steps_equal_one_process_on_the_whole_batch(ranks):
    # native Transformer: DDP, the graph step's flat all-reduce, FSDP2 per block; a pretrained Llama: DDP, FSDP2 per layer
    results, _ = ranks
    for result in results:
        assert result['size'] == 2
        # the batches mix stages: rows differ in thoughts, so the parts differ in tokens and thought targets
        assert all(len(set(rows)) > 1 for rows in result['rows_thoughts'])
        pretrained = ('hf_ddp', 'hf_fsdp') if importlib.util.find_spec('transformers') is not None else ()
        for path in ('ddp', 'gradient_average', 'fsdp') + pretrained:
            assert result[path] < 1e-10, (path, result[path])
        assert result['fsdp_sharded'] == 'DTensor'
        # the micro-step that does not step leaves the rank's own gradient: no all-reduce
        assert result['ddp_first_micro_step_grad'] == pytest.approx(result['local_first_micro_step_grad'], rel = 1e-12)
    assert results[0]['ddp_first_micro_step_grad'] != pytest.approx(results[1]['ddp_first_micro_step_grad'])


def test_sharded_evaluation_answers_as_one_process(ranks):
    for result in ranks[0]:
        assert result['evaluation_equal'] and result['evaluation_n'] == 12


def test_runs_cross_stages_resume_exactly_and_only_rank_0_writes(ranks):
    results, out = ranks
    for result in results:
        runs = result['runs']
        assert runs['whole']['finished'] and runs['whole']['stage'] == runs['whole']['final_stage'] > 0
        assert runs['stopped']['stopped'] == 'time_budget' and runs['resumed']['finished']
        assert runs['resumed']['accuracy'] == runs['whole']['accuracy'] == results[0]['runs']['whole']['accuracy']
    assert all(result['methods'] == dict(pause = True, no_cot = True, pause_as_thought = True) for result in results)
    assert results[1]['runs']['writes'] == results[1]['all_writes'] == []
    assert results[0]['runs']['writes'].count('plot_history') == 3 and results[0]['runs']['writes'].count('save_checkpoint') >= 4
    kept = sorted(p.name for p in (out / 'whole').iterdir())
    assert kept == sorted(['checkpoint.pt', 'training.png', 'config.json', 'metrics.jsonl'] + [p for p in kept if p.startswith('stage')])
    assert 'run.lock' not in kept and len(kept) > 4     # no lock left; a snapshot per stage
    whole, resumed = (torch.load(out / name / 'checkpoint.pt', weights_only = True) for name in ('whole', 'resumed'))
    timeless = lambda history: [{key: value for key, value in record.items() if not key.startswith('seconds')} for record in history]     # wall-clock times differ
    assert timeless(whole['history']) == timeless(resumed['history'])
    assert all(torch.equal(whole['model'][name], resumed['model'][name]) for name in whole['model'])


def test_the_command_under_torchrun_with_fsdp_prints_once_resumes_and_saves_whole_weights(tmp_path):
    out = tmp_path / 'run'
    common = ['train_toy.py', '--device', 'cpu', '--fsdp', '--out', str(out), '--train-size', '64', '--eval-size', '8', '--batch-size', '16',
              '--epochs-per-stage', '1', '--final-epochs', '1', '--dim', '16', '--depth', '1', '--heads', '2', '--dim-head', '8',
              '--task-kwargs', '{"num_digits": 3}']
    first = torchrun(*common, '--time-budget', '0')
    assert first.returncode == 0, first.stderr[-3000:]
    second = torchrun(*common, '--resume')
    assert second.returncode == 0, second.stderr[-3000:]
    for done, finished in ((first, False), (second, True)):
        results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"finished"')]
        assert len(results) == 1 and results[0]['finished'] is finished, done.stdout     # rank 0 alone prints the result
    # the checkpoint holds whole tensors: a single process loads it and answers as the run reported
    model, tokenizer, config, info = load_trained(out / 'checkpoint.pt')
    assert config.fsdp and info['stage'] == info['final_stage']
    assert not any(type(p).__name__ == 'DTensor' for p in model.parameters())


def test_a_batch_is_cut_into_parts_whose_shares_sum_to_the_whole():
    prompt = torch.tensor([[1, 2, PAD_ID], [3, PAD_ID, PAD_ID], [4, 5, 6]])
    target = torch.tensor([[1, PAD_ID, PAD_ID], [2, 3, 4], [5, 6, PAD_ID]])
    targets = torch.zeros(3, 2, 7, dtype = torch.bool)
    targets[0, 0, 1] = targets[2, 0, 2] = targets[2, 1, 3] = True
    batch = Batch(prompt, target, torch.tensor([1, 0, 2]), targets)

    parts = [shard_batch(batch, World(rank, 2, True)) for rank in range(2)]
    assert [part.prompt.tolist() for part, _ in parts] == [[[1, 2]], [[3, PAD_ID, PAD_ID], [4, 5, 6]]]   # padding trimmed
    assert [share.answer for _, share in parts] == pytest.approx([1 / 6, 5 / 6])
    assert [share.thoughts for _, share in parts] == pytest.approx([1 / 3, 2 / 3])
    assert [share.rows for _, share in parts] == pytest.approx([1 / 3, 2 / 3])
    assert {share.passes for _, share in parts} == {2}      # every rank runs the batch's most thoughts

    # more ranks than rows: a rank without rows runs a row with no weight
    part, share = shard_batch(batch, World(0, 4, True))
    assert part.prompt.shape[0] == 1 and share.answer == share.thoughts == share.rows == 0


def test_sharded_indices_gather_back_in_order():
    assert [list(shard_indices(5, World(rank, 2, True))) for rank in range(2)] == [[0, 2, 4], [1, 3]]
    assert gather_objects(['a', 'b'], World()) == ['a', 'b']


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason = 'no CUDA GPU')
def test_on_a_gpu_the_graph_step_and_eager_ddp_and_fsdp_give_the_parameters_of_one_process():
    # one rank on NCCL: the graph step's all-reduce, DDP's hooks and FSDP2's reduce-scatter are real NCCL calls
    done = torchrun(str(ROOT / 'benchmarks' / 'distributed_step.py'), '--dim', '64', '--depth', '2', '--timed-steps', '2', processes = 1)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{')]
    checks = {key: value for line in lines if 'check' in line for key, value in line.items() if key in ('ddp_eager', 'cuda_graphs', 'graphs_vs_eager', 'fsdp')}
    assert set(checks) == {'ddp_eager', 'cuda_graphs', 'graphs_vs_eager', 'fsdp'} and max(checks.values()) < 1e-10, checks
