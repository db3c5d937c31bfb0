"""Data files a careful user might hand over: whitespace of any kind around iCoT's separators, separators of the
wrong length, other line endings, and JSON nested past what the parser can read. Each either reads as meant or is
refused with a one-line error naming the file; none reads silently wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import coconut_pytorch
from coconut_pytorch.data import (
    Example,
    MultiplicationTask,
    format_icot_line,
    load_examples,
    load_icot_examples,
    load_json_examples,
    parse_icot_line,
    save_icot_examples,
)

ROOT = Path(coconut_pytorch.__file__).resolve().parents[1]

# a real line of iCoT's 4x4 multiplication data (da03/implicit_chain_of_thought, data/4_by_4_mult/test_bigbench.txt)
LINE = "1 3 4 5 * 8 1 9 3||8 4 4 3 4 + 0 1 3 4 5 0 ( 8 5 7 7 9 0 ) + 0 0 9 7 8 8 4 ( 8 5 6 5 8 9 4 ) + 0 0 0 3 9 2 6 1 #### 8 5 6 8 7 2 1 2"
STEPS = ("8 4 4 3 4", "0 1 3 4 5 0 ( 8 5 7 7 9 0 )", "0 0 9 7 8 8 4 ( 8 5 6 5 8 9 4 )", "0 0 0 3 9 2 6 1")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode())     # bytes: the line endings are the test's, not the platform's
    return path


# whitespace around the separators

@pytest.mark.parametrize("separator", ["\t+\t", " +\t", "\t+ ", "  +   ", " \t + \t ", "\u00a0+\u00a0"],
                         ids=["tabs", "space-tab", "tab-space", "several-spaces", "mixed", "no-break-spaces"])
def test_any_whitespace_around_the_step_separator(tmp_path, separator):
    line = LINE.split("||")[0] + "||" + separator.join(STEPS) + " #### 8 5 6 8 7 2 1 2"
    assert parse_icot_line(line) == parse_icot_line(LINE)
    assert parse_icot_line(line).steps == STEPS
    assert load_icot_examples(write(tmp_path, "tabs.txt", line + "\n")) == [parse_icot_line(LINE)]


@pytest.mark.parametrize("line", [
    "1 2\t||\t3 4\t####\t5",
    "1 2||3 4####5",
])
def test_any_whitespace_or_none_around_question_and_answer_separators(line):
    assert parse_icot_line(line) == Example("1 2", ["3 4"], "5")


def test_a_plus_inside_a_word_is_text():
    # GSM8K in iCoT's format writes calculations as <<a+b=c>>
    example = parse_icot_line("Natalia sold 48 clips in April and half as many in May. How many in all?||<<48/2=24>> + <<48+24=72>> #### 72")
    assert example.steps == ("<<48/2=24>>", "<<48+24=72>>")


@pytest.mark.parametrize("chain, message", [
    ("+ 5 6 + 7 8", "at the start of the chain"),
    ("+\t5 6", "at the start of the chain"),
    ("5 6 + 7 8 +", "at the end of the chain"),
    ("5 6 +\t", "at the end of the chain"),
    ("+", "at the start of the chain"),
    ("5 6 + + 7 8", "twice in a row"),
    ("5 6 +\t+ 7 8", "twice in a row"),
    ("5 6 +7 8", None),          # a `+` glued to the next word is text inside the step...
    ("+5 6 + 7", r"starts or ends with a '\+'"),   # ...except at a step's start or end, where it is ambiguous
    ("5 6+ + 7", r"starts or ends with a '\+'"),
])
def test_misplaced_step_separators_are_named(chain, message):
    line = f"1 2||{chain} #### 9"
    if message is None:
        assert parse_icot_line(line).steps == (chain,)
        return
    with pytest.raises(ValueError, match=message):
        parse_icot_line(line)


# separators of the wrong length

@pytest.mark.parametrize("line, found", [
    ("1 2||3 4 ##### 5", "'#####' (5 '#')"),
    ("1 2||3 4 #####5", "'#####' (5 '#')"),
    ("1 2||3 4 ###### 5", "'######' (6 '#')"),
    ("1 2||3 4 ######## 5", "'########' (8 '#')"),
    ("1 2|||3 4 #### 5", "'|||' (3 '|')"),
    ("1 2||||3 4 #### 5", "'||||' (4 '|')"),
])
def test_a_longer_run_of_hashes_or_bars_is_an_error_naming_it(tmp_path, line, found):
    with pytest.raises(ValueError, match="exactly") as info:
        parse_icot_line(line)
    assert found in str(info.value), str(info.value)
    with pytest.raises(ValueError, match=r"five\.txt: line 2: malformed iCoT line") as info:
        load_icot_examples(write(tmp_path, "five.txt", LINE + "\n" + line + "\n"))
    assert found in str(info.value)


@pytest.mark.parametrize("line, message", [
    ("1 2 #### 3||4 #### 5", "found 2"),
    ("1 2 #### 3||4 5", r"'####' before '\|\|'"),
    ("1 2||3 4 ### 5", "found none"),
])
def test_misplaced_or_missing_answer_separator(line, message):
    with pytest.raises(ValueError, match=message):
        parse_icot_line(line)


# line endings

@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
def test_line_endings(tmp_path, ending):
    lines = [LINE, "1 2||3 + 4 #### 5", "6 7|| #### 8"]
    path = write(tmp_path, "data.txt", ending.join(lines) + ending + ending)
    assert load_icot_examples(path) == [parse_icot_line(line) for line in lines]
    assert parse_icot_line(LINE + ending) == parse_icot_line(LINE)


@pytest.mark.parametrize("character", ["\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"])
def test_other_unicode_line_breaks_are_whitespace_within_the_line(tmp_path, character):
    # str.splitlines breaks lines at these too: a line would be cut in two, and the lines after it misnumbered
    line = LINE.replace("8 4 4 3 4", f"8 4{character}4 3 4")
    path = write(tmp_path, "data.txt", line + "\n" + "1 2||3 4 ##### 5" + "\n")
    with pytest.raises(ValueError, match=r"data\.txt: line 2: malformed iCoT line \(found '#####'"):
        load_icot_examples(path)
    path = write(tmp_path, "data.txt", line + "\n" + LINE + "\n")
    assert load_icot_examples(path) == [parse_icot_line(line), parse_icot_line(LINE)]
    assert parse_icot_line(line).steps[0] == f"8 4{character}4 3 4"


def test_a_line_break_inside_a_line_is_an_error():
    with pytest.raises(ValueError, match="line break"):
        parse_icot_line("1 2||3\r4 #### 5")


# writing what reads back

@pytest.mark.parametrize("example", [
    Example("q|", ["x"], "a"),              # the question's `|` would join `||`
    Example("q", ["|x"], "a"),              # so would the first step's
    Example("q", ["a\t+\tb"], "c"),         # a separator between tabs
    Example("q", ["+5"], "c"),              # a step the reader refuses
    Example("q", ["5+"], "c"),
])
def test_format_refuses_what_would_read_back_differently(example):
    with pytest.raises(ValueError, match="steps|read back"):
        format_icot_line(example)


@pytest.mark.parametrize("example", [
    Example("What is 48+24?", ["<<48+24=72>>", "x | y", "a ### b", "c\td"], "# 72"),
    Example("q #", ["#"], "a"),
    Example("q", [], "a + b"),
    Example("q", ["a\u2028b"], "c"),
])
def test_what_format_writes_reads_back(tmp_path, example):
    assert parse_icot_line(format_icot_line(example)) == example
    save_icot_examples([example, example], tmp_path / "data.txt")
    assert load_icot_examples(tmp_path / "data.txt") == [example, example]


def test_generated_examples_round_trip(tmp_path):
    examples = MultiplicationTask(4, 4).generate(200, seed=5)
    save_icot_examples(examples, tmp_path / "mult.txt")
    assert load_icot_examples(tmp_path / "mult.txt") == examples


# JSON

@pytest.mark.parametrize("content", [
    "[" * 100_000,
    "[" * 100_000 + "]" * 100_000,
    '[{"question": "q", "steps": ' + "[" * 100_000 + "]" * 100_000 + ', "answer": "a"}]',
    '[{"question": "q", "steps": [], "answer": ' + '{"a": ' * 50_000 + "1" + "}" * 50_000 + "}]",
], ids=["open", "balanced", "in-a-record", "objects"])
def test_deeply_nested_json_is_a_one_line_error_naming_the_file(tmp_path, content):
    for name in ("deep.json", "deep.dat"):     # .dat: recognised as JSON by its first character
        path = write(tmp_path, name, content)
        loaders = [load_json_examples, load_examples] if name.endswith(".json") else [load_examples]
        for load in loaders:
            with pytest.raises(ValueError, match=rf"{name}: invalid JSON: nested too deeply") as info:
                load(path)
            assert "\n" not in str(info.value)
            # no RecursionError traceback chained under it
            assert info.value.__cause__ is None and info.value.__suppress_context__


def test_json_the_parser_refuses_otherwise_names_the_file(tmp_path):
    # Python (3.11+) refuses to read an integer of over 4300 digits, with a plain ValueError
    path = write(tmp_path, "long.json", '[{"question": "q", "steps": [], "answer": ' + "1" * 5000 + "}]")
    with pytest.raises(ValueError, match=r"long\.json: "):
        load_json_examples(path)


def test_the_command_reports_deeply_nested_json_in_one_line(tmp_path):
    deep = write(tmp_path, "deep.json", "[" * 100_000)
    done = subprocess.run([sys.executable, str(ROOT / "train_toy.py"), "--train-file", str(deep), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "RecursionError" not in done.stderr, done.stderr[-2000:]
    assert "deep.json" in done.stderr and "nested too deeply" in done.stderr, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr[-2000:]
