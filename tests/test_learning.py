"""A small Coconut learns a task that needs its prompt, judged through `generate`."""

import torch

from coconut_pytorch import Coconut

NUM_DIGITS, LENGTH, EOS = 10, 6, 10


def sorting_batch(batch_size: int, generator: torch.Generator):
    prompt = torch.randint(0, NUM_DIGITS, (batch_size, LENGTH), generator = generator)
    answer = torch.cat((prompt.sort(dim = -1).values, torch.full((batch_size, 1), EOS)), dim = -1)
    return prompt, answer


def sorting_exact_match(model: Coconut, num_steps: int, lr: float = 3e-3) -> float:
    """Train `model` to sort for `num_steps` batches of 64, then its exact match on 500 held-out prompts, judged
    through greedy `generate`."""
    optimizer = torch.optim.AdamW(model.parameters(), lr = lr)
    # linear decay to zero: the end of training settles instead of bouncing at a high rate
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1. - step / num_steps)
    train_data = torch.Generator().manual_seed(0)

    for _ in range(num_steps):
        loss = model(*sorting_batch(64, train_data))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()

    model.eval()
    prompt, answer = sorting_batch(500, torch.Generator().manual_seed(1234))
    generated = model.generate(prompt, max_length = LENGTH + 1, temperature = 0., eos_token_id = EOS)
    return (generated == answer).all(dim = -1).float().mean().item()


def test_learns_to_sort_through_generate():
    torch.manual_seed(0)
    model = Coconut(
        num_reasoning_steps = 1,
        transformer = dict(num_tokens = NUM_DIGITS + 1, dim = 64, depth = 2, dim_head = 16, heads = 4, num_residual_streams = 2)
    )
    exact_match = sorting_exact_match(model, num_steps = 350)
    assert exact_match >= 0.99, f'exact match {exact_match:.3f} after training'
