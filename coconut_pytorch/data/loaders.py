"""Read and write example files: the Coconut paper's JSON format and iCoT's line format.

JSON (Coconut reference code): a list of {"question": str, "steps": [str], "answer": str};
extra keys (ProsQA's graph fields) are ignored.

iCoT (Deng et al., implicit chain of thought) one example per line:

    5 6 3 2 * 7 4 3 4||5 5 5 8 1 + 0 0 6 2 1 ( 5 5 1 1 3 ) + ... #### 5 5 1 1 4 9 2 1

question before `||`, steps between `||` and `####` separated by ` + `, answer after `####`.
"""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path
from typing import Iterable, Union

from coconut_pytorch.data.example import Example

PathType = Union[str, "PathLike[str]"]

ICOT_QUESTION_SEP = "||"
ICOT_STEP_SEP = " + "
ICOT_ANSWER_SEP = "####"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")     # a byte-order mark would otherwise stick to the first word
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read file ({err})") from err


# json

def load_json_examples(path: PathType) -> list[Example]:
    """Examples from a JSON file holding a list of {"question", "steps", "answer"} records."""
    path = Path(path)
    text = _read_text(path)

    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from err

    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of example records, got a {type(records).__name__}")

    examples = []
    for index, record in enumerate(records):
        try:
            examples.append(Example.from_dict(record))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: record {index}: {err}") from err
    return examples


def save_json_examples(examples: Iterable[Example], path: PathType) -> None:
    """Write examples as a JSON list that `load_json_examples` reads back unchanged."""
    path = Path(path)
    records = []
    for index, example in enumerate(examples):
        if not isinstance(example, Example):
            raise TypeError(f"examples[{index}] must be an Example, got {type(example).__name__}")
        records.append(example.to_dict())

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


# icot

def parse_icot_line(line: str) -> Example:
    """One iCoT line -> Example. Raises ValueError saying what is malformed."""
    if line.count(ICOT_QUESTION_SEP) != 1:
        raise ValueError(f"expected exactly one {ICOT_QUESTION_SEP!r} between question and steps")

    question, rest = line.split(ICOT_QUESTION_SEP)

    if rest.count(ICOT_ANSWER_SEP) != 1:
        raise ValueError(f"expected exactly one {ICOT_ANSWER_SEP!r} before the answer")

    chain, answer = rest.split(ICOT_ANSWER_SEP)
    question, chain, answer = question.strip(), chain.strip(), answer.strip()

    if not question:
        raise ValueError(f"empty question before {ICOT_QUESTION_SEP!r}")
    if not answer:
        raise ValueError(f"empty answer after {ICOT_ANSWER_SEP!r}")

    # an empty chain is the no-CoT variant of the format: "question|| #### answer"
    steps = [step.strip() for step in f" {chain} ".split(ICOT_STEP_SEP)] if chain else []
    if any(not step or step.startswith("+") or step.endswith("+") for step in steps):
        raise ValueError(f"empty reasoning step (doubled or dangling {ICOT_STEP_SEP.strip()!r})")

    return Example(question=question, steps=steps, answer=answer)


def load_icot_examples(path: PathType) -> list[Example]:
    """Examples from an iCoT-format text file (one per line; blank lines skipped)."""
    path = Path(path)
    examples = []
    for line_number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            examples.append(parse_icot_line(line))
        except ValueError as err:
            raise ValueError(f"{path}: line {line_number}: malformed iCoT line ({err}): {line[:80]!r}") from err
    return examples


def format_icot_line(example: Example) -> str:
    """Example -> one iCoT line (no newline); `parse_icot_line` inverts it."""
    if not isinstance(example, Example):
        raise TypeError(f"example must be an Example, got {type(example).__name__}")

    # refuse text that would be split differently when read back
    fields = [("question", example.question), ("answer", example.answer)]
    fields += [(f"steps[{i}]", step) for i, step in enumerate(example.steps)]
    for name, text in fields:
        if ICOT_QUESTION_SEP in text or ICOT_ANSWER_SEP in text or "\n" in text or "\r" in text:
            raise ValueError(f"example.{name} contains {ICOT_QUESTION_SEP!r}, {ICOT_ANSWER_SEP!r} or a newline: {text!r}")
        if text != text.strip() or not text:
            raise ValueError(f"example.{name} must be non-empty without surrounding whitespace: {text!r}")
    for i, step in enumerate(example.steps):
        if ICOT_STEP_SEP in f" {step} ":
            raise ValueError(f"example.steps[{i}] contains the step separator {ICOT_STEP_SEP!r}: {step!r}")

    chain = ICOT_STEP_SEP.join(example.steps)
    return f"{example.question}{ICOT_QUESTION_SEP}{chain} {ICOT_ANSWER_SEP} {example.answer}"


def save_icot_examples(examples: Iterable[Example], path: PathType) -> None:
    """Write examples in iCoT's line format, one per line."""
    path = Path(path)
    lines = [format_icot_line(example) for example in examples]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


# dispatch

def load_examples(path: PathType) -> list[Example]:
    """Load a .json file as the paper's JSON format, anything else as iCoT lines.

    A file with another extension whose content starts with '[' is read as JSON too.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        return load_json_examples(path)

    if _read_text(path).lstrip().startswith("["):
        return load_json_examples(path)

    return load_icot_examples(path)
