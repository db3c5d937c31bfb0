"""The training loop behind `train_toy.py`, in named phases: `open_run` (data, model, optimizer, or the state of a
checkpoint to resume), `train_epoch`, `save_epoch`, and `finish` (the plot, the held-out evaluation, the result).

One fixed training set per run (generated from the seed, or read from `train_file`), or with `fresh_data` a new one
every epoch (`fresh_sets`), shuffled anew each epoch by (seed, epoch), so a run resumed from its checkpoint continues
exactly where it stopped. The optimizer is rebuilt at every stage change (as in the paper), and gradients accumulate
over `grad_accum` batches (the paper's effective batch is 128).
"""

from __future__ import annotations

import json
import math
import time
from contextlib import ExitStack, closing, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from coconut_pytorch.coconut import Coconut
from coconut_pytorch.data.example import Example
from coconut_pytorch.data.tokenizer import Tokenizer, max_target_length, target_lengths
from coconut_pytorch.distributed import (World, all_agree, all_reduce_sum, full_model_state, full_optimizer_state, load_full_optimizer_state,
                                         rank_device, shard_batch)
from coconut_pytorch.evaluate import evaluate_examples
from coconut_pytorch.helpers import check_device
from coconut_pytorch.plotting import plot_history
from coconut_pytorch.probing import show_thoughts
from coconut_pytorch.training.batches import Batch, EpochLayout
from coconut_pytorch.training.checkpoints import (CHECKPOINT_NAME, INFERENCE_TOKEN_MARGIN, TRAINING_KEYS, RunLock, check_resumable,
                                                  data_digests, first_line, inference_info, load_run, save_checkpoint)
from coconut_pytorch.training.config import TrainConfig
from coconut_pytorch.training.datasets import held_out_questions, load_data
from coconut_pytorch.training.fresh_sets import FreshSets
from coconut_pytorch.training.model import backbone_config, build_model
from coconut_pytorch.training.optim import Diverged, NonFiniteSteps, learning_rate, make_optimizer, weights_finite
from coconut_pytorch.training.records import METRICS_NAME, RunRecords
from coconut_pytorch.training.schedule import Curriculum, thought_mix_at_epoch
from coconut_pytorch.training.step import TrainStep


def json_safe(value):
    """`value` with every non-finite float as None: a log line must be valid JSON, and `NaN` is not.
    (A None loss in a log line or in `history` means the value was NaN or infinite.)"""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(inner) for key, inner in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(inner) for inner in value]
    return value


def train(
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: Callable | None = None,
    overwrite: bool = False,
    allow_changed_data: bool = False,
    say: Callable[[str], None] | None = None
) -> dict:
    """Train, evaluate on held-out generated examples, save checkpoint and plot; returns the results.

    `progress(iterable, **kwargs)` wraps the batch loop and the final evaluation (e.g. tqdm); it gets `set_postfix`
    calls if it has them. `say(text)` gets a line for the user at the moments that matter (resuming from epoch N,
    starting from another run's weights). Beside the checkpoint, the run's folder gets `config.json`, `metrics.jsonl`
    (one line per epoch), `training.png` and a `stage{k}.pt` snapshot at the end of each stage (`records`).
    A new run into an `out_dir` that holds a checkpoint is refused unless `resume` (continue it) or `overwrite`
    (replace it); two runs never share an `out_dir` at once (a lock). `allow_changed_data` lets `resume` continue
    over data files that changed since the checkpoint.

    A run that diverges (`config.max_nonfinite_steps` non-finite steps in a row, or non-finite weights) stops
    without saving: the checkpoint keeps the last good epoch, and the result says `finished: False`,
    `stopped: 'diverged'` and why, with no accuracy.

    In a process group (`torchrun`, `distributed.join_world`), every rank calls `train` alike: each trains on its
    part of every batch, and only rank 0 takes the lock and writes the checkpoint and the plot; every rank returns
    the result.
    """
    world = World.current()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f'out_dir {out_dir} is a file; the run needs a directory for its checkpoint and plot')
    # checked here, not in TrainConfig: a checkpoint trained on a GPU must still load where there is none
    device = check_device(rank_device(config.device) if world.distributed else config.device)
    if resume and overwrite:
        raise ValueError('resume and overwrite cannot be combined: continue the run in out_dir, or replace it')
    if config.fsdp and not world.distributed:
        raise ValueError('fsdp shards the model across the processes of torchrun; start the run with torchrun --nproc_per_node N')
    checkpoint_path = out_dir / CHECKPOINT_NAME

    with ExitStack() as stack:
        # every rank checks the directory before rank 0 writes to it; only rank 0 holds the lock
        failure = None
        try:
            if resume and not checkpoint_path.is_file():
                raise ValueError(f'--resume: no checkpoint at {checkpoint_path}')
            if not resume and not overwrite and checkpoint_path.exists():
                raise ValueError(f'{out_dir} already holds a run ({checkpoint_path}): continue it with --resume, '
                                 f'replace it with --overwrite, or choose another --out')
            if world.is_main:
                out_dir.mkdir(parents = True, exist_ok = True)
                stack.enter_context(RunLock(out_dir))
        except ValueError as error:
            failure = error
        # a collective, so no rank writes before every rank has checked, and all stop if one refuses
        if not bool(all_agree(torch.tensor(failure is None, device = device), world)):
            raise failure if failure is not None else ValueError('another rank of this run refused to start it (its error says why)')
        run = open_run(config, checkpoint_path, device, resume, allow_changed_data, world)
        if say is not None and world.is_main:
            say(f'run folder: {out_dir}')      # once the run has started: a refused one prints only its error
            if resume:
                say(f'resuming {out_dir} at epoch {run.start_epoch} of 0-{run.total_epochs - 1} (epoch {run.saved_epoch} was the last saved)')
            elif config.init_from is not None:
                say(f'starting from the weights of {config.init_from}')
        if world.is_main:
            run.records = stack.enter_context(closing(RunRecords(out_dir, config, run.history if resume else None)))
        stack.enter_context(host_threads(device))
        return run_epochs(run, progress, say if world.is_main else None)


@contextmanager
def host_threads(device: torch.device):
    """One intra-op thread on the host while a GPU trains (restored after). The host's share of a GPU step is
    small tensors (checking a batch's ids, staging it for a graph), each op a parallel region; with a thread per
    core and other processes on some cores (the fresh-data workers), each region waits for its slowest thread. On
    this project's 2-core CPU with the other core busy, checking and staging a ProsQA batch of 128 took tens of ms
    with two threads and about 1 ms with one (`benchmarks/host_batch.py`, BENCHMARKS.md). A run on the CPU keeps its
    threads: they do its work."""
    if device.type != 'cuda':
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Run:
    """A run between epochs: what it trains, and what a checkpoint keeps of where it is."""

    config: TrainConfig
    checkpoint_path: Path
    device: torch.device
    tokenizer: Tokenizer
    train_set: list[Example]
    eval_set: list[Example]
    curriculum: Curriculum
    model: Coconut
    optimizer: torch.optim.Optimizer
    train_step: TrainStep
    layout: EpochLayout
    total_epochs: int
    digests: dict[str, str]             # the data files' SHA-256, checked on --resume
    longest_target: int                 # the longest training target seen so far, in tokens: the generation budget
    world: World = World()              # this process among the run's (rank 0 of 1 without torchrun)
    # where the run is (from its checkpoint when resumed)
    start_epoch: int = 0
    history: list[dict] | None = None
    elapsed: float = 0.                 # training seconds before this process
    step: int = 0                       # optimizer steps so far
    optimizer_start: int = 0            # the step the current optimizer was made at
    inference: dict | None = None       # how the model saved last is run (`checkpoints.inference_info`)
    saved_epoch: int | None = None      # the epoch the checkpoint holds
    records: RunRecords | None = None   # config.json, metrics.jsonl, stage snapshots (rank 0 only)
    pad_lengths: tuple[int, int] = (0, 0)     # what graphed steps pad batches to (`epoch_padding`)

    def __post_init__(self):
        self.history = self.history if self.history is not None else []


def open_run(config: TrainConfig, checkpoint_path: Path, device: torch.device, resume: bool, allow_changed_data: bool,
             world: World = World()) -> Run:
    """Setup: the run's data, curriculum and model with its optimizer, new or resumed from `checkpoint_path`. Every
    rank builds the same (the same seed), and lays out the same global batches, of which it takes its part."""
    # a run over a pretrained model resumes from its checkpoint's tokenizer: the model's folder is not needed again
    loaded = load_run(checkpoint_path, str(device), TRAINING_KEYS) if resume and config.hf_model is not None else None
    train_set, eval_set, tokenizer, max_steps = load_data(config, loaded.tokenizer if loaded is not None else None)
    curriculum = config.curriculum(max_steps, longest_language = max(steps for steps, _ in target_lengths(train_set, tokenizer)))
    longest_target = max_target_length(train_set, tokenizer)

    if resume:
        loaded = loaded if loaded is not None else load_run(checkpoint_path, str(device), TRAINING_KEYS)
        check_resumable(loaded, config, tokenizer, checkpoint_path, allow_changed_data)
        model, state = loaded.model, loaded.state
        # with fresh data the cap grew with every set seen before the stop
        longest_target = max(longest_target, state['inference']['max_new_tokens'] - INFERENCE_TOKEN_MARGIN)
        where = dict(start_epoch = state['epoch'] + 1, history = state['history'], elapsed = state['elapsed'], step = state['step'],
                     optimizer_start = state.get('optimizer_start', 0), inference = state['inference'], saved_epoch = state['epoch'],
                     # where graphed steps pad to, so that a resumed stage replays the shapes the uninterrupted run would
                     pad_lengths = tuple(state.get('pad_lengths', (0, 0))))
    else:
        model = build_model(config, len(tokenizer), curriculum).to(device)
        if config.init_from is not None:
            start_from(model, tokenizer, config, device)
        where = {}

    if config.compile:
        model.model.compile_blocks()

    train_step = TrainStep(model, torch.bfloat16 if config.bf16 else None, loss_scale = 1 / config.grad_accum, cuda_graphs = config.cuda_graphs,
                           world = world, fsdp = config.fsdp, thought_mix = config.mix_start > 0)
    if config.fsdp:
        # after the weights are loaded whole, before the optimizer is made over the shards
        train_step.shard(torch.bfloat16 if config.bf16 else None)
    optimizer = make_optimizer(model, config)
    if resume:
        # an FSDP run's checkpoint keeps the optimizer's state by parameter name (`--fsdp` may not change on resume)
        if config.fsdp:
            load_full_optimizer_state(model, optimizer, state['optimizer'])
        else:
            optimizer.load_state_dict(state['optimizer'])
    # every method trains as many epochs as the coconut schedule, so baselines get the same budget
    schedule = Curriculum(**{**asdict(curriculum), 'method': 'coconut'})
    layout = EpochLayout(tokenizer, curriculum, config.batch_size, config.seed, with_thought_targets = config.uses_thought_targets,
                         with_halt_after = config.halt_loss > 0, token_width = config.thought_tokens_per_thought())
    return Run(config, checkpoint_path, device, tokenizer, train_set, eval_set, curriculum, model, optimizer, train_step, layout,
               total_epochs = schedule.total_epochs + config.final_epochs, digests = data_digests(config), longest_target = longest_target,
               world = world, **where)


def run_epochs(run: Run, progress: Callable | None, say: Callable[[str], None] | None = None) -> dict:
    """Every epoch from where the run stands, each saved as it ends, then `finish`. `say`: as in `train` (with
    `config.show_thoughts`, the thoughts at each held-out evaluation)."""
    config = run.config
    nonfinite = NonFiniteSteps(config.max_nonfinite_steps, run.device)
    run_start = time.perf_counter()
    stopped, reason, epoch = None, None, run.start_epoch

    fresh_sets = FreshSets(config.task, config.task_kwargs, config.train_size, config.seed, run.total_epochs, run.layout,
                           first_epoch = max(run.start_epoch, 1), excluded = held_out_questions(config, run.eval_set)) if config.fresh_data else None
    try:
        for epoch in range(run.start_epoch, run.total_epochs):
            # where an epoch's wall time goes, in its record: waiting for the epoch's batches, the training steps
            # (CUDA graph captures among them, also given alone), the held-out evaluation. `seconds` is taken at the
            # end of the steps, so the time between two records' `seconds` is the previous epoch's evaluation and
            # checkpoint, then this epoch's batches and steps
            clock = time.perf_counter()
            batches = epoch_batches(run, epoch, fresh_sets)
            seconds_data, clock = time.perf_counter() - clock, time.perf_counter()
            captured_before = run.train_step.capture_seconds
            record = train_epoch(run, epoch, batches, nonfinite, progress if run.world.is_main else None, run_start)
            record.update(seconds_data = round(seconds_data, 3), seconds_train = round(time.perf_counter() - clock, 3),
                          seconds_capture = round(run.train_step.capture_seconds - captured_before, 3))
            stage = record['stage']
            if config.eval_every and (epoch + 1) % config.eval_every == 0 and epoch < run.total_epochs - 1:
                # the model as it stands, thinking as its stage trained it to (the end of the run is evaluated anyway)
                clock = time.perf_counter()
                inference = inference_info(run.curriculum, stage, run.longest_target)
                record['eval_accuracy'] = round(held_out(run, inference, say = say, title = f'after epoch {epoch}')['accuracy'], 5)
                record['seconds_eval'] = round(time.perf_counter() - clock, 3)
            run.history.append(record)
            if progress and run.world.is_main:
                print(json.dumps(record, allow_nan = False), flush = True)
            save_epoch(run, epoch, run.elapsed + time.perf_counter() - run_start)
            if run.records is not None:
                run.records.epoch(record)
                if epoch < run.total_epochs - 1 and run.curriculum.stage_at_epoch(epoch + 1) != stage:
                    run.records.keep_stage(run.checkpoint_path, stage)

            # the ranks' clocks differ: they stop together when any is over the budget
            over_budget = config.time_budget is not None and time.perf_counter() - run_start > config.time_budget
            if run.world.distributed:
                over_budget = not bool(all_agree(torch.tensor(not over_budget, device = run.device), run.world))
            if over_budget and epoch < run.total_epochs - 1:
                stopped, reason = 'time_budget', f'the time budget of {config.time_budget:g} s ran out; continue with --resume'
                break
    except Diverged as error:
        stopped = 'diverged'
        kept = f'the checkpoint keeps epoch {run.saved_epoch + 1}' if run.saved_epoch is not None else 'no checkpoint was written'
        reason = f'training diverged at epoch {epoch + 1}: {error}; nothing was saved from it ({kept}). Try a lower --lr or --max-grad-norm'
    finally:
        if fresh_sets is not None:
            fresh_sets.close()

    return finish(run, stopped, reason, run.elapsed + time.perf_counter() - run_start, progress if run.world.is_main else None, say)


def epoch_batches(run: Run, epoch: int, fresh_sets: FreshSets | None) -> list[Batch]:
    """The epoch's batches, at its stage. Also the epoch's random state: torch's draws in training (a pretrained
    model's dropout) follow from (seed, epoch, rank), so a resumed run draws what the uninterrupted one did, and
    ranks draw different dropout masks for their different rows."""
    torch.manual_seed(run.config.seed * 100_003 + epoch + 1_000_003 * run.world.rank)
    if run.config.fresh_data and epoch > 0:
        # the generators are unlimited: a fixed set of thousands of examples gets memorised instead of solved
        # (a ProsQA cot run fit its 20,000 to 0.99 token accuracy and answered 38% of new ones). The seed
        # follows from (seed, epoch), so a resumed run sees the same sets
        batches, epoch_longest = fresh_sets.get(epoch)
        run.longest_target = max(run.longest_target, epoch_longest)
        return batches
    return run.layout.batches(run.train_set, epoch)


def epoch_padding(lengths: tuple[int, int], batches: list[Batch], new_stage: bool) -> tuple[int, int]:
    """(prompt, answer) lengths that graphed steps pad an epoch's batches to: at least the epoch's longest, and within
    a stage never shorter than an earlier epoch's (`lengths`), so that one graph serves epoch after epoch. An
    epoch's longest prompt hovers around a graph's rounding boundary from set to set (ProsQA's between 319 and 321
    tokens, against multiples of 32), and each crossing would capture a graph again, seconds each time. A new
    stage starts afresh: its answers are shorter, its thoughts more."""
    longest = (max(b.prompt.shape[1] for b in batches), max(b.target.shape[1] for b in batches))
    return longest if new_stage else (max(lengths[0], longest[0]), max(lengths[1], longest[1]))


def train_epoch(run: Run, epoch: int, batches: list[Batch], nonfinite: NonFiniteSteps, progress: Callable | None, run_start: float) -> dict:
    """One epoch of optimizer steps over `batches`; returns its record for the history (loss, token accuracy, ...)."""
    config, curriculum, device = run.config, run.curriculum, run.device
    stage = curriculum.stage_at_epoch(epoch)
    new_stage = epoch > 0 and stage != curriculum.stage_at_epoch(epoch - 1)
    if config.reset_optimizer and new_stage:
        run.optimizer = make_optimizer(run.model, config)
        run.optimizer_start = run.step

    run.pad_lengths = epoch_padding(run.pad_lengths, batches, new_stage)
    run.train_step.pad_to(*run.pad_lengths)
    thought_mix = thought_mix_at_epoch(curriculum, epoch, config.mix_start, config.mix_epochs)
    if config.mix_start > 0:
        run.train_step.set_thought_mix(thought_mix)
    # numbered as the logs number them: epochs 0 to total - 1
    iterator = progress(batches, desc = f'epoch {epoch} of 0-{run.total_epochs - 1}, stage {stage}', leave = False) if progress else batches

    run.model.train()
    loss_sum = torch.zeros((), device = device)
    thought_loss_sum = torch.zeros((), device = device)
    halt_loss_sum = torch.zeros((), device = device)
    thought_token_loss_sum = torch.zeros((), device = device)
    align_sums = torch.zeros(2, device = device)            # align_mse, align_cosine
    # the thoughts' scale: summed RMS of every fed-back thought and their count; the embedding table's RMS per batch
    scale_sums = torch.zeros(3, device = device)
    finite_batches = torch.zeros((), device = device)
    correct = torch.zeros((), device = device)
    counted = torch.zeros((), device = device)
    window_finite = torch.ones((), dtype = torch.bool, device = device)     # the losses since the last update

    try:
        for batch_index, batch in enumerate(iterator):
            steps_now = (batch_index + 1) % config.grad_accum == 0 or batch_index == len(batches) - 1
            share = None
            if run.world.distributed:
                batch, share = shard_batch(batch, run.world)
            stats = run.train_step(batch, share, sync = steps_now)
            if share is not None and share.rows == 0:
                # a rank with no rows of this batch ran its step for the collectives only: it adds nothing to any
                # sum, except the embeddings' RMS, which every rank counts for every batch
                stats = type(stats)(*map(torch.zeros_like, stats))._replace(embedding_rms = stats.embedding_rms)
            finite = torch.isfinite(stats.loss)
            window_finite = window_finite & finite
            # a non-finite batch counts in no average: the curve shows the batches that trained
            loss_sum += torch.where(finite, stats.loss, 0.)
            thought_loss_sum += torch.where(finite, stats.thought_loss, 0.)
            halt_loss_sum += torch.where(finite, stats.halt_loss, 0.)
            thought_token_loss_sum += torch.where(finite, stats.thought_token_loss, 0.)
            align_sums += torch.where(finite, torch.stack((stats.align_mse, stats.align_cosine)), 0.)
            # a non-finite step's thoughts count in no mean either; every batch counts for the embeddings' RMS
            scale_sums += torch.stack((torch.where(finite, stats.thought_rms, 0.), torch.where(finite, stats.thoughts, 0.),
                                       stats.embedding_rms)).to(scale_sums.dtype)
            finite_batches += finite
            correct += stats.correct
            counted += stats.counted

            if steps_now:
                epochs_left = run.total_epochs - epoch - (batch_index + 1) / len(batches)
                # every rank skips a step that any rank's losses make non-finite: the weights stay the same everywhere
                nonfinite.apply(run.model, run.optimizer, learning_rate(config, run.step, run.optimizer_start, epochs_left), config.max_grad_norm,
                                all_agree(window_finite, run.world))
                window_finite = torch.ones((), dtype = torch.bool, device = device)
                run.step += 1

            if hasattr(iterator, 'set_postfix') and batch_index % 20 == 0:
                iterator.set_postfix(loss = f'{stats.loss.item():.3f}', stage = stage, acc = f'{(correct / counted.clamp(min = 1)).item():.3f}')

        skipped = nonfinite.end_epoch()
        run.train_step.release_unreplayed()
        if not bool(all_agree(weights_finite(run.model), run.world)):
            raise Diverged('the weights became non-finite')
    finally:
        if hasattr(iterator, 'close'):
            iterator.close()

    # over every rank's batches
    loss_sum, thought_loss_sum, halt_loss_sum, thought_token_loss_sum, align_sums, scale_sums, finite_batches, correct, counted = all_reduce_sum(
        [loss_sum, thought_loss_sum, halt_loss_sum, thought_token_loss_sum, align_sums, scale_sums, finite_batches, correct, counted], run.world)
    # an epoch of nothing but non-finite batches has no loss (0 / 0 = NaN, written as null)
    record = dict(epoch = epoch, stage = stage, loss = round((loss_sum / finite_batches).item(), 5),
                  token_accuracy = round((correct / counted.clamp(min = 1)).item(), 5),
                  seconds = round(run.elapsed + time.perf_counter() - run_start, 2))     # training time at the epoch's end
    if config.thought_loss > 0:
        # `loss` includes it, weighted; alone it tells whether the thoughts hold what they replaced
        record['thought_loss'] = round((thought_loss_sum / finite_batches).item(), 5)
    if config.halt_loss > 0:
        # unweighted, as the thought loss: how well the head knows where each example's thinking ends
        record['halt_loss'] = round((halt_loss_sum / finite_batches).item(), 5)
    if config.thought_token_loss > 0:
        # unweighted: how well the thoughts spell, in order, the tokens they replaced
        record['thought_token_loss'] = round((thought_token_loss_sum / finite_batches).item(), 5)
    for index, name in enumerate(('align_mse', 'align_cosine')):
        if getattr(config, name) > 0:
            record[name] = round((align_sums[index] / finite_batches).item(), 5)
    if config.mix_start > 0:
        # as the steps read it (one sync an epoch)
        record['thought_mix'] = round(run.train_step.thought_mix.item(), 5)
    # the mean RMS of the thoughts as fed back (absent from epochs without thoughts) beside the embeddings' (every
    # rank counts every batch), to see whether thoughts enter at the scale of the tokens they replace
    thought_rms_sum, thoughts, embedding_rms_sum = scale_sums.tolist()
    if thoughts > 0:
        record['thought_rms'] = round(thought_rms_sum / thoughts, 5)
    record['embedding_rms'] = round(embedding_rms_sum / (len(batches) * run.world.size), 5)
    if skipped:
        record['skipped_steps'] = skipped
    return json_safe(record)


def save_epoch(run: Run, epoch: int, elapsed: float):
    """The checkpoint at the end of `epoch` (`elapsed`: the run's training seconds so far)."""
    run.inference = inference_info(run.curriculum, run.curriculum.stage_at_epoch(epoch), run.longest_target)
    run.saved_epoch = epoch
    if run.config.fsdp:
        # whole tensors, gathered by every rank onto rank 0: the checkpoint loads anywhere, sharded or not
        model_state, optimizer_state = full_model_state(run.model), full_optimizer_state(run.model, run.optimizer)
    else:
        model_state, optimizer_state = run.model.state_dict(), run.optimizer.state_dict()
    if not run.world.is_main:
        return
    save_checkpoint(dict(
        config = asdict(run.config), curriculum = asdict(run.curriculum), tokenizer = run.tokenizer.to_dict(),
        model = model_state, optimizer = optimizer_state,
        epoch = epoch, step = run.step, optimizer_start = run.optimizer_start, history = run.history, elapsed = elapsed,
        inference = run.inference, data_digests = run.digests, backbone = backbone_config(run.model),
        pad_lengths = list(run.pad_lengths)
    ), run.checkpoint_path)


def finish(run: Run, stopped: str | None, reason: str | None, seconds: float, progress: Callable | None = None,
           say: Callable[[str], None] | None = None) -> dict:
    """The run's result: after the held-out evaluation and the plot, or for a diverged run, why it stopped.
    `say`: as in `train`."""
    config = run.config
    task = config.task if config.train_file is None else str(config.train_file)

    if stopped == 'diverged':
        return dict(finished = False, stopped = stopped, reason = reason, accuracy = None, n = 0, seconds = seconds,
                    method = config.method, task = task, epoch = run.saved_epoch,
                    checkpoint = str(run.checkpoint_path) if run.saved_epoch is not None else None)

    # a run stopped by its time budget is still evaluated, at the stage it reached (and says so)
    inference = run.inference
    result = held_out(run, inference, progress, say = say, title = f'at the end (epoch {run.saved_epoch})')
    plot = run.checkpoint_path.parent / 'training.png'
    if run.world.is_main:
        plot_history(run.history, plot, title = f'{config.task} / {config.method}', thought_loss_weight = config.thought_loss,
                     final_accuracy = (run.saved_epoch, result['accuracy']),
                     loss_weights = dict(align_mse = config.align_mse, align_cosine = config.align_cosine, halt_loss = config.halt_loss,
                                         thought_token_loss = config.thought_token_loss))

    return dict(
        finished = stopped is None,
        **(dict(stopped = stopped, reason = reason) if stopped else {}),
        accuracy = result['accuracy'],
        n = result['n'],
        seconds = seconds,
        method = config.method,
        task = task,
        num_thoughts = inference['num_thoughts'],
        stage = inference['stage'],
        final_stage = inference['final_stage'],
        epoch = run.saved_epoch,
        mean_new_tokens = result['mean_new_tokens'],
        checkpoint = str(run.checkpoint_path),
        plot = str(plot),
        metrics = str(run.checkpoint_path.parent / METRICS_NAME)
    )


def held_out(run: Run, inference: dict, progress: Callable | None = None, say: Callable[[str], None] | None = None, title: str = '') -> dict:
    """`evaluate_examples` on the run's held-out set, thinking and writing as `inference` says (`inference_info`).
    With `config.show_thoughts` N, `say` (rank 0's) then gets the first N examples' thoughts and answers
    (`probing.show_thoughts`), headed by `title`."""
    config = run.config
    model = gathered_model(run) if config.fsdp else run.model
    result = evaluate_examples(
        model, run.tokenizer, run.eval_set,
        num_thoughts = inference['num_thoughts'],
        max_new_tokens = inference['max_new_tokens'],
        source = config.eval_file or 'held-out examples',
        autocast_dtype = torch.bfloat16 if config.bf16 else None,
        world = run.world,
        progress = progress
    )
    if config.show_thoughts > 0 and say is not None and run.world.is_main:
        # rank 0 alone: an FSDP run's copy is whole here, and the probe runs no collective
        shown = run.eval_set[:config.show_thoughts]
        block = show_thoughts(model, run.tokenizer, [example.question for example in shown], result['predictions'][:len(shown)],
                              num_thoughts = inference['num_thoughts'], golds = [example.answer for example in shown],
                              autocast_dtype = torch.bfloat16 if config.bf16 else None)
        say(f"thoughts {title} ({inference['num_thoughts']} thoughts, held-out accuracy {result['accuracy']:.3f}):\n{block}")
    return result


def start_from(model: Coconut, tokenizer: Tokenizer, config: TrainConfig, device: torch.device):
    """A new run's first weights from another run's checkpoint (`config.init_from`): the same model shape, and ids
    that mean the same words; the optimizer, the schedule and the data start afresh."""
    path = config.init_from
    source = load_run(path, str(device))
    if source.tokenizer.to_dict() != tokenizer.to_dict():
        raise ValueError(f'init_from {path}: its vocabulary is not the one this run\'s data gives, so its ids would mean other words')
    try:
        # a run feeding thoughts back at the embeddings' scale may start from weights without that gain (the
        # paper starts Coconut from a CoT run): it keeps its initial 1. Anything else missing is an error
        missing, unexpected = model.load_state_dict(source.model.state_dict(), strict = False)
        if unexpected or set(missing) - {'thought_gain'}:
            raise RuntimeError(f'missing keys {sorted(set(missing) - {"thought_gain"})}, unexpected keys {sorted(unexpected)}')
    except RuntimeError as error:
        width = source.config.feedforward_width()
        hint = (f'; its feedforward is {width} wide (made before the 2/3 rule of the fourteenth session?): give --ff-dim-inner {width}'
                if width is not None and width != config.feedforward_width() else '')
        raise ValueError(f'init_from {path}: its weights do not fit this run\'s model ({first_line(error)}){hint}') from None


def gathered_model(run: Run) -> Coconut:
    """An unsharded copy of an FSDP2 run's model on each rank, for generation (whose static cache runs the blocks
    outside the hooks that gather their weights): inference holds the weights alone, a quarter of what training
    with AdamW holds per parameter."""
    state = full_model_state(run.model, everywhere = True)
    model = build_model(run.config, len(run.tokenizer), run.curriculum, backbone_config(run.model)).to(run.device)
    model.load_state_dict(state)
    return model
