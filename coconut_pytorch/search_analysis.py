"""The paper's analysis of latent search on ProsQA (Hao et al., 2024, section 5): where each continuous thought puts
its next-token probability among the graph's nodes.

    python -m coconut_pytorch.search_analysis --checkpoint CKPT --data prosqa_valid.json --out DIR [--limit N] [--num-thoughts K]
    coconut-search-analysis ...                                   # the same, installed

Each thought is read through the model's language-model head (`coconut_pytorch.probing`). Thought k (1-based) stands
for search layer k: the nodes first reached k hops below the question's subject in a breadth-first search (the
subject is layer 0); a run trained with c thoughts per replaced step has thoughts (k-1)c+1 to kc stand for layer k.
A thought's probability on the node names (one word each under the word tokenizer; a subword tokenizer counts a name
by its first token) is split into

- `frontier_on_path`: nodes of layer k that lie on a path to the target (they reach it, or are it),
- `frontier_other`: the other nodes of layer k,
- `other_nodes`: every other node (other layers, nodes the subject never reaches),
- `not_nodes`: what is left, on tokens that name no node,

and, again, by each node's value: how many hops it is from the target (`0` is the target, `never`: it cannot reach
it), over all nodes (`by_value`) and over layer k's alone (`frontier_by_value`). The paper finds that the thoughts
hold a frontier in superposition and favour the nodes that lead to the target. Numbers are averaged over examples.

The data file must carry the graphs: the paper's valid.json records (question, idx_to_symbol, edges, root, target),
as `ProsQATask().sample_record` also writes them. DIR gets `search_analysis.json` (the numbers, with the accuracy of
the greedy answers after the same thoughts) and `search_analysis.png` (stacked bars per thought); stdout gets one JSON
line naming them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from numbers import Integral
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor

from coconut_pytorch.data.tokenizer import Tokenizer
from coconut_pytorch.probing import check_count, thought_distributions

GRAPH_FIELDS = ('idx_to_symbol', 'edges', 'root', 'target')
ROLES = ('frontier_on_path', 'frontier_other', 'other_nodes', 'not_nodes')
NEVER = 'never'
RESULT_NAME, FIGURE_NAME = 'search_analysis.json', 'search_analysis.png'


class SearchGraph(NamedTuple):
    """One ProsQA graph as the search sees it: for every node (the indices of `idx_to_symbol`), its layer and its
    value."""

    names: tuple[str, ...]
    layer: tuple[int | None, ...]               # breadth-first depth below the root; None: the root never reaches it
    hops_to_target: tuple[int | None, ...]      # shortest path to the target; 0 the target itself; None: no path

    def on_path(self, node: int) -> bool:
        """Whether `node` lies on a path from the root to the target: the root reaches it and it reaches the target."""
        return self.layer[node] is not None and self.hops_to_target[node] is not None


def distances(num_nodes: int, edges: Sequence[tuple[int, int]], source: int) -> list[int | None]:
    """Breadth-first hops from `source` along `edges` (parent, child) to every node; None where there is no path."""
    children = [[] for _ in range(num_nodes)]
    for parent, child in edges:
        children[parent].append(child)
    hops: list[int | None] = [None] * num_nodes
    hops[source] = 0
    queue = deque([source])
    while queue:
        node = queue.popleft()
        for child in children[node]:
            if hops[child] is None:
                hops[child] = hops[node] + 1
                queue.append(child)
    return hops


def search_graph(record: Mapping[str, Any], where: str = 'record') -> SearchGraph:
    """The `SearchGraph` of a valid.json-style record (`idx_to_symbol`, `edges`, `root`, `target`); a record without
    them, or with indices out of range, is a one-line ValueError naming `where`."""
    if not isinstance(record, Mapping):
        raise ValueError(f'{where} is not a JSON object')
    missing = [name for name in GRAPH_FIELDS if name not in record]
    if missing:
        raise ValueError(f'{where} has no {", ".join(missing)}: the search analysis needs the graph fields {", ".join(GRAPH_FIELDS)} '
                         f"of the paper's ProsQA records (valid.json has them)")
    names = record['idx_to_symbol']
    if not isinstance(names, list) or not names or not all(isinstance(name, str) and name for name in names):
        raise ValueError(f'{where}: idx_to_symbol must be a non-empty list of node names')
    count = len(names)

    def index(value, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, Integral) or not 0 <= value < count:
            raise ValueError(f'{where}: {name} must be a node index in 0..{count - 1}, got {value!r}')
        return int(value)

    edges = record['edges']
    if not isinstance(edges, list) or not all(isinstance(edge, list) and len(edge) == 2 for edge in edges):
        raise ValueError(f'{where}: edges must be a list of [parent, child] index pairs')
    edges = [(index(parent, f'edges[{i}][0]'), index(child, f'edges[{i}][1]')) for i, (parent, child) in enumerate(edges)]
    root, target = index(record['root'], 'root'), index(record['target'], 'target')

    # a node's value: hops to the target, found by searching from the target along reversed edges
    reversed_edges = [(child, parent) for parent, child in edges]
    return SearchGraph(tuple(names), tuple(distances(count, edges, root)), tuple(distances(count, reversed_edges, target)))


def node_token_ids(tokenizer: Tokenizer, names: Sequence[str]) -> list[int]:
    """Each node name's token: its only one under the word tokenizer, the first of its mid-sentence form (with the
    space before it) under a subword tokenizer. Raises ValueError for a name the tokenizer cannot write."""
    ids = []
    for name in names:
        encoded = tokenizer.encode(' ' + name)
        if len(encoded) == 0:
            raise ValueError(f'node name {name!r} encodes to no token')
        ids.append(encoded[0])
    return ids


def thought_layer(thought: int, thoughts_per_layer: int) -> int:
    """The search layer thought `thought` (1-based) stands for: c thoughts take the place of each layer's step."""
    return (thought - 1) // thoughts_per_layer + 1


def example_masses(probs: Tensor, graph: SearchGraph, token_ids: Sequence[int], thoughts_per_layer: int = 1) -> list[dict]:
    """For one example's thoughts (probs (N, V), its own thoughts only), each thought's mass by role (`ROLES`) and by
    value (`by_value`, `frontier_by_value`: hops to the target as text, or 'never').

    A token that names several nodes (a first subword two names share) counts once, for the first of them."""
    probs = probs.double().cpu()
    seen = set()
    nodes = []                      # (node, token) with each token once
    for node, token in enumerate(token_ids):
        if token not in seen:
            seen.add(token)
            nodes.append((node, token))

    results = []
    for slot in range(probs.shape[0]):
        layer = thought_layer(slot + 1, thoughts_per_layer)
        row = probs[slot].tolist()
        roles = dict.fromkeys(ROLES, 0.)
        by_value, frontier_by_value = {}, {}
        for node, token in nodes:
            mass = row[token]
            value = str(graph.hops_to_target[node]) if graph.hops_to_target[node] is not None else NEVER
            by_value[value] = by_value.get(value, 0.) + mass
            if graph.layer[node] == layer:
                roles['frontier_on_path' if graph.on_path(node) else 'frontier_other'] += mass
                frontier_by_value[value] = frontier_by_value.get(value, 0.) + mass
            else:
                roles['other_nodes'] += mass
        roles['not_nodes'] = sum(row) - roles['frontier_on_path'] - roles['frontier_other'] - roles['other_nodes']
        results.append(dict(layer = layer, **roles, by_value = by_value, frontier_by_value = frontier_by_value))
    return results


def value_order(key: str) -> tuple[int, int]:
    return (1, 0) if key == NEVER else (0, int(key))


def average_masses(per_example: Sequence[Sequence[dict]]) -> list[dict]:
    """`example_masses` of many examples averaged, thought by thought, over the examples that have that thought (a
    value bucket an example lacks counts 0 for it)."""
    longest = max((len(thoughts) for thoughts in per_example), default = 0)
    averaged = []
    for slot in range(longest):
        present = [thoughts[slot] for thoughts in per_example if len(thoughts) > slot]
        n = len(present)
        entry = dict(thought = slot + 1, layer = present[0]['layer'], n = n)
        entry.update({role: sum(masses[role] for masses in present) / n for role in ROLES})
        for field in ('by_value', 'frontier_by_value'):
            keys = sorted({key for masses in present for key in masses[field]}, key = value_order)
            entry[field] = {key: sum(masses[field].get(key, 0.) for masses in present) / n for key in keys}
        averaged.append(entry)
    return averaged


def search_masses(
    probs: Tensor,
    counts: Tensor | Sequence[int],
    records: Sequence[Mapping[str, Any]],
    tokenizer: Tokenizer,
    thoughts_per_layer: int = 1
) -> dict:
    """The search analysis of thought distributions: `probs` (b, N, V) and `counts` (b,) as `probing.ThoughtDistributions`
    gives them, for the graphs of `records` (one per row). Returns `dict(n, thoughts_per_layer, thoughts = [...])`,
    each thought's entry as `average_masses` makes it."""
    if not torch.is_tensor(probs) or probs.ndim != 3:
        raise ValueError(f'probs must be a (batch, thoughts, vocabulary) tensor, got {getattr(probs, "shape", type(probs).__name__)}')
    counts = counts.tolist() if torch.is_tensor(counts) else list(counts)
    if not probs.shape[0] == len(counts) == len(records):
        raise ValueError(f'probs, counts and records must have one entry per example, got {probs.shape[0]}, {len(counts)} and {len(records)}')
    check_count(thoughts_per_layer, 'thoughts_per_layer')
    if any(count < 0 or count > probs.shape[1] for count in counts):
        raise ValueError(f'counts must be between 0 and the {probs.shape[1]} thought slots of probs, got {counts}')

    per_example = []
    for index, (record, count) in enumerate(zip(records, counts)):
        graph = search_graph(record, f'record {index}')
        per_example.append(example_masses(probs[index, :count], graph, node_token_ids(tokenizer, graph.names), thoughts_per_layer))
    return dict(n = len(records), thoughts_per_layer = thoughts_per_layer, thoughts = average_masses(per_example))


def plot_search(analysis: dict, path: str | Path, title: str = ''):
    """Stacked bars per thought: its mass by role, and by the value of the nodes (hops to the target)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    thoughts = analysis['thoughts']
    labels = [f"{t['thought']}\n(layer {t['layer']})" for t in thoughts]
    positions = range(len(thoughts))
    fig, (role_ax, value_ax) = plt.subplots(1, 2, figsize = (11, 5))

    role_names = dict(frontier_on_path = 'layer k, on a path to the target', frontier_other = 'layer k, other',
                      other_nodes = 'other nodes', not_nodes = 'not a node')
    bottom = [0.] * len(thoughts)
    for role, color in zip(ROLES, ('tab:green', 'tab:orange', 'tab:blue', 'lightgray')):
        heights = [t[role] for t in thoughts]
        role_ax.bar(positions, heights, bottom = bottom, color = color, label = role_names[role])
        bottom = [b + h for b, h in zip(bottom, heights)]

    keys = sorted({key for t in thoughts for key in t['by_value']}, key = value_order)
    colors = plt.get_cmap('viridis')
    bottom = [0.] * len(thoughts)
    for index, key in enumerate(keys):
        heights = [t['by_value'].get(key, 0.) for t in thoughts]
        color = 'lightgray' if key == NEVER else colors(index / max(len(keys) - 1, 1))
        value_ax.bar(positions, heights, bottom = bottom, color = color, label = 'cannot reach the target' if key == NEVER else f'{key} hops to the target')
        bottom = [b + h for b, h in zip(bottom, heights)]

    for ax, name in ((role_ax, 'by search layer'), (value_ax, 'by value (on node names only)')):
        ax.set_xticks(list(positions), labels)
        ax.set_xlabel('continuous thought')
        ax.set_ylabel('probability (mean over examples)')
        ax.set_ylim(0, 1.02)
        ax.set_title(name, fontsize = 10)
        # below the bars: a full bar reaches the top, where a legend inside would hide it
        ax.legend(fontsize = 7, loc = 'upper center', bbox_to_anchor = (0.5, -0.22), ncol = 2)
    fig.suptitle(title or f"where each thought's next-token probability goes (n = {analysis['n']})")
    fig.tight_layout()
    fig.savefig(path, dpi = 120)
    plt.close(fig)


def read_graph_records(path: str | Path) -> list[dict]:
    """The records of a valid.json-style file, each checked for its question and its graph (one-line ValueErrors)."""
    path = Path(path)
    try:
        records = json.loads(path.read_text(encoding = 'utf-8-sig'))
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f'--data {path} cannot be read: {error}') from None
    except json.JSONDecodeError as error:
        raise ValueError(f'--data {path} is not JSON (line {error.lineno}, column {error.colno}: {error.msg}); the search analysis '
                         f"reads the paper's ProsQA JSON records") from None
    if not isinstance(records, list) or not records:
        raise ValueError(f'--data {path}: expected a non-empty JSON list of ProsQA records')
    for index, record in enumerate(records):
        where = f'--data {path}: record {index}'
        search_graph(record, where)
        if not isinstance(record.get('question'), str) or not isinstance(record.get('answer'), str):
            raise ValueError(f'{where} has no question and answer text')
    return records


def analyze(run, records: Sequence[Mapping[str, Any]], num_thoughts: int, batch_size: int = 256, source: str = 'records') -> dict:
    """The search analysis of a loaded run (`coconut_pytorch.load`) over valid.json-style `records`, thinking
    `num_thoughts` steps; also the held-out accuracy of its greedy answers."""
    from coconut_pytorch.data.example import Example
    # here, not at the top: evaluation imports the training package's checkpoints
    from coconut_pytorch.evaluate import encode_questions, evaluate_examples

    examples = [Example(question = record['question'], steps = list(record.get('steps', [])), answer = record['answer']) for record in records]
    encode_questions(examples, run.tokenizer, source)      # a word the vocabulary lacks is named, by example
    probes = thought_distributions(run.model, run.tokenizer, [example.question for example in examples], num_thoughts, batch_size = batch_size)
    analysis = search_masses(probes.probs, probes.counts, records, run.tokenizer, run.config.thoughts_per_step)
    answered = evaluate_examples(run.model, run.tokenizer, examples, num_thoughts, run.max_new_tokens, batch_size, source)
    return dict(accuracy = answered['accuracy'], num_thoughts = num_thoughts, **analysis)


def run_name(checkpoint: str | Path) -> str:
    """What a figure calls the run of `checkpoint`: its run folder for a run's own `checkpoint.pt`, else the file's
    name without its suffix (a copy such as `coconut_s0.pt` sits in a folder of several runs)."""
    path = Path(checkpoint)
    return path.parent.name if path.stem == 'checkpoint' and path.parent.name else path.stem


def main(argv: Sequence[str] | None = None):
    """The command (`coconut-search-analysis`): write DIR/search_analysis.json and .png, print one JSON line."""
    parser = argparse.ArgumentParser(description = __doc__, formatter_class = argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', required = True, help = 'checkpoint.pt written by coconut-train / train_toy.py')
    parser.add_argument('--data', required = True, help = "the paper's ProsQA JSON (valid.json): records with their graphs")
    parser.add_argument('--out', required = True, help = 'folder for search_analysis.json and search_analysis.png (made if missing)')
    parser.add_argument('--limit', type = int, default = None, help = 'the first N records only')
    parser.add_argument('--num-thoughts', type = int, default = None, help = "continuous thoughts (default: the checkpoint's final stage)")
    parser.add_argument('--device', default = 'auto', help = 'auto (cuda when torch sees a GPU, else cpu), cpu, cuda, cuda:1, ...')
    parser.add_argument('--batch-size', type = int, default = 256)
    args = parser.parse_args(argv)

    # every mistake in the arguments before the checkpoint loads
    if args.limit is not None and args.limit < 1:
        parser.error(f'--limit must be >= 1, got {args.limit}')
    if args.num_thoughts is not None and args.num_thoughts < 1:
        parser.error(f'--num-thoughts must be >= 1 (a thought to read), got {args.num_thoughts}')
    if args.batch_size < 1:
        parser.error(f'--batch-size must be >= 1, got {args.batch_size}')
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        sys.exit(f'error: --out {out} is a file, not a folder')

    try:
        from coconut_pytorch.helpers import check_device, resolve_device
        check_device(args.device, '--device')
        records = read_graph_records(args.data)[:args.limit]
        from coconut_pytorch import load
        run = load(args.checkpoint, device = resolve_device(args.device))
        num_thoughts = args.num_thoughts if args.num_thoughts is not None else run.num_thoughts
        if num_thoughts < 1:
            raise ValueError(f'the checkpoint thinks with {num_thoughts} continuous thoughts: give --num-thoughts K >= 1')
        analysis = analyze(run, records, num_thoughts, args.batch_size, source = f'--data {args.data}')
    except (ValueError, TypeError) as error:
        sys.exit(f'error: {error}')

    analysis = dict(checkpoint = str(args.checkpoint), data = str(args.data), **analysis)
    try:
        out.mkdir(parents = True, exist_ok = True)
        (out / RESULT_NAME).write_text(json.dumps(analysis, indent = 1) + '\n', encoding = 'utf-8')
        plot_search(analysis, out / FIGURE_NAME, title = f"{run_name(args.checkpoint)}: where each thought's probability goes "
                                                          f"(n = {analysis['n']}, accuracy {analysis['accuracy']:.3f})")
    except OSError as error:
        sys.exit(f'error: --out {out} could not be written: {error}')
    print(json.dumps(dict(n = analysis['n'], num_thoughts = num_thoughts, accuracy = analysis['accuracy'],
                          result = str(out / RESULT_NAME), figure = str(out / FIGURE_NAME))))


if __name__ == '__main__':
    main()
