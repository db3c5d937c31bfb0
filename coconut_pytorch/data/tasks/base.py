"""What every task generator provides; subclasses only write `sample` and `vocabulary`."""

from __future__ import annotations

import random

from coconut_pytorch.data.example import Example


class Task:
    """A seeded generator of reasoning examples.

    Subclasses set `name` and `num_steps_range` (the inclusive (min, max) number of
    reasoning steps an example can have) and implement `sample` and `vocabulary`.
    """

    name: str = "task"

    @property
    def num_steps_range(self) -> tuple[int, int]:
        raise NotImplementedError

    def sample(self, rng: random.Random) -> Example:
        """Draw one example, using only `rng` for randomness (so seeds reproduce data)."""
        raise NotImplementedError

    def vocabulary(self) -> list[str]:
        """Every word the task can ever produce, so a tokenizer built from it is closed."""
        raise NotImplementedError

    def generate(self, n: int, seed: int) -> list[Example]:
        """`n` examples, identical for identical (task settings, n, seed)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")

        # a private Random: never touch the global random state other code may rely on
        rng = random.Random(seed)
        return [self.sample(rng) for _ in range(n)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def check_int(name: str, value: object, minimum: int) -> int:
    """Validate an integer task setting, naming it in the error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value
