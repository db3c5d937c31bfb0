"""Two tiny multi-step tasks that a ~1M parameter Transformer learns in minutes on CPU.

running_sum    question "3 5 8 2", steps "8" "6" "8" (running sum mod 10 after each digit
               from the second), answer "8".
pointer_chase  question "b > e, a > c, c > f, ... from a?", steps = the symbols visited by
               following the arrows `hops` times, answer = the last of them.

Both need the intermediate values to get the answer, which is what Coconut's latent
steps are supposed to carry.
"""

from __future__ import annotations

import random
import string

from coconut_pytorch.data.example import Example
from coconut_pytorch.data.tasks.base import Task, check_int


class RunningSumTask(Task):
    """Sum `num_digits` random digits mod 10, one step per addition.

    num_steps_range: (num_digits - 1, num_digits - 1).
    """

    name = "running_sum"

    def __init__(self, num_digits: int = 4, modulus: int = 10):
        self.num_digits = check_int("num_digits", num_digits, 2)
        self.modulus = check_int("modulus", modulus, 2)

    @property
    def num_steps_range(self) -> tuple[int, int]:
        return (self.num_digits - 1, self.num_digits - 1)

    def sample(self, rng: random.Random) -> Example:
        digits = [rng.randrange(10) for _ in range(self.num_digits)]

        total = digits[0] % self.modulus
        steps = []
        for digit in digits[1:]:
            total = (total + digit) % self.modulus
            steps.append(str(total))

        return Example(question=" ".join(map(str, digits)), steps=steps, answer=str(total))

    def vocabulary(self) -> list[str]:
        return [str(n) for n in range(max(10, self.modulus))]

    def __repr__(self) -> str:
        return f"RunningSumTask(num_digits={self.num_digits}, modulus={self.modulus})"


class PointerChaseTask(Task):
    """Follow a random mapping over `num_symbols` letters for `hops` steps.

    Every symbol points to a different symbol; all arrows are listed, shuffled, so the
    model has to look each hop up. num_steps_range: (hops, hops).
    """

    name = "pointer_chase"

    def __init__(self, num_symbols: int = 8, hops: int = 3):
        self.num_symbols = check_int("num_symbols", num_symbols, 2)
        self.hops = check_int("hops", hops, 1)
        if num_symbols > len(string.ascii_lowercase):
            raise ValueError(f"num_symbols must be <= {len(string.ascii_lowercase)}, got {num_symbols}")
        self.symbols = list(string.ascii_lowercase[:num_symbols])

    @property
    def num_steps_range(self) -> tuple[int, int]:
        return (self.hops, self.hops)

    def sample(self, rng: random.Random) -> Example:
        # no self loops: a hop that stays put would let the model skip a step
        pointer = {s: rng.choice([t for t in self.symbols if t != s]) for s in self.symbols}

        facts = [f"{s} > {pointer[s]}" for s in self.symbols]
        rng.shuffle(facts)

        start = rng.choice(self.symbols)
        steps = []
        current = start
        for _ in range(self.hops):
            current = pointer[current]
            steps.append(current)

        question = f"{', '.join(facts)}. from {start}?"
        return Example(question=question, steps=steps, answer=current)

    def vocabulary(self) -> list[str]:
        return self.symbols + [">", ",", ".", "from", "?"]

    def __repr__(self) -> str:
        return f"PointerChaseTask(num_symbols={self.num_symbols}, hops={self.hops})"
