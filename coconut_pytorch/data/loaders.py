"""Read and write example files: the Coconut paper's JSON format and iCoT's line format.

JSON (Coconut reference code): a list of {"question": str, "steps": [str], "answer": str};
extra keys (ProsQA's graph fields) are ignored.

iCoT (Deng et al., implicit chain of thought) one example per line:

    5 6 3 2 * 7 4 3 4||5 5 5 8 1 + 0 0 6 2 1 ( 5 5 1 1 3 ) + ... #### 5 5 1 1 4 9 2 1

question before `||`, steps between `||` and `####` separated by ` + `, answer after `####`.

Read leniently where the meaning is plain, strictly where it is not:
- the step separator is a `+` with whitespace on both sides, any amount and any kind (spaces, tabs); a `+` inside a
  word (GSM8K's `<<48+24=72>>`) is text, but one glued to a step's first or last character, a `+` at either end of
  the chain, or two in a row are errors;
- `||` and `####` are exact: a longer run of `|` or `#` is an error naming it, not text that starts the next field;
- lines end at `\\n`, `\\r\\n` or `\\r` only (line numbers then match editors and `grep -n`); other Unicode line breaks
  are whitespace within a line.
"""

from __future__ import annotations

import json
import re
from os import PathLike
from pathlib import Path
from typing import Iterable, Union

from coconut_pytorch.data.example import Example

PathType = Union[str, "PathLike[str]"]

ICOT_QUESTION_SEP = "||"
ICOT_STEP_SEP = " + "       # as written; read back as any `+` with whitespace (or the chain's ends) on both sides
ICOT_ANSWER_SEP = "####"

# a `+` standing alone: whitespace or an end of the text on both sides (lookarounds, so that in "a + + b" both match)
_STEP_SEP_RE = re.compile(r"(?:(?<=\s)|^)\+(?=\s|$)")
_BAR_RUN_RE = re.compile(r"\|{2,}")
_HASH_RUN_RE = re.compile(r"#{4,}")


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
    except RecursionError:
        # the parser recurses once per level: thousands of nested brackets are a broken file, not examples
        raise ValueError(f"{path}: invalid JSON: nested too deeply to read (example records are flat objects)") from None
    except ValueError as err:   # what the parser raises besides JSONDecodeError, e.g. an integer of over 4300 digits
        raise ValueError(f"{path}: invalid JSON: {err}") from err

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

def _exactly_one(line: str, runs: re.Pattern, separator: str, what: str) -> None:
    """Raise ValueError unless `line` has one run of `runs` and it is `separator` itself."""
    found = runs.findall(line)
    for run in found:
        if run != separator:
            raise ValueError(f"found {run!r} ({len(run)} {separator[0]!r}), {what} is {separator!r} exactly")
    if len(found) != 1:
        raise ValueError(f"expected exactly one {separator!r} ({what}), found {len(found) or 'none'}")


def _split_chain(chain: str) -> list[str]:
    """The steps of a stripped, non-empty chain. Raises ValueError for an empty step or a misplaced `+`."""
    steps = [step.strip() for step in _STEP_SEP_RE.split(chain)]
    plus = ICOT_STEP_SEP.strip()
    for index, step in enumerate(steps):
        if not step:
            where = ("at the start of the chain" if index == 0 else
                     f"at the end of the chain (before {ICOT_ANSWER_SEP!r})" if index == len(steps) - 1 else
                     f"twice in a row (an empty step {index + 1})")
            raise ValueError(f"step separator {plus!r} {where}")
        if step.startswith(plus) or step.endswith(plus):
            raise ValueError(f"step {index + 1} {step!r} starts or ends with a {plus!r} that is not a step separator "
                             f"(a separator has whitespace on both sides)")
    return steps


def parse_icot_line(line: str) -> Example:
    """One iCoT line -> Example. Raises ValueError saying what is malformed.

    A line ending (`\\n`, `\\r\\n`) is ignored; any whitespace may surround the separators (see the module docstring).
    """
    line = line.strip()
    if "\n" in line or "\r" in line:
        raise ValueError("a line break inside the line (one example per line)")

    _exactly_one(line, _BAR_RUN_RE, ICOT_QUESTION_SEP, "the separator between question and steps")
    question, rest = line.split(ICOT_QUESTION_SEP)

    _exactly_one(line, _HASH_RUN_RE, ICOT_ANSWER_SEP, "the separator before the answer")
    if ICOT_ANSWER_SEP in question:
        raise ValueError(f"{ICOT_ANSWER_SEP!r} before {ICOT_QUESTION_SEP!r}: the answer comes after the steps")
    chain, answer = rest.split(ICOT_ANSWER_SEP)
    question, chain, answer = question.strip(), chain.strip(), answer.strip()

    if not question:
        raise ValueError(f"empty question before {ICOT_QUESTION_SEP!r}")
    if not answer:
        raise ValueError(f"empty answer after {ICOT_ANSWER_SEP!r}")

    # an empty chain is the no-CoT variant of the format: "question|| #### answer"
    steps = _split_chain(chain) if chain else []
    return Example(question=question, steps=steps, answer=answer)


def load_icot_examples(path: PathType) -> list[Example]:
    """Examples from an iCoT-format text file (one per line; blank lines skipped)."""
    path = Path(path)
    examples = []
    # `_read_text` has turned `\r\n` and `\r` into `\n`; str.splitlines would also break lines at form feeds,
    # U+2028 and the like, and number lines unlike an editor
    for line_number, line in enumerate(_read_text(path).split("\n"), start=1):
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
    plus = ICOT_STEP_SEP.strip()
    for i, step in enumerate(example.steps):
        if _STEP_SEP_RE.search(step) or step.startswith(plus) or step.endswith(plus):
            raise ValueError(f"example.steps[{i}] contains the step separator {ICOT_STEP_SEP!r} (a {plus!r} between whitespace), "
                             f"or starts or ends with {plus!r}: {step!r}")

    chain = ICOT_STEP_SEP.join(example.steps)
    line = f"{example.question}{ICOT_QUESTION_SEP}{chain} {ICOT_ANSWER_SEP} {example.answer}"
    # what the checks above cannot see: a `|` next to `||` (the question's last character, the first step's first)
    # makes a longer run that no longer reads as the separator
    try:
        read_back = parse_icot_line(line)
    except ValueError as err:
        raise ValueError(f"example would not read back from its iCoT line ({err}): {line[:80]!r}") from err
    if read_back != example:
        raise ValueError(f"example would read back from its iCoT line as {read_back!r}")
    return line


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
