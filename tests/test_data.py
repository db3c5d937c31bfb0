from __future__ import annotations

import json
import random
import re
import statistics
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from coconut_pytorch.data import (
    TASKS,
    Example,
    MultiplicationTask,
    PointerChaseTask,
    ProsQATask,
    RunningSumTask,
    WordTokenizer,
    format_icot_line,
    get_task,
    load_examples,
    load_icot_examples,
    load_json_examples,
    normalize,
    parse_icot_line,
    parse_prosqa_question,
    prosqa_statistics,
    save_icot_examples,
    save_json_examples,
    verify_prosqa_example,
)
from coconut_pytorch.data.tasks.multiplication import multiplication_example, parse_digits_reversed

VALID_JSON = Path(__file__).parents[1].parent / "shared/data/prosqa/valid.json"

# real lines of iCoT's data files (da03/implicit_chain_of_thought, data/4_by_4_mult/test_bigbench.txt
# and data/5_by_5_mult/test_bigbench.txt)
ICOT_LINES = [
    "1 3 4 5 * 8 1 9 3||8 4 4 3 4 + 0 1 3 4 5 0 ( 8 5 7 7 9 0 ) + 0 0 9 7 8 8 4 ( 8 5 6 5 8 9 4 ) + 0 0 0 3 9 2 6 1 #### 8 5 6 8 7 2 1 2",
    "6 1 3 7 * 0 7 5 1||0 0 0 0 0 + 0 2 1 2 1 5 ( 0 2 1 2 1 5 ) + 0 0 0 8 5 6 3 ( 0 2 1 0 7 1 4 ) + 0 0 0 6 1 3 7 0 #### 0 2 1 6 8 4 1 1",
    "4 2 8 8 6 * 6 1 7 2 4||4 4 9 2 1 4 + 0 4 2 8 8 6 0 ( 4 8 1 1 0 1 1 ) + 0 0 8 6 7 1 8 4 ( 4 8 9 7 7 2 9 4 ) + 0 0 0 8 4 6 7 3 1 ( 4 8 9 5 2 9 6 8 1 ) + 0 0 0 0 6 9 2 5 7 2 #### 4 8 9 5 8 8 9 3 9 2",
]

ALL_TASKS = [
    ProsQATask(),
    MultiplicationTask(),
    MultiplicationTask(3, 5),
    RunningSumTask(),
    PointerChaseTask(),
]


@pytest.fixture(scope="module")
def valid_records():
    if not VALID_JSON.exists():
        pytest.skip(f"{VALID_JSON} not present")
    return json.loads(VALID_JSON.read_text())


@pytest.fixture(scope="module")
def prosqa_generated():
    return ProsQATask().generate(1000, seed=0)


def example_texts(example):
    return [example.question, *example.steps, example.answer]


# example

def test_example_converts_and_validates():
    example = Example("q", ["a", "b"], "ans")
    assert example.steps == ("a", "b")
    assert Example.from_dict(example.to_dict()) == example
    hash(example)

    with pytest.raises(TypeError, match="steps"):
        Example("q", "a b", "ans")
    with pytest.raises(TypeError, match=r"steps\[1\]"):
        Example("q", ["a", 3], "ans")
    with pytest.raises(TypeError, match="question"):
        Example(None, [], "ans")
    with pytest.raises(TypeError, match="answer"):
        Example("q", [], 7)


# tokenizer

def test_tokenizer_specials_and_vocab_order():
    tok = WordTokenizer(["b", "a", "a", "<sep>"])
    assert tok.vocab == ["<pad>", "<eos>", "<sep>", "a", "b"]
    assert (tok.pad_id, tok.eos_id, tok.sep_id) == (0, 1, 2)
    assert len(tok) == 5


def test_tokenizer_splitting_and_normalize():
    tok = WordTokenizer.from_texts(["Every yumpus is a rempus.", "1 2 * 3 ( 4 ) #### 5", "Is Tom a x or y?"])
    assert tok.encode("yumpus.") == [tok.vocab.index("yumpus"), tok.vocab.index(".")]
    assert "####" in tok.vocab and "#" not in tok.vocab
    assert normalize("Tom is a  lempus .") == normalize("Tom is a lempus.") == "Tom is a lempus."
    assert normalize("  0 1 ( 2 3 )  + 4 ") == "0 1 ( 2 3 ) + 4"
    assert normalize("a>c ,c > f") == "a>c, c > f"
    assert tok.normalize("x ?") == "x?"


def test_tokenizer_round_trip_on_every_task():
    for task in ALL_TASKS:
        tok = WordTokenizer(task.vocabulary())  # built from the vocabulary alone: must be closed
        for example in task.generate(50, seed=1):
            for text in example_texts(example):
                assert tok.decode(tok.encode(text)) == normalize(text)
            # the generators write canonical text already
            assert all(normalize(text) == text for text in example_texts(example))


def test_tokenizer_round_trip_on_valid_json(valid_records):
    tok = WordTokenizer.from_texts(t for r in valid_records for t in [r["question"], *r["steps"], r["answer"]])
    for record in valid_records:
        for text in [record["question"], *record["steps"], record["answer"]]:
            assert tok.decode(tok.encode(text)) == normalize(text) == text


def test_tokenizer_unknown_word_is_named():
    tok = WordTokenizer(["Tom", "is", "a", "."])
    with pytest.raises(ValueError, match="'lempus'.*Tom is a lempus"):
        tok.encode("Tom is a lempus.")


def test_tokenizer_refuses_special_tokens_spelled_in_text():
    tok = WordTokenizer(["a", "b"])
    for special in ("<eos>", "<sep>", "<pad>"):
        with pytest.raises(ValueError, match=f"reserved token '{special}'"):
            tok.encode(f"a {special} b")


def test_tokenizer_rejects_multi_token_words():
    with pytest.raises(ValueError, match="yumpus."):
        WordTokenizer(["yumpus."])


def test_tokenizer_decode_tensor_negative_and_specials():
    tok = WordTokenizer(["Tom", "is", "a", "lempus", "."])
    ids = tok.encode("Tom is a lempus.")
    padded = [tok.sep_id] + ids + [tok.eos_id, -1, -1]
    assert tok.decode(torch.tensor(padded)) == "Tom is a lempus."
    assert tok.decode(padded, skip_special=False) == "<sep> Tom is a lempus. <eos>"
    with pytest.raises(ValueError, match="1-d"):
        tok.decode(torch.tensor([ids]))
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([len(tok)])


def test_tokenizer_dict_round_trip():
    tok = WordTokenizer(MultiplicationTask().vocabulary())
    state = json.loads(json.dumps(tok.to_dict()))
    assert WordTokenizer.from_dict(state) == tok
    assert WordTokenizer.from_dict(state).vocab == tok.vocab
    with pytest.raises(ValueError, match="vocab"):
        WordTokenizer.from_dict({"vocab": ["a", "<pad>"]})


def test_encode_example_ends_answer_with_eos():
    task = RunningSumTask()
    tok = WordTokenizer(task.vocabulary())
    example = task.generate(1, seed=0)[0]
    question, steps, answer = tok.encode_example(example)
    assert len(steps) == len(example.steps)
    assert answer[-1] == tok.eos_id
    assert tok.decode(answer) == example.answer


# loaders

def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "content, pattern",
    [
        ("[{", r"invalid JSON at line 1"),
        ('{"question": "q"}', r"expected a JSON list"),
        ('[{"question": "q", "steps": [], "answer": "a"}, {"question": "q", "answer": "a"}]', r"record 1: .*missing.*steps"),
        ('[{"question": "q", "steps": "abc", "answer": "a"}]', r"record 0: .*steps must be a list"),
        ('[{"question": "q", "steps": ["x", 2], "answer": "a"}]', r"record 0: .*steps\[1\]"),
        ('[{"question": "q", "steps": [], "answer": null}]', r"record 0: .*answer"),
        ('["just a string"]', r"record 0: .*must be a dict"),
        ('[{"question": " ", "steps": [], "answer": "a"}]', r"record 0: .*empty question"),
        ('[{"question": "q", "steps": ["x", ""], "answer": "a"}]', r"record 0: .*empty steps\[1\]"),
        ('[{"question": "q", "steps": [], "answer": ""}]', r"record 0: .*empty answer"),
    ],
)
def test_load_json_errors_name_file_and_record(tmp_path, content, pattern):
    path = write(tmp_path, "bad.json", content)
    with pytest.raises(ValueError, match="bad.json") as info:
        load_json_examples(path)
    assert re.search(pattern, str(info.value)), str(info.value)


def test_a_byte_order_mark_is_not_part_of_the_first_word(tmp_path):
    json_path, icot_path = tmp_path / "bom.json", tmp_path / "bom.txt"
    json_path.write_bytes(b"\xef\xbb\xbf" + b'[{"question": "q w", "steps": [], "answer": "a"}]')
    icot_path.write_bytes(b"\xef\xbb\xbf" + (ICOT_LINES[0] + "\n").encode())
    assert load_json_examples(json_path) == [Example("q w", [], "a")]
    assert load_icot_examples(icot_path) == [parse_icot_line(ICOT_LINES[0])]


def test_load_missing_file(tmp_path):
    with pytest.raises(ValueError, match="nope.json"):
        load_json_examples(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="nope.txt"):
        load_icot_examples(tmp_path / "nope.txt")


@pytest.mark.parametrize(
    "bad_line",
    [
        "1 2 * 3 4 5 6 #### 7 8",             # no ||
        "1 2 * 3 4||5 6 + 7 8",               # no ####
        "1 2 * 3 4||5 6 + + 7 8 #### 9",      # doubled +
        "1 2 * 3 4||5 6 + #### 9",            # dangling +
        "1 2 * 3 4||5 6 #### ",               # no answer
        "||5 6 #### 9",                       # no question
        "1||2||3 #### 4",                     # two ||
    ],
)
def test_load_icot_malformed_line_names_file_and_line(tmp_path, bad_line):
    path = write(tmp_path, "mult.txt", ICOT_LINES[0] + "\n\n" + bad_line + "\n")
    with pytest.raises(ValueError, match=r"mult\.txt: line 3: malformed iCoT line"):
        load_icot_examples(path)


def test_icot_parse_fields():
    example = parse_icot_line(ICOT_LINES[0])
    assert example.question == "1 3 4 5 * 8 1 9 3"
    assert example.steps == ("8 4 4 3 4", "0 1 3 4 5 0 ( 8 5 7 7 9 0 )", "0 0 9 7 8 8 4 ( 8 5 6 5 8 9 4 )", "0 0 0 3 9 2 6 1")
    assert example.answer == "8 5 6 8 7 2 1 2"
    assert format_icot_line(example) == ICOT_LINES[0]
    no_cot = Example("1 2 * 3 4", [], "3 6 8 0")
    assert parse_icot_line(format_icot_line(no_cot)) == no_cot


def test_json_and_icot_round_trip(tmp_path):
    examples = MultiplicationTask(3, 2).generate(20, seed=3) + PointerChaseTask().generate(5, seed=3)
    save_json_examples(examples, tmp_path / "sub" / "data.json")
    assert load_json_examples(tmp_path / "sub" / "data.json") == examples
    assert load_examples(tmp_path / "sub" / "data.json") == examples

    mult = examples[:20]
    save_icot_examples(mult, tmp_path / "data.txt")
    assert load_icot_examples(tmp_path / "data.txt") == mult
    assert load_examples(tmp_path / "data.txt") == mult

    # JSON content is recognised whatever the extension
    write(tmp_path, "data.dat", (tmp_path / "sub" / "data.json").read_text())
    assert load_examples(tmp_path / "data.dat") == examples


def test_json_loader_reads_valid_json(valid_records):
    examples = load_json_examples(VALID_JSON)
    assert len(examples) == len(valid_records)
    assert examples[0].steps == tuple(valid_records[0]["steps"])


def test_format_icot_refuses_ambiguous_text():
    with pytest.raises(ValueError, match="steps"):
        format_icot_line(Example("q", ["a + b"], "c"))
    with pytest.raises(ValueError, match="answer"):
        format_icot_line(Example("q", ["a"], "c #### d"))


# task registry and determinism

def test_registry():
    assert set(TASKS) == {"prosqa", "multiplication", "running_sum", "pointer_chase"}
    assert isinstance(get_task("multiplication", num_digits_a=2, num_digits_b=3), MultiplicationTask)
    with pytest.raises(ValueError, match="unknown task 'nope'.*multiplication.*prosqa"):
        get_task("nope")


@pytest.mark.parametrize("task", ALL_TASKS, ids=repr)
def test_generation_is_deterministic(task):
    first = task.generate(30, seed=123)
    assert first == task.generate(30, seed=123)
    assert first != task.generate(30, seed=124)
    low, high = task.num_steps_range
    assert all(low <= len(e.steps) <= high for e in first)


def test_generate_rejects_bad_n():
    with pytest.raises(ValueError, match="n must be"):
        RunningSumTask().generate(-1, seed=0)


# prosqa

def independent_check(example):
    """Re-derive the graph from the question text and check answer and proof."""
    sentences = re.findall(r"[^.?]+[.?]", example.question)
    *facts, query = [s.strip() for s in sentences]
    subject, first, second = re.fullmatch(r"Is (\w+) a (\w+) or (\w+)\?", query).groups()

    children = defaultdict(set)
    for fact in facts:
        parent, child = re.fullmatch(r"(?:Every )?(\w+) is a (\w+)\.", fact).groups()
        children[parent].add(child)

    seen, stack = set(), [subject]
    while stack:
        for child in children[stack.pop()]:
            if child not in seen:
                seen.add(child)
                stack.append(child)

    assert (first in seen) != (second in seen), "exactly one option must be reachable"
    target = first if first in seen else second
    assert example.answer == f"{subject} is a {target}."

    current = subject
    for index, step in enumerate(example.steps):
        prefix = "" if index == 0 else "Every "
        parent, child = re.fullmatch(prefix + r"(\w+) is a (\w+)\.", step).groups()
        assert parent == current and child in children[parent]
        current = child
    assert current == target

    # the proof is a shortest one, like the dataset's
    dist, queue = {subject: 0}, [subject]
    for node in queue:
        for child in children[node]:
            if child not in dist:
                dist[child] = dist[node] + 1
                queue.append(child)
    assert dist[target] == len(example.steps)


def test_prosqa_generated_examples_are_correct_proofs(prosqa_generated):
    for example in prosqa_generated:
        independent_check(example)
        verify_prosqa_example(example)


def test_prosqa_valid_examples_pass_the_checks(valid_records):
    for record in valid_records:
        example = Example.from_dict(record)
        independent_check(example)
        verify_prosqa_example(example)


def test_prosqa_verifier_rejects_wrong_proofs(prosqa_generated):
    example = prosqa_generated[0]
    graph = parse_prosqa_question(example.question)
    distractor = [o for o in graph.options if not example.answer.endswith(f" {o}.")][0]

    with pytest.raises(ValueError, match="proof ends"):
        verify_prosqa_example(Example(example.question, example.steps[:-1], example.answer))
    with pytest.raises(ValueError, match="answer"):
        verify_prosqa_example(Example(example.question, example.steps, f"{graph.subject} is a {distractor}."))
    with pytest.raises(ValueError, match="continue"):
        verify_prosqa_example(Example(example.question, example.steps[:1] + example.steps[2:], example.answer))


@pytest.mark.parametrize("style", ["frontier", "frontier_first"])
def test_prosqa_frontier_steps_are_the_breadth_first_layers(prosqa_generated, style):
    frontier = ProsQATask(steps=style).generate(len(prosqa_generated), seed=0)
    chose_a_later_fact = False
    for proof, example in zip(prosqa_generated, frontier):
        # same question and answer as the proof-style example of the same seed, as many steps as the proof
        assert (example.question, example.answer) == (proof.question, proof.answer)
        assert len(example.steps) == len(proof.steps)

        sentences = [s.strip() for s in re.findall(r"[^.?]+[.?]", example.question)][:-1]
        stated = [re.fullmatch(r"(?:Every )?(\w+) is a (\w+)\.", sentence).groups() for sentence in sentences]
        graph = parse_prosqa_question(example.question)
        children = defaultdict(set)
        for parent, child in graph.edges:
            children[parent].add(child)
        dist, queue = {graph.subject: 0}, [graph.subject]
        for node in queue:
            for child in sorted(children[node]):
                if child not in dist:
                    dist[child] = dist[node] + 1
                    queue.append(child)

        for layer, step in enumerate(example.steps, start=1):
            facts = re.findall(r"[^.]+\.", step)
            facts = [f.strip() for f in facts]
            # facts of the question, in its order, one per node of this layer, each from the layer above
            positions = [sentences.index(f) for f in facts]
            assert positions == sorted(positions)
            reached = []
            for fact in facts:
                parent, child = stated[sentences.index(fact)]
                assert dist[parent] == layer - 1 and child in children[parent]
                reached.append(child)
                # the facts that could have reached this node from the layer above
                qualifying = [i for i, (p, c) in enumerate(stated) if c == child and dist.get(p) == layer - 1]
                if style == "frontier_first":
                    assert sentences.index(fact) == min(qualifying)
                chose_a_later_fact |= sentences.index(fact) != min(qualifying)
            assert sorted(reached) == sorted(n for n, d in dist.items() if d == layer)

        # the last layer holds the answer
        target = example.answer.split()[-1].rstrip(".")
        assert dist[target] == len(example.steps)

    # random parents do pick a later fact somewhere; first parents never do
    assert chose_a_later_fact == (style == "frontier")


def test_prosqa_rejects_an_unknown_step_style():
    with pytest.raises(ValueError, match="steps must be one of"):
        ProsQATask(steps="bfs")
    assert get_task("prosqa", steps="frontier").steps == "frontier"


def test_prosqa_statistics_match_valid(valid_records, prosqa_generated):
    reference = prosqa_statistics(valid_records)
    generated = prosqa_statistics(prosqa_generated)

    for key in ("nodes", "edges", "steps", "question_words", "persons"):
        ref, gen = reference[key], generated[key]
        assert abs(gen["mean"] - ref["mean"]) <= 0.1 * ref["mean"], (key, ref, gen)
        assert abs(gen["std"] - ref["std"]) <= 0.3 * ref["std"], (key, ref, gen)

    # ranges of the generator stay inside the validation split's
    for key in ("nodes", "edges", "steps", "persons"):
        assert reference[key]["min"] <= generated[key]["min"], key
        assert generated[key]["max"] <= reference[key]["max"], key

    # proofs are mostly 3-4 steps, as in the paper's data
    counts = [len(e.steps) for e in prosqa_generated]
    assert 0.75 <= sum(c in (3, 4) for c in counts) / len(counts) <= 0.93


def test_prosqa_option_order_is_balanced(prosqa_generated):
    first_is_target = []
    for example in prosqa_generated:
        graph = parse_prosqa_question(example.question)
        first_is_target.append(example.answer == f"{graph.subject} is a {graph.options[0]}.")
    assert 0.4 < statistics.mean(first_is_target) < 0.6


def test_prosqa_vocabulary_covers_valid(valid_records):
    vocab = set(ProsQATask().vocabulary())
    tok = WordTokenizer(vocab)
    for record in valid_records:
        for text in [record["question"], *record["steps"], record["answer"]]:
            tok.encode(text)  # raises on any word outside the task vocabulary
        assert set(record["idx_to_symbol"]) <= vocab


def test_prosqa_records_have_consistent_graph():
    record = ProsQATask().sample_record(random.Random(5))
    symbols = record["idx_to_symbol"]
    assert len(set(symbols)) == len(symbols)
    assert record["root"] in (0, 1)
    assert all(parent < child for parent, child in record["edges"])
    assert record["answer"] == f"{symbols[record['root']]} is a {symbols[record['target']]}."
    assert len(record["edges"]) == prosqa_statistics([record])["edges"]["mean"]


# multiplication

@pytest.mark.parametrize("line", ICOT_LINES)
def test_multiplication_reproduces_real_icot_lines(line):
    real = parse_icot_line(line)
    a_text, b_text = real.question.split(" * ")
    a, b = parse_digits_reversed(a_text), parse_digits_reversed(b_text)
    ours = multiplication_example(a, b, len(a_text.split()), len(b_text.split()))
    assert ours == real
    assert format_icot_line(ours) == line


@pytest.mark.parametrize("digits", [(4, 4), (5, 5), (1, 3), (3, 1), (2, 6)])
def test_multiplication_answers_are_products(digits):
    task = MultiplicationTask(*digits)
    for example in task.generate(50, seed=0):
        a_text, b_text = example.question.split(" * ")
        a, b = parse_digits_reversed(a_text), parse_digits_reversed(b_text)
        assert len(a_text.split()) == digits[0] and len(b_text.split()) == digits[1]
        assert parse_digits_reversed(example.answer) == a * b
        assert len(example.answer.split()) == sum(digits)
        assert len(example.steps) == digits[1]
        # partial products: a * (i-th digit of b) * 10^i
        for i, step in enumerate(example.steps):
            partial = step.split(" ( ")[0]
            assert parse_digits_reversed(partial) == a * (b // 10 ** i % 10) * 10 ** i


def test_multiplication_validates_settings():
    with pytest.raises(ValueError, match="num_digits_b"):
        MultiplicationTask(4, 0)
    with pytest.raises(TypeError, match="num_digits_a"):
        MultiplicationTask("4", 4)


# toys

def test_running_sum_is_correct():
    for example in RunningSumTask(num_digits=5).generate(100, seed=0):
        digits = [int(d) for d in example.question.split()]
        assert len(digits) == 5
        sums = [sum(digits[: i + 1]) % 10 for i in range(1, 5)]
        assert [int(s) for s in example.steps] == sums
        assert example.answer == str(sums[-1])


def test_pointer_chase_is_correct():
    task = PointerChaseTask(num_symbols=6, hops=4)
    for example in task.generate(100, seed=0):
        facts, query = example.question.rsplit(". ", 1)
        mapping = dict(fact.split(" > ") for fact in facts.split(", "))
        assert sorted(mapping) == task.symbols and all(k != v for k, v in mapping.items())
        current = re.fullmatch(r"from (\w)\?", query).group(1)
        visited = []
        for _ in range(4):
            current = mapping[current]
            visited.append(current)
        assert list(example.steps) == visited
        assert example.answer == current


def test_a_growing_graphs_adjacency_is_the_one_its_edges_give():
    # kept as edges are added (the generator asks for it once per candidate parent): the same lists, in the same
    # order, as a rebuild from the edge list, a repeated edge counted once
    from coconut_pytorch.data.tasks.prosqa import _Graph
    rng = random.Random(0)
    graph = _Graph()
    for _ in range(12):
        graph.add_node()
    for _ in range(60):
        graph.add_edge(rng.randrange(12), rng.randrange(12))
    children, parents = {}, {}
    for parent, child in graph.edges:
        children.setdefault(parent, []).append(child)
        parents.setdefault(child, []).append(parent)
    assert len(graph.edges) == len(set(graph.edges)) < 60
    assert {node: graph.children()[node] for node in range(12) if graph.children()[node]} == children
    assert {node: graph.parents()[node] for node in range(12) if graph.parents()[node]} == parents
