"""The one record type every loader and task generator produces."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


def _type_name(value: Any) -> str:
    return type(value).__name__


@dataclass(frozen=True)
class Example:
    """One reasoning problem: a question, its chain of reasoning steps, and the answer.

    `steps` may be given as a list; it is stored as a tuple so examples stay hashable
    and cannot be mutated behind a cache's back.
    """

    question: str
    steps: tuple[str, ...]
    answer: str

    def __post_init__(self) -> None:
        if not isinstance(self.question, str):
            raise TypeError(f"Example.question must be a str, got {_type_name(self.question)}")

        if not isinstance(self.answer, str):
            raise TypeError(f"Example.answer must be a str, got {_type_name(self.answer)}")

        # a bare string is iterable too, and would silently become one step per character
        if isinstance(self.steps, str) or not isinstance(self.steps, (list, tuple)):
            raise TypeError(f"Example.steps must be a list or tuple of str, got {_type_name(self.steps)}")

        for index, step in enumerate(self.steps):
            if not isinstance(step, str):
                raise TypeError(f"Example.steps[{index}] must be a str, got {_type_name(step)}")

        # frozen dataclass: bypass __setattr__ to store the normalised tuple
        object.__setattr__(self, "steps", tuple(self.steps))

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the paper's format: {"question", "steps", "answer"}."""
        return dict(question=self.question, steps=list(self.steps), answer=self.answer)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "Example":
        """Build from a mapping with keys question, steps, answer (extra keys are ignored)."""
        if not isinstance(record, Mapping):
            raise TypeError(f"an example record must be a dict, got {_type_name(record)}")

        missing = [key for key in ("question", "steps", "answer") if key not in record]
        if missing:
            raise ValueError(f"example record is missing key(s) {missing}")

        example = cls(question=record["question"], steps=record["steps"], answer=record["answer"])
        # an empty text would train on nothing (or, as an answer, on <eos> alone): a data error, said here
        for name, text in (("question", example.question), ("answer", example.answer), *((f"steps[{i}]", step) for i, step in enumerate(example.steps))):
            if not text.strip():
                raise ValueError(f"example record has an empty {name}")
        return example
