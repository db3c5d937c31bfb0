"""ProsQA-style graph reasoning (Hao et al., 2024), generated to match the paper's validation split.

A question lists, in shuffled order, the edges of a random DAG as sentences
("Tom is a terpus." for a person, "Every terpus is a brimpus." for a concept), then asks
"Is Tom a lempus or scrompus?". One option (the target) is reachable from Tom, the other
(the distractor) is not. The steps are a shortest proof:

    Tom is a terpus. / Every terpus is a brimpus. / Every brimpus is a lempus.

and the answer is "Tom is a lempus.".

Structure measured on valid.json (300 examples) and reproduced here:
- persons are exactly the source nodes; two main persons (the subject and a "partner"),
  plus 0-4 extra persons pointing to one to three concepts;
- the subject's descendants and the partner's descendants are two clusters; edges may go
  from the partner's cluster into the subject's (never to an ancestor of the target), never back;
- the target is a sink at shortest distance 3-6 from the subject (3: 41%, 4: 44%, 5: 12%, 6: 2%);
- the distractor is a sink at distance 1-4 from the partner, unreachable from the subject;
- 17-28 nodes, 22-53 edges, concept in-degree 1-7 (mostly 1-2);
- which option is named first is a coin flip; the proof is one shortest path chosen at random.

`ProsQATask(steps="frontier")` keeps the same questions and answers but makes step k the breadth-first layer k
below the subject: for every concept first reached in k hops, one fact that reaches it ("Every terpus is a
brimpus."), in the order the question states them, up to the target's layer. Each step is then a local
expansion of the one before (no look-ahead needed to write it), the search that the paper finds Coconut's
continuous thoughts encoding in superposition; a curriculum over these steps supervises the thoughts with
whole frontiers instead of one chosen path (an option of this package, not the paper's setting).
Where several facts reach a node from the layer above, "frontier" names a random one, which no model can predict;
`steps="frontier_first"` names the one the question states first, so every token of a step is determined.

Depth and size are settings too (`ProsQATask(min_steps=7, max_steps=8, num_nodes=(24, 36))`), for questions deeper
than any the paper trains on (its data has 3-6 steps): the generator is the same, and so are the names, so a model
trained on 3-6 steps reads the deeper questions with its own vocabulary. Depths and node counts the validation split
never has weigh as the nearest depth it has (a 7- or 8-step proof as often as a 6-step one, its subject's cluster
shaped like a 6-step one's, shifted one or two levels down) and as an average node count it has (so that a range
of bigger graphs is drawn uniformly), and where the node range reaches past the split's 17-28 the edge window
(22-53) widens in proportion. The defaults draw exactly what the generator drew before these settings
existed.
"""

from __future__ import annotations

import json
import math
import random
import re
import statistics
from collections import defaultdict
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable, Mapping, NamedTuple

from coconut_pytorch.data.example import Example
from coconut_pytorch.data.tasks.base import Task, check_int

# distributions measured on the validation split (value: how often it occurs there)

STEPS_COUNTS = {3: 124, 4: 133, 5: 36, 6: 7}
NODES_COUNTS = {17: 2, 18: 5, 19: 14, 20: 18, 21: 37, 22: 48, 23: 58, 24: 52, 25: 40, 26: 22, 27: 3, 28: 1}
EXTRA_PERSONS_COUNTS = {0: 180, 1: 93, 2: 21, 3: 5, 4: 1}
EXTRA_PERSON_OUTDEGREE_COUNTS = {1: 133, 2: 19, 3: 2}
DISTRACTOR_DEPTH_COUNTS = {1: 63, 2: 158, 3: 72, 4: 7}        # partner -> distractor distance
# deepest node below the subject, per proof length; below the partner, per distractor depth
SUBJECT_DEPTH_COUNTS = {3: {3: 96, 4: 17, 5: 9, 6: 2}, 4: {4: 119, 5: 11, 6: 2, 7: 1}, 5: {5: 35, 6: 1}, 6: {6: 7}}
PARTNER_DEPTH_COUNTS = {1: {1: 4, 2: 32, 3: 21, 4: 6}, 2: {2: 76, 3: 71, 4: 8, 5: 3}, 3: {3: 55, 4: 14, 5: 2, 6: 1}, 4: {4: 7}}
CONCEPT_INDEGREE_COUNTS = {1: 2989, 2: 1899, 3: 848, 4: 256, 5: 80, 6: 17, 7: 3}
# extra (non-tree) parents: child level minus parent level; mostly the same level
PARENT_LEVEL_COUNTS = {1: 520, 0: 1315, -1: 478, -2: 118, -3: 20}
CROSS_EDGES_COUNTS = {0: 35, 1: 25, 2: 18, 3: 11, 4: 6, 5: 5}  # partner side -> subject side
PARTNER_CLUSTER_FRACTION = (0.386, 0.12)                      # mean, std of |partner only| / |all concepts|
PARTNER_FRACTION_BOUNDS = (0.12, 0.72)                        # the draw of that fraction is clipped to these
EXCLUSIVE_CONCEPT_PROB = 0.27                                 # an extra person gets a concept of its own

MIN_STEPS, MAX_STEPS = min(STEPS_COUNTS), max(STEPS_COUNTS)
MIN_NODES, MAX_NODES = min(NODES_COUNTS), max(NODES_COUNTS)
MIN_EDGES, MAX_EDGES = 22, 53
# a question names two main persons (the subject and the partner); every other node beyond them may be a concept
MAIN_PERSONS = 2
# consecutive failed draws after which settings are declared unsatisfiable (the defaults rarely fail one draw; the
# tightest settings __init__ accepts fail a few dozen)
MAX_ATTEMPTS = 10_000

_PERSON_FACT = re.compile(r"^([A-Z]\w*) is a (\w+)\.$")
_CONCEPT_FACT = re.compile(r"^Every (\w+) is a (\w+)\.$")
_QUERY = re.compile(r"^Is ([A-Z]\w*) a (\w+) or (\w+)\?$")
_SENTENCE = re.compile(r"[^.?]+[.?]")


def exists(value: Any) -> bool:
    return value is not None


def _weighted(rng: random.Random, counts: Mapping[int, float]) -> int:
    values = list(counts)
    return rng.choices(values, weights=[counts[v] for v in values])[0]


def _over_range(counts: Mapping[int, float], low: int, high: int, beyond: str) -> dict[int, float]:
    """`counts` on `low`..`high`, in increasing order. A value the validation split never has weighs as the nearest
    one it has (`beyond="nearest"`: its tail goes on flat) or as an average one (`beyond="mean"`: a range wholly
    outside it is uniform). On the measured range itself this is `counts` (same keys, order and weights: the same
    draws)."""
    least, most = min(counts), max(counts)
    mean = sum(counts.values()) / len(counts)
    def weight(value: int) -> float:
        if value in counts:
            return counts[value]
        return counts[min(max(value, least), most)] if beyond == "nearest" else mean
    return {value: weight(value) for value in range(low, high + 1)}


def _subject_depth_counts(num_steps: int) -> dict[int, float]:
    """Deepest node below the subject for a proof of `num_steps`: as measured, or for a length the split never has,
    the nearest measured one's, shifted by the difference (nothing below the target of a 7- or 8-step proof, as
    of a 6-step one)."""
    nearest = min(max(num_steps, MIN_STEPS), MAX_STEPS)
    shift = num_steps - nearest
    return {depth + shift: count for depth, count in SUBJECT_DEPTH_COUNTS[nearest].items()}


def _edge_window(min_nodes: int, max_nodes: int) -> tuple[int, int]:
    """The edge counts a graph of `min_nodes`..`max_nodes` nodes may have: the validation split's 22-53, each end
    scaled in proportion where the node range goes past the split's 17-28 (bigger graphs have more edges: a fixed
    ceiling would reject nearly all of them)."""
    low = MIN_EDGES if min_nodes >= MIN_NODES else math.floor(MIN_EDGES * min_nodes / MIN_NODES)
    high = MAX_EDGES if max_nodes <= MAX_NODES else math.ceil(MAX_EDGES * max_nodes / MAX_NODES)
    return low, high


def _least_nodes(num_steps: int) -> int:
    """The fewest nodes a graph holding a `num_steps` proof can have: the two main persons, the partner's side at its
    smallest (12% of the concepts, at least 2) and the subject's at least `num_steps + 1` concepts (the sizes
    `_try_sample_record` splits the concepts into)."""
    nodes = num_steps + 1 + 2 + MAIN_PERSONS
    while True:
        clustered = nodes - MAIN_PERSONS
        if clustered - max(round(clustered * PARTNER_FRACTION_BOUNDS[0]), 2) >= num_steps + 1:
            return nodes
        nodes += 1


@lru_cache(maxsize=1)
def load_prosqa_vocab() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(person names, concept names) seen in the ProsQA validation split, shipped with the package."""
    text = resources.files(__package__).joinpath("prosqa_vocab.json").read_text(encoding="utf-8")
    data = json.loads(text)
    return tuple(data["persons"]), tuple(data["concepts"])


# parsing and checking

class ProsQAGraph(NamedTuple):
    """A ProsQA question parsed back into its graph."""

    persons: tuple[str, ...]              # in order of first appearance
    concepts: tuple[str, ...]
    edges: tuple[tuple[str, str], ...]    # (parent, child) in sentence order
    subject: str                          # the person asked about
    options: tuple[str, str]              # in the order the question names them

    @property
    def num_nodes(self) -> int:
        return len(self.persons) + len(self.concepts)

    def reachable(self, source: str) -> set[str]:
        """Every node reachable from `source` (excluding `source` itself unless on a cycle)."""
        children = defaultdict(list)
        for parent, child in self.edges:
            children[parent].append(child)
        seen: set[str] = set()
        stack = [source]
        while stack:
            for child in children[stack.pop()]:
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        return seen


def parse_prosqa_question(question: str) -> ProsQAGraph:
    """Parse a ProsQA question into its graph. Raises ValueError naming the bad sentence."""
    if not isinstance(question, str):
        raise TypeError(f"question must be a str, got {type(question).__name__}")

    sentences = [s.strip() for s in _SENTENCE.findall(question)]
    if not sentences or "".join(sentences).replace(" ", "") != question.replace(" ", ""):
        raise ValueError(f"question is not a sequence of sentences ending in '.' or '?': {question[:80]!r}")

    query = _QUERY.match(sentences[-1])
    if not exists(query):
        raise ValueError(f"last sentence must be 'Is <Person> a <A> or <B>?', got {sentences[-1]!r}")

    persons: dict[str, None] = {}
    concepts: dict[str, None] = {}
    edges = []
    for sentence in sentences[:-1]:
        person_fact = _PERSON_FACT.match(sentence)
        concept_fact = _CONCEPT_FACT.match(sentence)
        if exists(person_fact):
            parent, child = person_fact.groups()
            persons[parent] = None
        elif exists(concept_fact):
            parent, child = concept_fact.groups()
            concepts[parent] = None
        else:
            raise ValueError(f"unrecognised ProsQA fact {sentence!r}")
        concepts[child] = None
        edges.append((parent, child))

    subject, first, second = query.groups()
    return ProsQAGraph(
        persons=tuple(persons),
        concepts=tuple(concepts),
        edges=tuple(edges),
        subject=subject,
        options=(first, second),
    )


def verify_prosqa_example(example: Example) -> None:
    """Raise ValueError unless the steps are a valid proof of a correct answer.

    Correct means: the answer names the subject and the option reachable from it, the
    other option is unreachable, and each step is a fact of the question continuing from
    the previous step, the last one ending at the answer.
    """
    graph = parse_prosqa_question(example.question)
    facts = set(graph.edges)

    reachable = graph.reachable(graph.subject)
    good = [option for option in graph.options if option in reachable]
    if len(good) != 1:
        raise ValueError(f"exactly one option must be reachable from {graph.subject}, got {good}")
    target = good[0]

    expected_answer = f"{graph.subject} is a {target}."
    if example.answer != expected_answer:
        raise ValueError(f"answer {example.answer!r} should be {expected_answer!r}")

    if not example.steps:
        raise ValueError("a ProsQA proof needs at least one step")

    current = graph.subject
    for index, step in enumerate(example.steps):
        pattern = _PERSON_FACT if index == 0 else _CONCEPT_FACT
        match = pattern.match(step)
        if not exists(match):
            raise ValueError(f"step {index} {step!r} is not a {'person' if index == 0 else 'concept'} fact")
        parent, child = match.groups()
        if parent != current:
            raise ValueError(f"step {index} {step!r} does not continue from {current!r}")
        if (parent, child) not in facts:
            raise ValueError(f"step {index} {step!r} is not a fact of the question")
        current = child

    if current != target:
        raise ValueError(f"the proof ends at {current!r}, not at the answer {target!r}")


def prosqa_statistics(items: Iterable[Example | Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Summary statistics (mean, std, min, max) of ProsQA examples or valid.json records.

    Keys: nodes, edges, steps, question_words, persons. Graph sizes are measured by
    parsing the question text, so generated examples and dataset records are compared alike.
    """
    columns: dict[str, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        if isinstance(item, Example):
            question, steps = item.question, item.steps
        elif isinstance(item, Mapping) and "question" in item and "steps" in item:
            question, steps = item["question"], item["steps"]
        else:
            raise TypeError(f"items[{index}] must be an Example or a record with 'question' and 'steps'")

        graph = parse_prosqa_question(question)
        columns["nodes"].append(graph.num_nodes)
        columns["edges"].append(len(graph.edges))
        columns["steps"].append(len(steps))
        columns["question_words"].append(len(question.split()))
        columns["persons"].append(len(graph.persons))

    if not columns:
        raise ValueError("prosqa_statistics needs at least one example")

    return {
        name: dict(
            mean=statistics.mean(values),
            std=statistics.pstdev(values),
            min=min(values),
            max=max(values),
        )
        for name, values in columns.items()
    }


# generation

class _Graph:
    """Mutable DAG under construction: integer nodes, parent -> child edges."""

    def __init__(self):
        self.num_nodes = 0
        self.edges: list[tuple[int, int]] = []
        self.edge_set: set[tuple[int, int]] = set()
        # adjacency kept as edges are added (in edge order, as a rebuild from `edges` would list it): the cycle check
        # asks for it once per candidate parent, and rebuilding it each time was most of the generator's time
        self._children: defaultdict[int, list[int]] = defaultdict(list)
        self._parents: defaultdict[int, list[int]] = defaultdict(list)

    def add_node(self) -> int:
        self.num_nodes += 1
        return self.num_nodes - 1

    def add_edge(self, parent: int, child: int) -> None:
        if (parent, child) not in self.edge_set:
            self.edge_set.add((parent, child))
            self.edges.append((parent, child))
            self._children[parent].append(child)
            self._parents[child].append(parent)

    def children(self) -> Mapping[int, list[int]]:
        """Each node's children, in the order their edges were added (a node without any: an empty list). Read only."""
        return self._children

    def parents(self) -> Mapping[int, list[int]]:
        """Each node's parents, in the order their edges were added. Read only."""
        return self._parents

    def distances(self, source: int) -> dict[int, int]:
        children = self.children()
        dist = {source: 0}
        queue = [source]
        for node in queue:
            for child in children[node]:
                if child not in dist:
                    dist[child] = dist[node] + 1
                    queue.append(child)
        return dist

    def reaches(self, source: int, target: int) -> bool:
        children = self.children()
        seen = {source}
        stack = [source]
        while stack:
            for child in children[stack.pop()]:
                if child == target:
                    return True
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        return False

    def ancestors(self, node: int) -> set[int]:
        parents = self.parents()
        seen: set[int] = set()
        stack = [node]
        while stack:
            for parent in parents[stack.pop()]:
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
        return seen


def _grow_cluster(
    rng: random.Random,
    graph: _Graph,
    source: int,
    size: int,
    goal_depth: int,
    max_depth: int,
) -> tuple[list[int], int]:
    """Add `size` concept nodes below `source`; return (nodes, goal).

    First a tree: every node gets one parent one level up, which fixes its shortest
    distance from `source`. The goal is the first node placed at `goal_depth` and never
    becomes a parent, so it is a sink at exactly that distance. Then extra parents are
    drawn from the level above, the same level or deeper levels, like in the dataset:
    they add alternative and longer paths but never a shortcut.
    """
    assert size >= goal_depth
    depth = {source: 0}
    nodes: list[int] = []
    goal = None

    for index in range(size):
        remaining = size - index
        usable = [source] + [n for n in nodes if n != goal]
        deepest = max(depth[n] for n in usable)

        if not exists(goal) and goal_depth - deepest >= remaining:
            # running out of nodes: deepen now or the goal depth is never reached
            candidates = [n for n in usable if depth[n] == deepest]
        else:
            # before the goal exists nothing may go deeper than it
            limit = goal_depth if not exists(goal) else max_depth
            candidates = [n for n in usable if depth[n] < limit]

        primary = rng.choice(candidates)
        node = graph.add_node()
        graph.add_edge(primary, node)
        depth[node] = depth[primary] + 1
        nodes.append(node)

        if not exists(goal) and depth[node] == goal_depth:
            goal = node

    assert exists(goal)

    by_depth = defaultdict(list)
    for node in nodes:
        if node != goal:
            by_depth[depth[node]].append(node)

    for node in nodes:
        for _ in range(_weighted(rng, CONCEPT_INDEGREE_COUNTS) - 1):
            for _attempt in range(8):
                parent_depth = depth[node] - _weighted(rng, PARENT_LEVEL_COUNTS)
                candidates = [
                    n for n in by_depth[parent_depth]
                    if n != node and (n, node) not in graph.edge_set
                ]
                rng.shuffle(candidates)
                # same or deeper level parents could close a cycle: take the first that does not
                parent = next((n for n in candidates if not graph.reaches(node, n)), None)
                if exists(parent):
                    graph.add_edge(parent, node)
                    break

    return nodes, goal


def _sample_shortest_path(rng: random.Random, graph: _Graph, source: int, target: int) -> list[int]:
    """A shortest source -> target path, uniform over all shortest paths."""
    dist = graph.distances(source)
    parents = graph.parents()

    # number of shortest paths from source to each node, in BFS order
    ways = {source: 1}
    for node in sorted(dist, key=dist.get):
        if node != source:
            ways[node] = sum(ways[p] for p in parents[node] if dist.get(p) == dist[node] - 1)

    path = [target]
    while path[-1] != source:
        node = path[-1]
        options = [p for p in parents[node] if dist.get(p) == dist[node] - 1]
        path.append(rng.choices(options, weights=[ways[p] for p in options])[0])
    return path[::-1]


def _topological_order(rng: random.Random, graph: _Graph, first: list[int]) -> list[int]:
    """All nodes, `first` leading, each parent before its children, ties broken at random."""
    children = graph.children()
    indegree = defaultdict(int)
    for _, child in graph.edges:
        indegree[child] += 1

    order = list(first)
    ready = [n for n in range(graph.num_nodes) if indegree[n] == 0 and n not in first]
    for node in first:
        for child in children[node]:
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)

    while ready:
        node = ready.pop(rng.randrange(len(ready)))
        order.append(node)
        for child in children[node]:
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)

    assert len(order) == graph.num_nodes, "generated graph has a cycle"
    return order


def _frontier_steps(rng: random.Random | None, graph: _Graph, source: int, depth: int, fact, sentences: list[str]) -> list[str]:
    """Breadth-first layers 1..depth below `source`: per newly reached node one fact from the layer above
    (where several parents qualify, a random one, or with `rng=None` the one stated first in the question),
    the facts of a layer in question order."""
    dist = graph.distances(source)
    parents = graph.parents()
    position = {sentence: index for index, sentence in enumerate(sentences)}
    steps = []
    for layer in range(1, depth + 1):
        reached = sorted(node for node, d in dist.items() if d == layer)
        facts = []
        for node in reached:
            candidates = [fact(p, node) for p in sorted(parents[node]) if dist.get(p) == layer - 1]
            facts.append(rng.choice(candidates) if rng is not None else min(candidates, key = position.__getitem__))
        steps.append(" ".join(sorted(facts, key=position.__getitem__)))
    return steps


class ProsQATask(Task):
    """ProsQA-style examples whose graph statistics match the paper's validation split.

    num_steps_range: (3, 6) by default, mostly 3-4. Names come from the closed vocabulary of the
    validation split (17 persons, 38 concepts), shipped as prosqa_vocab.json.

    steps: "proof" (one shortest path), "frontier" or "frontier_first" (breadth-first layers; see the module).
    min_steps, max_steps: the proof depth range, i.e. the target's shortest distance from the subject (default 3
        and 6, the paper's). Within it depths keep the split's frequencies; depths it lacks weigh as the nearest
        one it has, e.g. `min_steps=7, max_steps=8` asks for 7- and 8-hop questions, half of each.
    num_nodes: the graph size, persons included: an int, or an inclusive (low, high) range (default: the split's
        17-28, with its frequencies; sizes outside it weigh as an average size in it, e.g. (30, 40) is uniform). At
        most 40 (the 38 concepts and the two main persons), and the largest must hold the deepest proof (13 nodes
        for 8 steps), else ValueError naming the setting.
    The defaults (and the same values given explicitly) draw exactly the examples the generator drew before these
    settings existed.
    """

    name = "prosqa"
    step_styles = ("proof", "frontier", "frontier_first")

    def __init__(
        self,
        steps: str = "proof",
        min_steps: int | None = None,
        max_steps: int | None = None,
        num_nodes: int | tuple[int, int] | None = None,
    ):
        if steps not in self.step_styles:
            raise ValueError(f"steps must be one of {self.step_styles}, got {steps!r}")
        self.steps = steps
        self.persons, self.concepts = load_prosqa_vocab()

        self.min_steps = check_int("min_steps", min_steps, 1) if exists(min_steps) else MIN_STEPS
        self.max_steps = check_int("max_steps", max_steps, 1) if exists(max_steps) else MAX_STEPS
        if self.max_steps < self.min_steps:
            raise ValueError(f"max_steps must be >= min_steps ({self.min_steps}), got {self.max_steps}")

        self.num_nodes = self._node_range(num_nodes)
        low, high = self.num_nodes
        # every node but the persons is a concept, and the vocabulary names 38: with the two main persons, 40 always
        # fit (extra persons only leave fewer concepts to name)
        most = MAIN_PERSONS + len(self.concepts)
        if high > most:
            raise ValueError(f"num_nodes must be at most {most} (the vocabulary's {len(self.concepts)} concepts "
                             f"and the {MAIN_PERSONS} main persons), got {high}")
        need = _least_nodes(self.max_steps)
        if high < need:
            raise ValueError(f"num_nodes: graphs of at most {high} nodes cannot hold a proof of {self.max_steps} steps "
                             f"(it needs {need}); raise num_nodes or lower max_steps")

        # the distributions each draw uses, fixed once: on the defaults, the measured tables themselves
        self._steps_counts = _over_range(STEPS_COUNTS, self.min_steps, self.max_steps, beyond="nearest")
        self._nodes_counts = _over_range(NODES_COUNTS, low, high, beyond="mean")
        self._edge_window = _edge_window(low, high)

    @staticmethod
    def _node_range(num_nodes: int | tuple[int, int] | list[int] | None) -> tuple[int, int]:
        """`num_nodes` as an inclusive (low, high) range; a list is accepted, as JSON task settings give one."""
        if not exists(num_nodes):
            return (MIN_NODES, MAX_NODES)
        if isinstance(num_nodes, (tuple, list)):
            if len(num_nodes) != 2:
                raise ValueError(f"num_nodes must be an int or a (low, high) pair, got {num_nodes!r}")
            low, high = (check_int("num_nodes", value, 1) for value in num_nodes)
            if high < low:
                raise ValueError(f"num_nodes must be a (low, high) pair with low <= high, got {num_nodes!r}")
            return (low, high)
        value = check_int("num_nodes", num_nodes, 1)
        return (value, value)

    @property
    def num_steps_range(self) -> tuple[int, int]:
        return (self.min_steps, self.max_steps)

    def __repr__(self) -> str:
        # only what differs from the defaults, so the default task reads as it always did
        settings = [f"steps={self.steps!r}"]
        if (self.min_steps, self.max_steps) != (MIN_STEPS, MAX_STEPS):
            settings += [f"min_steps={self.min_steps}", f"max_steps={self.max_steps}"]
        if self.num_nodes != (MIN_NODES, MAX_NODES):
            settings.append(f"num_nodes={self.num_nodes}")
        return f"ProsQATask({', '.join(settings)})"

    def vocabulary(self) -> list[str]:
        return [*self.persons, *self.concepts, "Every", "is", "a", "Is", "or", ".", "?"]

    def sample(self, rng: random.Random) -> Example:
        record = self.sample_record(rng)
        return Example(question=record["question"], steps=record["steps"], answer=record["answer"])

    def sample_record(self, rng: random.Random) -> dict[str, Any]:
        """One example as a valid.json-style record, including its graph
        (idx_to_symbol, edges, root, target, neg_target)."""
        for _ in range(MAX_ATTEMPTS):
            record = self._try_sample_record(rng)
            if exists(record):
                return record
        # the settings passed the checks of __init__ but (nearly) no graph meets them: say so rather than spin
        raise ValueError(f"{self!r}: no graph met these settings in {MAX_ATTEMPTS} draws; "
                         f"widen num_nodes or the steps range")

    def _try_sample_record(self, rng: random.Random) -> dict[str, Any] | None:
        num_steps = _weighted(rng, self._steps_counts)
        num_nodes = _weighted(rng, self._nodes_counts)
        num_extra = _weighted(rng, EXTRA_PERSONS_COUNTS)
        distractor_depth = _weighted(rng, {d: c for d, c in DISTRACTOR_DEPTH_COUNTS.items() if d <= num_steps})
        num_exclusive = sum(rng.random() < EXCLUSIVE_CONCEPT_PROB for _ in range(num_extra))

        # split the concepts between the subject's cluster and the partner's
        num_clustered = num_nodes - 2 - num_extra - num_exclusive
        fraction = min(max(rng.gauss(*PARTNER_CLUSTER_FRACTION), PARTNER_FRACTION_BOUNDS[0]), PARTNER_FRACTION_BOUNDS[1])
        num_partner_side = round(num_clustered * fraction)
        num_partner_side = max(num_partner_side, 2, distractor_depth)
        num_subject_side = num_clustered - num_partner_side

        if num_subject_side < num_steps + 1:
            return None  # too small for this proof length: draw again

        graph = _Graph()
        subject, partner = graph.add_node(), graph.add_node()

        subject_nodes, target = _grow_cluster(
            rng, graph, subject, num_subject_side,
            goal_depth=num_steps,
            max_depth=_weighted(rng, _subject_depth_counts(num_steps)),
        )
        partner_nodes, distractor = _grow_cluster(
            rng, graph, partner, num_partner_side,
            goal_depth=distractor_depth,
            max_depth=_weighted(rng, PARTNER_DEPTH_COUNTS[distractor_depth]),
        )

        # partner-side edges into the subject's cluster, never onto a path to the target
        # (the partner must not reach the target); nothing ever points back, so the
        # distractor stays unreachable from the subject
        blocked = graph.ancestors(target) | {target}
        landing = [n for n in subject_nodes if n not in blocked]
        sources = [partner] + [n for n in partner_nodes if n != distractor]
        if landing:
            for _ in range(_weighted(rng, CROSS_EDGES_COUNTS)):
                graph.add_edge(rng.choice(sources), rng.choice(landing))

        # extra persons: a concept of their own, and/or existing concepts
        extra_persons = []
        shared = [n for n in subject_nodes + partner_nodes if n not in (target, distractor)]
        for index in range(num_extra):
            person = graph.add_node()
            extra_persons.append(person)
            out_degree = _weighted(rng, EXTRA_PERSON_OUTDEGREE_COUNTS)
            if index < num_exclusive:
                graph.add_edge(person, graph.add_node())
                out_degree -= 1
            for child in rng.sample(shared, min(out_degree, len(shared))):
                graph.add_edge(person, child)

        # keep the edge count inside the range of the validation split (widened for bigger graphs)
        min_edges, max_edges = self._edge_window
        if not min_edges <= len(graph.edges) <= max_edges:
            return None

        # the invariants the question relies on
        from_subject = graph.distances(subject)
        assert from_subject.get(target) == num_steps
        assert distractor not in from_subject
        assert target not in graph.distances(partner)
        assert graph.num_nodes == num_nodes

        # names
        person_nodes = [subject, partner] + extra_persons
        concept_nodes = [n for n in range(graph.num_nodes) if n not in set(person_nodes)]
        symbol = dict(zip(person_nodes, rng.sample(self.persons, len(person_nodes))))
        symbol.update(zip(concept_nodes, rng.sample(self.concepts, len(concept_nodes))))
        person_set = set(person_nodes)

        def fact(parent: int, child: int) -> str:
            if parent in person_set:
                return f"{symbol[parent]} is a {symbol[child]}."
            return f"Every {symbol[parent]} is a {symbol[child]}."

        sentences = [fact(p, c) for p, c in graph.edges]
        rng.shuffle(sentences)

        options = [symbol[target], symbol[distractor]]
        rng.shuffle(options)
        question = " ".join(sentences) + f" Is {symbol[subject]} a {options[0]} or {options[1]}?"

        path = _sample_shortest_path(rng, graph, subject, target)
        steps = [fact(p, c) for p, c in zip(path, path[1:])]
        answer = f"{symbol[subject]} is a {symbol[target]}."

        # like valid.json: the two main persons take indices 0 and 1, the rest in topological order
        first = [subject, partner] if rng.random() < 0.5 else [partner, subject]
        order = _topological_order(rng, graph, first)
        index_of = {node: i for i, node in enumerate(order)}

        if self.steps == "frontier":
            # its own generator, seeded by the question (str seeds hash with sha512: stable across processes), so
            # a seed gives the same questions and answers with either style of steps
            steps = _frontier_steps(random.Random(question), graph, subject, num_steps, fact, sentences)
        elif self.steps == "frontier_first":
            steps = _frontier_steps(None, graph, subject, num_steps, fact, sentences)

        return dict(
            question=question,
            steps=steps,
            answer=answer,
            idx_to_symbol=[symbol[n] for n in order],
            edges=sorted(([index_of[p], index_of[c]] for p, c in graph.edges), key=lambda e: (e[1], e[0])),
            root=index_of[subject],
            target=index_of[target],
            neg_target=index_of[distractor],
        )
