"""N x M digit multiplication in the exact line format of iCoT (Deng et al., 2023).

All numbers are written digit by digit, space separated, least significant digit first.
For a = 5431, b = 3918 (4 x 4) iCoT writes

    question: 1 3 4 5 * 8 1 9 3
    steps:    8 4 4 3 4                                   a * 8
              0 1 3 4 5 0 ( 8 5 7 7 9 0 )                 a * 1 * 10, then the running sum
              0 0 9 7 8 8 4 ( 8 5 6 5 8 9 4 )             a * 9 * 100, running sum
              0 0 0 3 9 2 6 1                             a * 3 * 1000 (no sum: it is the answer)
    answer:   8 5 6 8 7 2 1 2                             21278658

The i-th partial product (i from 0) and its running sum are zero-padded to
num_digits_a + 1 + i digits; the answer to num_digits_a + num_digits_b digits.
"""

from __future__ import annotations

import random

from coconut_pytorch.data.example import Example
from coconut_pytorch.data.tasks.base import Task, check_int


def digits_reversed(value: int, width: int) -> str:
    """`value` zero-padded to `width` digits, least significant first, space separated."""
    if value < 0 or value >= 10 ** width:
        raise ValueError(f"{value} does not fit in {width} digits")
    return " ".join(reversed(str(value).zfill(width)))


def parse_digits_reversed(text: str) -> int:
    """Inverse of `digits_reversed`."""
    digits = text.split()
    if not digits or not all(len(d) == 1 and d.isdigit() for d in digits):
        raise ValueError(f"expected space separated digits, got {text!r}")
    return int("".join(reversed(digits)))


def multiplication_example(a: int, b: int, num_digits_a: int, num_digits_b: int) -> Example:
    """The iCoT example for a * b with operands padded to the given digit counts."""
    question = f"{digits_reversed(a, num_digits_a)} * {digits_reversed(b, num_digits_b)}"

    steps = []
    running = 0
    b_digits = [int(d) for d in reversed(str(b).zfill(num_digits_b))]

    for i, digit in enumerate(b_digits):
        partial = a * digit * 10 ** i
        running += partial
        width = num_digits_a + 1 + i
        step = digits_reversed(partial, width)

        # iCoT shows the running sum only between the first and the last partial product:
        # after the first it equals the product itself, after the last it is the answer
        if 0 < i < num_digits_b - 1:
            step += f" ( {digits_reversed(running, width)} )"
        steps.append(step)

    answer = digits_reversed(a * b, num_digits_a + num_digits_b)
    return Example(question=question, steps=steps, answer=answer)


class MultiplicationTask(Task):
    """Multiply a `num_digits_a`-digit by a `num_digits_b`-digit number (no leading zeros).

    num_steps_range: (num_digits_b, num_digits_b), one step per digit of b.
    """

    name = "multiplication"

    def __init__(self, num_digits_a: int = 4, num_digits_b: int = 4):
        self.num_digits_a = check_int("num_digits_a", num_digits_a, 1)
        self.num_digits_b = check_int("num_digits_b", num_digits_b, 1)

    @property
    def num_steps_range(self) -> tuple[int, int]:
        return (self.num_digits_b, self.num_digits_b)

    def sample(self, rng: random.Random) -> Example:
        # like iCoT's data: operands have exactly the stated number of digits
        a = rng.randrange(10 ** (self.num_digits_a - 1), 10 ** self.num_digits_a)
        b = rng.randrange(10 ** (self.num_digits_b - 1), 10 ** self.num_digits_b)
        return multiplication_example(a, b, self.num_digits_a, self.num_digits_b)

    def vocabulary(self) -> list[str]:
        return [str(d) for d in range(10)] + ["*", "+", "(", ")"]

    def __repr__(self) -> str:
        return f"MultiplicationTask(num_digits_a={self.num_digits_a}, num_digits_b={self.num_digits_b})"
