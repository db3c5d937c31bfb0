"""Speed and memory of Coconut training and generation, against two ceilings, in one run on one device.

For each config: the Coconut training step (forward + backward + AdamW), its tokens/s over batch x (prompt + answer),
its peak memory, and greedy generation of 64 new tokens. In the same run, on the same total tokens
(batch x (prompt + answer + thought positions)):

  (i)  our own Transformer as a plain LM: one forward over all ids, cross-entropy on all positions. The ratio to it
       is what the latent recurrence costs (sequential thought steps, KV cache, masks).
  (ii) a plain pre-norm decoder of the same size (benchmarks/plain_decoder.py). The ratio to it is what the
       architecture costs (hyper-connections, value residual, rotary from x-transformers).

    python benchmarks/benchmark.py                                   # everything, on CUDA when there is one
    python benchmarks/benchmark.py --device cpu --small              # a smoke run on a laptop CPU
    python benchmarks/benchmark.py --configs A,A1 --write-md --out results.json

With `--reference DIR`, the same run also times coconut-pytorch 0.0.32 (the release this package replaces) on every
config: its eager training step and its generation, at the same constructor arguments, and each of ours gets a
ratio to it ("x 0.0.32"). DIR holds it installed apart from this package, imported by path:

    pip install --no-deps --target /tmp/coconut-0.0.32 coconut-pytorch==0.0.32 rotary-embedding-torch
    python benchmarks/benchmark.py --device cpu --small --reference /tmp/coconut-0.0.32

The last thing printed is the results table.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import platform
import shlex
import statistics
import sys
import time
import traceback
import warnings
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent

try:
    import coconut_pytorch  # noqa: F401
except ImportError:
    sys.path.insert(0, str(REPO_ROOT))

from coconut_pytorch import Coconut, Transformer  # noqa: E402

sys.path.insert(0, str(HERE))
from plain_decoder import PlainDecoder  # noqa: E402

# configs

COMMON = dict(num_tokens = 256, heads = 8, dim_head = 64, streams = 4)

BASE_CONFIGS = {
    'A': dict(dim = 512, depth = 6, batch = 16, prompt = 1024, answer = 64, steps = 3, latents = 1),
    'B': dict(dim = 1024, depth = 12, batch = 8, prompt = 2048, answer = 64, steps = 6, latents = 2),
    'C': dict(dim = 512, depth = 6, batch = 64, prompt = 256, answer = 32, steps = 6, latents = 2),
}

SMALL = dict(dim = 64, depth = 2, batch = 2, prompt = 64, answer = 16, heads = 4, dim_head = 16)

D_STEPS = (1, 4, 16, 64)
D_STEPS_SMALL = (1, 4, 16)
ALL_CONFIGS = ('A', 'B', 'C', 'D', 'A1')


def make_runs(names: list[str], small: bool) -> list[dict]:
    """Expand config names into benchmark runs (D becomes one run per step count and checkpointing)."""
    def cfg(base: str, **overrides) -> dict:
        c = {**COMMON, **BASE_CONFIGS[base]}
        if small:
            c.update(SMALL)
        c.update(overrides)
        return c

    runs = []
    for name in names:
        if name in ('A', 'B', 'C'):
            runs.append(dict(name = name, cfg = cfg(name), checkpoint = False, generate = True))
        elif name == 'A1':
            runs.append(dict(name = 'A1', cfg = cfg('A', streams = 1), checkpoint = False, generate = True))
        elif name == 'D':
            for steps in (D_STEPS_SMALL if small else D_STEPS):
                for ckpt in (False, True):
                    runs.append(dict(name = f'D-S{steps}' + ('-ckpt' if ckpt else ''), cfg = cfg('C', steps = steps), checkpoint = ckpt, generate = False, group = 'D'))
        else:
            raise SystemExit(f'unknown config {name!r}; choose from {",".join(ALL_CONFIGS)}')
    return runs


def total_length(cfg: dict) -> int:
    """Positions the Coconut transformer runs: prompt, <bot> x c, S x c thoughts, <eot>, answer[:-1]."""
    return cfg['prompt'] + cfg['answer'] + cfg['latents'] * (cfg['steps'] + 1)


def transformer_kwargs(cfg: dict, streams: int | None = None) -> dict:
    return dict(num_tokens = cfg['num_tokens'], dim = cfg['dim'], depth = cfg['depth'], dim_head = cfg['dim_head'],
                heads = cfg['heads'], num_residual_streams = streams or cfg['streams'])


# device helpers

class Bench:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.cuda = self.device.type == 'cuda'
        self.bf16 = args.bf16 if args.bf16 is not None else self.cuda
        self.compile = args.compile if args.compile is not None else self.cuda

    def autocast(self):
        if not self.bf16:
            return nullcontext()
        return torch.autocast(device_type = self.device.type, dtype = torch.bfloat16)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def optimizer(self, model: nn.Module):
        kwargs = dict(fused = True) if self.cuda else {}
        return torch.optim.AdamW(model.parameters(), lr = 1e-4, **kwargs)

    def training_step(self, model: nn.Module, opt, prompt: torch.Tensor, answer: torch.Tensor, before_each = None):
        """One training iteration of `model` on (prompt, answer) as a function to time: forward, backward, the optimizer."""
        def step():
            if before_each is not None:
                before_each()
            with self.autocast():
                loss = model(prompt, answer)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none = True)
        return step

    def greedy(self, model: nn.Module, prompt: torch.Tensor, **generate_kwargs):
        """Greedy generation of `--gen-tokens` tokens after `prompt`, as a function to time."""
        def generate():
            with self.autocast():
                model.generate(prompt, max_length = self.args.gen_tokens, temperature = 0., **generate_kwargs)
        return generate

    def ids(self, *shape) -> torch.Tensor:
        return torch.randint(0, COMMON['num_tokens'], shape, device = self.device)

    def reset_memory(self):
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self):
        if not self.cuda:
            return None
        return torch.cuda.max_memory_allocated(self.device) / 2 ** 30

    def time_ms(self, fn, steps: int, warmup: int) -> list[float]:
        """Run fn warmup times, then time `steps` calls; each call's milliseconds."""
        for _ in range(warmup):
            fn()
        self.sync()

        times = []
        for _ in range(steps):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing = True), torch.cuda.Event(enable_timing = True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return times


def is_oom(err: BaseException) -> bool:
    oom_types = tuple(t for t in (getattr(torch, 'OutOfMemoryError', None), getattr(torch.cuda, 'OutOfMemoryError', None)) if t)
    return isinstance(err, oom_types) or 'out of memory' in str(err).lower()


def free(bench: Bench):
    gc.collect()
    if bench.cuda:
        torch.cuda.synchronize(bench.device)
        torch.cuda.empty_cache()


def set_recompile_limits():
    # thought steps and generation call the same blocks with many shapes and grad modes
    for name, value in (('recompile_limit', 64), ('cache_size_limit', 64), ('accumulated_recompile_limit', 2048), ('accumulated_cache_size_limit', 2048)):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, value)


def decompose_small_matmuls():
    """Let inductor turn batched matmuls with two tiny dimensions into multiply-adds (an experiment, off by default).

    The hyper-connection stream mixing is such a matmul per token (streams x streams+1 against streams x dim).
    Measured on an H100 (config A): it made the compiled LM ceiling slower, 30.0 -> 58.6 ms, as the decomposed
    products tile badly; kept as a flag so the finding can be re-checked on other GPUs and torch versions."""
    import torch._inductor.config as inductor_config
    inductor_config.post_grad_fusion_options = {**inductor_config.post_grad_fusion_options, 'decompose_mm_pass': {}}


def coconut_partitioner_settings(args):
    """`--activation-memory-budget` for Coconut's compile only (the ceilings keep torch's default): below 1, the
    partitioner recomputes more in backward to save fewer activations, trading step time for peak memory."""
    if args.activation_memory_budget is None:
        return contextlib.nullcontext()
    import torch._functorch.config as functorch_config
    return functorch_config.patch(activation_memory_budget = args.activation_memory_budget)


def reset_dynamo():
    try:
        torch._dynamo.reset()
    except Exception:
        pass


# the reference: coconut-pytorch 0.0.32

def load_reference(directory: str):
    """coconut-pytorch 0.0.32's model module, from the folder it was installed into (`pip install --target DIR`), under
    a name of its own: importing it as `coconut_pytorch` would shadow this package. Its own dependencies
    (rotary_embedding_torch) are looked up in DIR after everything else."""
    root = Path(directory).expanduser().resolve()
    source = root / 'coconut_pytorch' / 'coconut.py'
    if not source.is_file():
        raise SystemExit(f'--reference {directory}: no coconut_pytorch/coconut.py there; install it with '
                         f'pip install --no-deps --target {directory} coconut-pytorch==0.0.32 rotary-embedding-torch')
    versions = [path.name.removesuffix('.dist-info').split('-', 1)[1] for path in root.glob('coconut_pytorch-*.dist-info')]
    sys.path.append(str(root))
    spec = importlib.util.spec_from_file_location('coconut_pytorch_reference', source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.VERSION = versions[0] if versions else 'unknown'
    return module


def measure_reference(bench: Bench, run: dict, reference) -> dict:
    """0.0.32's eager training step (forward + backward + AdamW) and greedy generation at `run`'s config, on the same
    random ids as ours (the same seed)."""
    cfg, args = run['cfg'], bench.args
    result = dict(kind = 'reference', status = 'ok', version = reference.VERSION)
    bench.reset_memory()
    torch.manual_seed(args.seed)
    model = opt = None
    try:
        model = reference.Coconut(num_reasoning_steps = cfg['steps'], num_latents_per_step = cfg['latents'],
                                  transformer = transformer_kwargs(cfg), checkpoint = run['checkpoint']).to(bench.device)
        result['params'] = sum(p.numel() for p in model.parameters())
        opt = bench.optimizer(model)
        prompt = bench.ids(cfg['batch'], cfg['prompt'])
        answer = bench.ids(cfg['batch'], cfg['answer'])

        times = bench.time_ms(bench.training_step(model, opt, prompt, answer), args.steps, args.warmup)
        result.update(step_ms = statistics.median(times), step_ms_all = times, peak_gib = bench.peak_gib())
        if run['generate'] and not args.no_gen:
            opt = None
            model.eval()
            bench.reset_memory()
            gen_times = bench.time_ms(bench.greedy(model, prompt), args.gen_runs, 1)
            result.update(gen_ms = statistics.median(gen_times), gen_ms_all = gen_times)
    except Exception as err:
        if not is_oom(err):
            raise
        result.update(status = 'OOM', error = str(err).splitlines()[0][:200])
    finally:
        model = opt = None
        free(bench)
    return result


# compiling Coconut

def compile_coconut(model: Coconut, mode: str, torch_mode: str | None = None):
    """Compile in place. whole: Coconut.forward (the unrolled thought loop in one graph, generation stays eager);
    transformer: Transformer.forward_with_cache (recompiles per cache layout); blocks: `Coconut.compile_blocks`, each
    attention and feedforward block and the stream mixing, dynamic in length (compile time independent of the number
    of thoughts and of the depth)."""
    kwargs = dict(mode = torch_mode) if torch_mode else {}
    if mode == 'whole':
        model.forward = torch.compile(model.forward, **kwargs)
    elif mode == 'transformer':
        model.model.forward_with_cache = torch.compile(model.model.forward_with_cache, **kwargs)
    elif mode == 'blocks':
        # regional compilation, the one-line option of a custom loop: each block and the stream mixing, dynamic in length
        model.compile_blocks()
    elif mode != 'eager':
        raise ValueError(mode)


def compile_chain(bench: Bench, run: dict) -> list[str]:
    if not bench.compile:
        return ['eager']
    mode = bench.args.compile_mode
    if mode == 'auto':
        # D sweeps up to 64 thought steps: a whole-forward graph would unroll them all (minutes of compilation each),
        # and per-block compilation measured slower than eager on H100, so D runs eager
        mode = 'eager' if run.get('group') == 'D' else 'whole'
    return [mode] + [m for m in ('eager',) if m != mode]


# measurements

def measure_coconut(bench: Bench, run: dict) -> dict:
    cfg, args = run['cfg'], bench.args
    result = dict(kind = 'coconut', status = 'ok')

    for mode in compile_chain(bench, run):
        reset_dynamo()
        bench.reset_memory()
        torch.manual_seed(args.seed)
        model = opt = None
        try:
            model = Coconut(
                num_reasoning_steps = cfg['steps'],
                num_latents_per_step = cfg['latents'],
                transformer = transformer_kwargs(cfg),
                checkpoint = run['checkpoint']
            ).to(bench.device)
            result['params'] = sum(p.numel() for p in model.parameters())
            opt = bench.optimizer(model)
            prompt = bench.ids(cfg['batch'], cfg['prompt'])
            answer = bench.ids(cfg['batch'], cfg['answer'])

            compile_coconut(model, mode, args.torch_compile_mode if mode != 'eager' else None)

            cudagraphs = args.torch_compile_mode in ('reduce-overhead', 'max-autotune') and mode != 'eager' and bench.cuda
            # with CUDA graphs, one training iteration per call: the graphs' output buffers may be reused from there on
            step = bench.training_step(model, opt, prompt, answer, torch.compiler.cudagraph_mark_step_begin if cudagraphs else None)

            t0 = time.perf_counter()
            step()                      # first call compiles; failures surface here
            bench.sync()
            result['first_step_s'] = time.perf_counter() - t0
            if mode != 'eager':
                from torch._dynamo.utils import counters
                result['inductor_decomposed'] = {k: v for k, v in counters['inductor'].items() if k.startswith('decompose')}

            times = bench.time_ms(step, args.steps, max(args.warmup - 1, 0))
            result.update(compile = mode, step_ms = statistics.median(times), step_ms_all = times, peak_gib = bench.peak_gib())

            if run['generate'] and not args.no_gen:
                opt = None
                model.eval()
                bench.reset_memory()

                gen, gen_without_graphs = bench.greedy(model, prompt), bench.greedy(model, prompt, cuda_graph = False)

                try:
                    gen_times = bench.time_ms(gen, args.gen_runs, 1)
                    result.update(gen_ms = statistics.median(gen_times), gen_ms_all = gen_times, gen_peak_gib = bench.peak_gib(),
                                  gen_compile = 'eager' if mode == 'whole' else mode, gen_cuda_graph = bench.cuda)
                    if bench.cuda and args.gen_compare:
                        # the same generation with every step launched eagerly: what the CUDA graphs save
                        result['gen_ms_no_graph'] = statistics.median(bench.time_ms(gen_without_graphs, args.gen_runs, 1))
                    if bench.cuda and args.gen_compile:
                        # each step compiled before its graph is captured (the first call compiles)
                        gen_compiled = bench.greedy(model, prompt, compile_steps = True)

                        t0 = time.perf_counter()
                        gen_compiled()
                        bench.sync()
                        result['gen_compile_first_s'] = time.perf_counter() - t0
                        result['gen_ms_compiled'] = statistics.median(bench.time_ms(gen_compiled, args.gen_runs, 1))
                except Exception as err:
                    if not is_oom(err):
                        raise
                    result.update(gen_status = 'OOM')
            return result

        except Exception as err:
            if is_oom(err):
                result.update(status = 'OOM', compile = mode, error = str(err).splitlines()[0][:200])
                return result
            if mode == 'eager':
                raise
            print(f'WARNING [{run["name"]}] compile mode {mode!r} failed ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ""}); falling back', flush = True)
            if args.verbose:
                traceback.print_exc()
        finally:
            model = opt = None
            free(bench)

    return result


class LMLoss(nn.Module):
    """Cross-entropy of a plain LM on all positions."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, ids, targets):
        logits = self.net(ids)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def measure_lm(bench: Bench, net_fn, batch: int, length: int, compiled: bool) -> dict:
    args = bench.args
    result = dict(status = 'ok', compile = 'whole' if compiled else 'eager')
    reset_dynamo()
    bench.reset_memory()
    torch.manual_seed(args.seed)
    model = opt = None
    try:
        model = LMLoss(net_fn()).to(bench.device)
        opt = bench.optimizer(model)
        loss_fn = torch.compile(model) if compiled else model
        ids, targets = bench.ids(batch, length), bench.ids(batch, length)

        def step():
            with bench.autocast():
                loss = loss_fn(ids, targets)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none = True)

        times = bench.time_ms(step, args.steps, max(args.warmup, 1))
        result.update(step_ms = statistics.median(times), step_ms_all = times, peak_gib = bench.peak_gib())
    except Exception as err:
        if not is_oom(err):
            raise
        result.update(status = 'OOM', error = str(err).splitlines()[0][:200])
    finally:
        model = opt = loss_fn = None
        free(bench)
    return result


def measure_ceilings(bench: Bench, run: dict, cache: dict) -> tuple[dict, dict]:
    cfg = run['cfg']
    batch, length = cfg['batch'], total_length(cfg)
    size = (cfg['dim'], cfg['depth'], cfg['heads'], cfg['dim_head'])

    key_lm = ('lm', *size, cfg['streams'], batch, length)
    if key_lm not in cache:
        cache[key_lm] = measure_lm(bench, lambda: Transformer(**transformer_kwargs(cfg)), batch, length, bench.compile)
        cache[key_lm].update(kind = 'ceiling-i', batch = batch, length = length, streams = cfg['streams'])

    key_plain = ('plain', *size, batch, length)
    if key_plain not in cache:
        net = lambda: PlainDecoder(cfg['num_tokens'], cfg['dim'], cfg['depth'], cfg['dim_head'], cfg['heads'])
        cache[key_plain] = measure_lm(bench, net, batch, length, bench.compile)
        cache[key_plain].update(kind = 'ceiling-ii', batch = batch, length = length)

    return cache[key_lm], cache[key_plain]


def hyper_connection_bench(bench: Bench, runs: list[dict]) -> list[dict]:
    """Config A's Transformer alone as a plain LM (training step): eager vs compiled, 4 vs 1 residual streams."""
    cfg = next(r['cfg'] for r in runs if r['name'] == 'A')
    batch, length = cfg['batch'], total_length(cfg)
    rows = []
    for compiled in (False, True):
        for streams in (4, 1):
            if compiled and not bench.compile:
                rows.append(dict(streams = streams, compile = 'whole', status = 'skipped (compile off)'))
                continue
            r = measure_lm(bench, lambda: Transformer(**transformer_kwargs(cfg, streams)), batch, length, compiled)
            r.update(streams = streams)
            rows.append(r)
            print(f'  hc-bench streams={streams} {r["compile"]}: {fmt(r.get("step_ms"), ".1f")} ms', flush = True)
    return rows


# reporting

def fmt(v, spec: str, missing: str = 'n/a') -> str:
    return missing if v is None else format(v, spec)


def device_name(bench: Bench) -> str:
    if bench.cuda:
        return torch.cuda.get_device_name(bench.device)
    name = platform.processor() or 'CPU'
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                name = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    return f'{name} ({torch.get_num_threads()} threads)'


HEADER = ['config', 'model', 'S x c', 'ckpt', 'compile', 'step ms', 'tok/s', 'peak GiB', 'x (i)', 'x (ii)', 'x 0.0.32', 'gen ms', 'gen x 0.0.32',
          'gen tok/s', 'gen ms, no graphs', 'gen ms, compiled steps', 'M params']


def table_rows(records: list[dict]) -> list[list[str]]:
    rows = []
    for rec in records:
        cfg = rec['cfg']
        sc = f'{cfg["steps"]} x {cfg["latents"]}'
        reference = rec.get('reference')
        for model, r in (('coconut', rec['coconut']), ('(i) LM', rec['ceiling_i']), ('(ii) plain', rec['ceiling_ii']), ('0.0.32', reference)):
            if r is None:
                continue
            if model != 'coconut' and r.get('printed_in') not in (None, rec['name']):
                continue
            r.setdefault('printed_in', rec['name'])
            ok = r['status'] == 'ok'
            if model in ('coconut', '0.0.32'):
                tokens = cfg['batch'] * (cfg['prompt'] + cfg['answer'])
            else:
                tokens = r['batch'] * r['length']
            step = r.get('step_ms') if ok else None
            ratio_i = ratio_ii = ratio_reference = gen_ratio_reference = None
            gen_ms = r.get('gen_ms')
            if model == 'coconut' and ok:
                ceiling_ms = lambda key: (rec.get(key) or {}).get('step_ms')
                ratio_i = step / ceiling_ms('ceiling_i') if ceiling_ms('ceiling_i') else None
                ratio_ii = step / ceiling_ms('ceiling_ii') if ceiling_ms('ceiling_ii') else None
                ratio_reference = step / ceiling_ms('reference') if ceiling_ms('reference') else None
                reference_gen = (reference or {}).get('gen_ms')
                gen_ratio_reference = gen_ms / reference_gen if gen_ms and reference_gen else None
            mine = model == 'coconut'
            rows.append([
                rec['name'],
                model + (f' s={r["streams"]}' if model == '(i) LM' else ''),
                sc if model in ('coconut', '0.0.32') else f'L={r["length"]}',
                ('yes' if rec['checkpoint'] else 'no') if model in ('coconut', '0.0.32') else '',
                r.get('compile', 'eager'),
                fmt(step, '.1f', r['status']),
                fmt(tokens / step * 1e3 if step else None, ',.0f', '-'),
                fmt(r.get('peak_gib') if ok else None, '.2f'),
                fmt(ratio_i, '.2f', 'n/a' if mine else '-'),
                fmt(ratio_ii, '.2f', 'n/a' if mine else '-'),
                fmt(ratio_reference, '.2f', 'n/a' if mine and reference else '-'),
                fmt(gen_ms, '.1f', '-'),
                fmt(gen_ratio_reference, '.2f', '-'),
                fmt(cfg['batch'] * rec['gen_tokens'] / gen_ms * 1e3 if gen_ms else None, ',.0f', '-'),
                fmt(r.get('gen_ms_no_graph'), '.1f', '-'),
                fmt(r.get('gen_ms_compiled'), '.1f', '-'),
                fmt(r['params'] / 1e6 if r.get('params') else None, '.2f', '-'),
            ])
    for rec in records:  # reset for a second rendering
        for key in ('coconut', 'ceiling_i', 'ceiling_ii', 'reference'):
            if rec.get(key) is not None:
                rec[key].pop('printed_in', None)
    return rows


def render(rows: list[list[str]], header: list[str], markdown: bool) -> str:
    if markdown:
        lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(['---'] * len(header)) + '|']
        lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
        return '\n'.join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: '  '.join(c.rjust(w) if i >= 5 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return '\n'.join([line(header), line(['-' * w for w in widths]), *map(line, rows)])


def hc_rows(hc: list[dict]) -> list[list[str]]:
    return [[str(r['streams']), r['compile'], fmt(r.get('step_ms'), '.1f', r['status']), fmt(r.get('peak_gib'), '.2f')] for r in hc]


HC_HEADER = ['streams', 'compile', 'step ms', 'peak GiB']


def notes(bench: Bench) -> list[str]:
    return [
        'tok/s: coconut = batch x (prompt + answer) / step; ceilings = batch x L / step, L = prompt + answer + c x (S + 1), '
        'the positions Coconut runs. x (i), x (ii): coconut step time over the ceiling step time (1.00 = as fast).'
        + (f' x 0.0.32, gen x 0.0.32: ours over coconut-pytorch {bench.reference.VERSION} (--reference, eager, the same config, ids '
           'and constructor arguments; below 1 = faster).' if bench.reference else ''),
        f'step: forward + backward + AdamW{" (fused)" if bench.cuda else ""}, median of {bench.args.steps} after {bench.args.warmup} warm-up; '
        f'{"bf16 autocast" if bench.bf16 else "float32"}; generation: greedy, {bench.args.gen_tokens} new tokens, median of {bench.args.gen_runs}.',
        'compile: whole = Coconut.forward compiled; blocks = each attention / feedforward / hyper-connection '
        'compiled; a failed compile falls back to eager with a warning. D runs eager unless --compile-mode says otherwise.'
        + (f' torch.compile mode of whole and transformer: {bench.args.torch_compile_mode} (blocks use the default mode).' if bench.args.torch_compile_mode else '')
        + (" inductor's decompose_mm_pass on (every compiled model)." if bench.args.decompose_small_mm else '')
        + (f' activation_memory_budget {bench.args.activation_memory_budget} for the Coconut compile.' if bench.args.activation_memory_budget is not None else ''),
        'generation is not compiled: the prompt runs eagerly into a static cache, and on CUDA every later step (thoughts, '
        '<eot>, tokens) replays a CUDA graph; "gen ms, no graphs" (--gen-compare) is the same generation launched eagerly; '
        '"gen ms, compiled steps" (--gen-compile) compiles each step before capturing it (generate(compile_steps=True)).',
    ]


def write_markdown(bench: Bench, meta: dict, records: list[dict], hc: list[dict]):
    path = Path(bench.args.md_file)
    parts = []
    if not path.exists():
        parts.append('# Benchmarks\n\nRows appended by `benchmarks/benchmark.py --write-md`. See benchmarks/README.md.\n')
    parts.append(f'\n## {meta["date"]}: {meta["device_name"]}, torch {meta["torch"]}\n')
    parts.append(f'`{meta["command"]}`\n')
    parts.append(render(table_rows(records), HEADER, markdown = True) + '\n')
    if hc:
        parts.append(f'\nHyper-connections, config A Transformer alone (LM training step, L={total_length(next(r["cfg"] for r in records if r["name"] == "A"))}):\n')
        parts.append(render(hc_rows(hc), HC_HEADER, markdown = True) + '\n')
    parts.append('\n' + '\n'.join(f'- {n}' for n in notes(bench)) + '\n')
    with path.open('a') as f:
        f.write(''.join(parts))
    print(f'appended to {path}', flush = True)


# main

def parse_args(argv = None):
    p = argparse.ArgumentParser(description = __doc__, formatter_class = argparse.RawDescriptionHelpFormatter)
    p.add_argument('--configs', default = ','.join(ALL_CONFIGS), help = 'comma-separated subset of A,B,C,D,A1')
    p.add_argument('--device', default = 'cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--small', action = 'store_true', help = 'shrink every config to run on a CPU in minutes')
    p.add_argument('--steps', type = int, default = 10, help = 'timed training steps')
    p.add_argument('--warmup', type = int, default = 3, help = 'warm-up steps (compilation happens here)')
    p.add_argument('--compile', dest = 'compile', action = 'store_true', default = None, help = 'torch.compile (default on CUDA)')
    p.add_argument('--no-compile', dest = 'compile', action = 'store_false')
    p.add_argument('--compile-mode', choices = ('auto', 'whole', 'transformer', 'blocks', 'eager'), default = 'auto',
                   help = 'how Coconut is compiled; auto: whole for A, B, C, A1 and eager for D; eager: not compiled (ceilings still are)')
    p.add_argument('--torch-compile-mode', default = 'auto',
                   help = "torch.compile mode for Coconut: auto = reduce-overhead (CUDA graphs of the compiled step) on CUDA "
                          "and torch's default elsewhere; 'default' or any torch.compile mode")
    p.add_argument('--decompose-small-mm', action = 'store_true',
                   help = "inductor's decompose_mm_pass for every compiled model (an experiment: slower on an H100)")
    p.add_argument('--activation-memory-budget', type = float, default = None,
                   help = "torch._functorch.config.activation_memory_budget for Coconut's compile (0-1; the ceilings keep "
                          "the default 1.0): lower saves fewer activations and recomputes more")
    p.add_argument('--gen-compare', action = 'store_true', help = 'also time generation without CUDA graphs')
    p.add_argument('--gen-compile', action = 'store_true', help = 'also time generation with compiled, graph-captured steps (compile_steps=True)')
    p.add_argument('--bf16', dest = 'bf16', action = 'store_true', default = None, help = 'bf16 autocast (default on CUDA)')
    p.add_argument('--no-bf16', dest = 'bf16', action = 'store_false')
    p.add_argument('--gen-tokens', type = int, default = 64)
    p.add_argument('--gen-runs', type = int, default = 3, help = 'timed generations (after one warm-up)')
    p.add_argument('--no-gen', action = 'store_true', help = 'skip generation')
    p.add_argument('--no-ceilings', action = 'store_true', help = 'skip ceilings (i) and (ii)')
    p.add_argument('--no-hc-bench', action = 'store_true', help = 'skip the 4 vs 1 residual streams comparison')
    p.add_argument('--threads', type = int, default = None, help = 'torch.set_num_threads (CPU; default 1 with --small on CPU, else torch default)')
    p.add_argument('--reference', default = None, metavar = 'DIR',
                   help = 'also time coconut-pytorch 0.0.32 installed in DIR (pip install --no-deps --target DIR '
                          'coconut-pytorch==0.0.32 rotary-embedding-torch), eagerly, on every config')
    p.add_argument('--seed', type = int, default = 0)
    p.add_argument('--write-md', action = 'store_true', help = 'append the results to BENCHMARKS.md')
    p.add_argument('--md-file', default = str(REPO_ROOT / 'BENCHMARKS.md'))
    p.add_argument('--out', default = None, help = 'write all raw numbers to this JSON file')
    p.add_argument('--verbose', action = 'store_true', help = 'print tracebacks of compile failures')
    return p.parse_args(argv)


def main(argv = None):
    args = parse_args(argv)
    if args.threads is None and args.small and not args.device.startswith('cuda'):
        # a smoke run: one thread is immune to the oversubscription that makes small ops 100x slower on a busy CPU
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise SystemExit('--device cuda but CUDA is not available; use --device cpu')
    if args.steps < 1:
        raise SystemExit('--steps must be >= 1')
    if args.activation_memory_budget is not None and not 0. <= args.activation_memory_budget <= 1.:
        raise SystemExit('--activation-memory-budget must be between 0 and 1')

    bench = Bench(args)
    bench.reference = load_reference(args.reference) if args.reference else None
    if args.torch_compile_mode == 'auto':
        # the compiled step launches ~1,500 kernels; on an H100 launching them takes longer than running them
        args.torch_compile_mode = 'reduce-overhead' if bench.cuda else None
    elif args.torch_compile_mode == 'default':
        args.torch_compile_mode = None
    set_recompile_limits()
    if args.decompose_small_mm:
        decompose_small_matmuls()
    if bench.cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    names = [n.strip() for n in args.configs.split(',') if n.strip()]
    runs = make_runs(names, args.small)

    meta = dict(
        date = datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
        device = str(bench.device),
        device_name = device_name(bench),
        torch = torch.__version__,
        cuda = torch.version.cuda,
        python = platform.python_version(),
        command = ' '.join(shlex.quote(a) for a in ['python', *sys.argv]) if argv is None else ' '.join(argv),
        bf16 = bench.bf16,
        compile = bench.compile,
        compile_mode = args.compile_mode,
        torch_compile_mode = args.torch_compile_mode,
        decompose_small_mm = args.decompose_small_mm,
        activation_memory_budget = args.activation_memory_budget,
        steps = args.steps,
        warmup = args.warmup,
        small = args.small,
        reference = f'coconut-pytorch {bench.reference.VERSION} from {args.reference}' if bench.reference else None,
    )
    print(f'{meta["device_name"]} | torch {meta["torch"]} | bf16 {bench.bf16} | compile {bench.compile} ({args.compile_mode}) | {meta["command"]}', flush = True)

    records, ceiling_cache = [], {}
    t_start = time.perf_counter()

    for run in runs:
        cfg = run['cfg']
        print(f'[{run["name"]}] dim {cfg["dim"]} depth {cfg["depth"]} batch {cfg["batch"]} prompt {cfg["prompt"]} answer {cfg["answer"]} '
              f'S {cfg["steps"]} x c {cfg["latents"]} streams {cfg["streams"]} ckpt {run["checkpoint"]}', flush = True)
        with coconut_partitioner_settings(args):
            coconut = measure_coconut(bench, run)
        print(f'  coconut: {coconut["status"]} {coconut.get("compile")} step {fmt(coconut.get("step_ms"), ".1f")} ms '
              f'(first {fmt(coconut.get("first_step_s"), ".1f")} s) peak {fmt(coconut.get("peak_gib"), ".2f")} GiB gen {fmt(coconut.get("gen_ms"), ".1f")} ms'
              f' (without CUDA graphs {fmt(coconut.get("gen_ms_no_graph"), ".1f")} ms, compiled steps {fmt(coconut.get("gen_ms_compiled"), ".1f")} ms)'
              + (f' decomposed {coconut["inductor_decomposed"]}' if coconut.get('inductor_decomposed') else ''), flush = True)

        reference = None
        if bench.reference is not None:
            reference = measure_reference(bench, run, bench.reference)
            print(f'  coconut-pytorch {bench.reference.VERSION}: {reference["status"]} eager step {fmt(reference.get("step_ms"), ".1f")} ms '
                  f'gen {fmt(reference.get("gen_ms"), ".1f")} ms, {fmt(reference.get("params"), ",")} parameters (ours {fmt(coconut.get("params"), ",")})', flush = True)

        ceiling_i = ceiling_ii = None
        if not args.no_ceilings:
            ceiling_i, ceiling_ii = measure_ceilings(bench, run, ceiling_cache)
            print(f'  ceilings: (i) {fmt(ceiling_i.get("step_ms"), ".1f", ceiling_i["status"])} ms  (ii) {fmt(ceiling_ii.get("step_ms"), ".1f", ceiling_ii["status"])} ms', flush = True)

        records.append(dict(name = run['name'], cfg = cfg, checkpoint = run['checkpoint'], total_length = total_length(cfg),
                            gen_tokens = args.gen_tokens, coconut = coconut, ceiling_i = ceiling_i, ceiling_ii = ceiling_ii,
                            reference = reference))

    hc = []
    if 'A' in names and not args.no_hc_bench:
        print('[hc-bench] config A Transformer alone, 4 vs 1 residual streams, eager vs compiled', flush = True)
        hc = hyper_connection_bench(bench, runs)

    meta['total_s'] = time.perf_counter() - t_start

    if args.out:
        Path(args.out).write_text(json.dumps(dict(meta = meta, results = records, hyper_connections = hc), indent = 2))
        print(f'wrote {args.out}', flush = True)

    if args.write_md:
        write_markdown(bench, meta, records, hc)

    print(f'\ntotal {meta["total_s"]:.0f} s')
    for n in notes(bench):
        print('note: ' + n)
    if hc:
        print('\nhyper-connections: config A Transformer alone (LM training step)')
        print(render(hc_rows(hc), HC_HEADER, markdown = False))
    print(f'\n{meta["device_name"]} | torch {meta["torch"]}')
    print(render(table_rows(records), HEADER, markdown = False), flush = True)


if __name__ == '__main__':
    warnings.filterwarnings('ignore', message = '.*TF32.*')
    main()
