"""Step time and generation time of Coconut over a Hugging Face backbone, against the same model without thoughts.

    python benchmarks/hf_step.py --device cuda            # GPT-2 124M's config, random weights (nothing downloaded)
    python benchmarks/hf_step.py --device cpu --small     # a tiny config, to smoke-test anywhere

Three rows, each a training step (forward, backward, fused AdamW) over the same prompts and answers, median of
`--steps` after `--warmup`:
- `hf plain`: the transformers model itself on prompt + answer (the ceiling: no thoughts, no wrapper);
- `coconut, 0 thoughts`: Coconut over HFBackbone with no thoughts (what the wrapper and its cache cost);
- `coconut, S thoughts`: Coconut with S continuous thoughts (each one more pass over the cache).
Then greedy generation of `--gen-tokens` tokens after the same prompts, with and without thoughts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from coconut_pytorch import Coconut  # noqa: E402


def timed(fn, device: torch.device, steps: int, warmup: int) -> float:
    """Median milliseconds of fn() over `steps` runs after `warmup`."""
    times = []
    for index in range(warmup + steps):
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        if index >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description = __doc__, formatter_class = argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default = 'cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--small', action = 'store_true', help = 'a tiny config instead of GPT-2 124M')
    parser.add_argument('--batch', type = int, default = 16)
    parser.add_argument('--prompt', type = int, default = 256)
    parser.add_argument('--answer', type = int, default = 32)
    parser.add_argument('--thoughts', type = int, default = 3)
    parser.add_argument('--gen-tokens', type = int, default = 32)
    parser.add_argument('--steps', type = int, default = 10)
    parser.add_argument('--warmup', type = int, default = 3)
    parser.add_argument('--no-bf16', dest = 'bf16', action = 'store_false')
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, GPT2Config

    device = torch.device(args.device)
    bf16 = args.bf16 and device.type == 'cuda'
    config = GPT2Config(n_layer = 2, n_embd = 64, n_head = 2, vocab_size = 1000) if args.small else GPT2Config()   # 124M: 12 x 768
    if args.small:
        args.batch, args.prompt, args.answer, args.gen_tokens, args.steps, args.warmup = 2, 16, 4, 4, 2, 1

    torch.manual_seed(0)
    gpt = AutoModelForCausalLM.from_config(config).to(device)
    gpt.config._attn_implementation = 'sdpa'
    model = Coconut.from_hf(gpt, num_reasoning_steps = args.thoughts).to(device)
    vocab = config.vocab_size
    prompt = torch.randint(0, vocab, (args.batch, args.prompt), device = device)
    answer = torch.randint(0, vocab, (args.batch, args.answer), device = device)
    optimizer = torch.optim.AdamW(model.parameters(), lr = 1e-5, fused = device.type == 'cuda')
    autocast = lambda: torch.autocast(device.type, dtype = torch.bfloat16, enabled = bf16)

    def hf_plain():
        with autocast():
            ids = torch.cat((prompt, answer), dim = 1)
            loss = gpt(input_ids = ids, labels = ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none = True)

    def coconut(steps: int):
        def step():
            with autocast():
                loss = model(prompt, answer, num_reasoning_steps = steps)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none = True)
        return step

    model.train()
    rows = [('hf plain', timed(hf_plain, device, args.steps, args.warmup)),
            ('coconut, 0 thoughts', timed(coconut(0), device, args.steps, args.warmup)),
            (f'coconut, {args.thoughts} thoughts', timed(coconut(args.thoughts), device, args.steps, args.warmup))]

    model.eval()
    # decoding steps replayed as CUDA graphs where the backbone allows it, and run eagerly for comparison
    graphs = (False, True) if device.type == 'cuda' and getattr(model.model, 'graph_capturable', True) else (False,)
    for steps in (0, args.thoughts):
        for cuda_graph in graphs:
            def generate():
                with autocast():
                    model.generate(prompt, max_length = args.gen_tokens, temperature = 0., num_reasoning_steps = steps, cuda_graph = cuda_graph)
            label = f'generate {args.gen_tokens}, {steps} thoughts{", graphs" if cuda_graph else ""}'
            # the first call of a shape captures its graphs: it is the warm-up
            rows.append((label, timed(generate, device, max(2, args.steps // 3), 1)))

    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
    print(f'{name} | torch {torch.__version__} | bf16 {bf16} | {"tiny config" if args.small else "GPT-2 124M config, random weights"} | '
          f'batch {args.batch} prompt {args.prompt} answer {args.answer} | {" ".join(sys.argv)}')
    reference = rows[0][1]
    for label, ms in rows:
        ratio = f'{ms / reference:.2f}x hf plain' if not label.startswith('generate') else ''
        print(f'{label:<36} {ms:9.1f} ms  {ratio}')


if __name__ == '__main__':
    main()
