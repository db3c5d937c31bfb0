"""Out-of-distribution depth (issue 19): the ProsQA generator's depth and size settings, checked against a search of
each record's own edges, the default draws unchanged; and the depth evaluation command on a tiny trained run, its
table checked against `evaluate_examples` on the same sets."""

import hashlib
import json
import random
from collections import deque

import pytest

from coconut_pytorch.data.example import Example
from coconut_pytorch.data.tasks import ProsQATask, get_task, parse_prosqa_question, prosqa, verify_prosqa_example

# sha256 of 40 `sample_record` draws (random.Random(20261202)) per step style, computed with the generator as it was
# before the depth and size settings existed (commit bb19564): the defaults must keep drawing exactly these
DEFAULT_DIGESTS = {
    'proof': '969c9b7bef913f8fa403a0d5a21b6475f50a065d954859881be1d5122ea87b53',
    'frontier': 'c29061b63b87d46621bef5ff8fc606eecbcb0ce6995ecc0fa3d31fd8de98e5cc',
    'frontier_first': 'c03f9b3977642f224287ceb316b1eda160b18cd31bd6156c9cf8588fea252453',
}


def records_digest(task, n = 40):
    rng = random.Random(20261202)
    records = [task.sample_record(rng) for _ in range(n)]
    return hashlib.sha256(json.dumps(records, sort_keys = True).encode()).hexdigest()


@pytest.mark.parametrize('style', ProsQATask.step_styles)
def test_default_settings_draw_what_they_always_drew(style):
    assert records_digest(ProsQATask(steps = style)) == DEFAULT_DIGESTS[style]
    # the defaults given explicitly are the defaults
    explicit = ProsQATask(steps = style, min_steps = 3, max_steps = 6, num_nodes = (17, 28))
    assert records_digest(explicit) == DEFAULT_DIGESTS[style]
    assert explicit.num_steps_range == ProsQATask().num_steps_range == (3, 6)


def shortest_distance(edges, source, target):
    """Breadth-first search over (parent, child) index pairs: hops from source to target, None if unreachable."""
    children = {}
    for parent, child in edges:
        children.setdefault(parent, []).append(child)
    distance = {source: 0}
    queue = deque([source])
    while queue:
        node = queue.popleft()
        for child in children.get(node, []):
            if child not in distance:
                distance[child] = distance[node] + 1
                queue.append(child)
    return distance.get(target)


VOCABULARY = set(ProsQATask().vocabulary())


@pytest.mark.parametrize('settings', [
    dict(min_steps = 7, max_steps = 7),
    dict(min_steps = 8, max_steps = 8, steps = 'frontier'),
    dict(min_steps = 6, max_steps = 8, num_nodes = (30, 40)),
    dict(min_steps = 2, max_steps = 2, num_nodes = 12),
])
def test_depth_settings_give_exactly_the_asked_depths(settings):
    task = ProsQATask(**settings)
    low, high = settings['min_steps'], settings['max_steps']
    assert task.num_steps_range == (low, high)
    nodes = settings.get('num_nodes', (17, 28))
    nodes = (nodes, nodes) if isinstance(nodes, int) else nodes

    rng = random.Random(1)
    depths, sizes = [], []
    for _ in range(24):
        record = task.sample_record(rng)
        # the depth from the record's own graph, not from the generator's bookkeeping
        depth = shortest_distance(record['edges'], record['root'], record['target'])
        assert shortest_distance(record['edges'], record['root'], record['neg_target']) is None
        assert low <= depth <= high
        depths.append(depth)
        sizes.append(len(record['idx_to_symbol']))
        assert nodes[0] <= sizes[-1] <= nodes[1]
        assert len(set(record['idx_to_symbol'])) == len(record['idx_to_symbol'])

        example = Example(record['question'], record['steps'], record['answer'])
        assert len(example.steps) == depth
        # and from the question's text, the graph a model reads: the answer at that depth, the other option unreachable
        graph = parse_prosqa_question(example.question)
        symbols = record['idx_to_symbol']
        assert symbols[record['root']] == graph.subject and example.answer == f"{graph.subject} is a {symbols[record['target']]}."
        assert set(graph.options) == {symbols[record['target']], symbols[record['neg_target']]}
        assert shortest_distance(graph.edges, graph.subject, symbols[record['target']]) == depth
        assert shortest_distance(graph.edges, graph.subject, symbols[record['neg_target']]) is None
        if task.steps == 'proof':
            verify_prosqa_example(example)
        # the vocabulary of the paper's questions: a model trained on 3-6 steps can read these
        words = ' '.join([example.question, *example.steps, example.answer]).replace('.', ' . ').replace('?', ' ? ').split()
        assert set(words) <= VOCABULARY
    assert set(depths) == set(range(low, high + 1))
    if nodes == (30, 40):
        # bigger graphs have more edges: the edge window grows with them, or the biggest would all be rejected
        assert min(sizes) <= 32 and max(sizes) >= 38


def test_depth_and_size_settings_are_task_settings():
    from coconut_pytorch.training import TrainConfig
    config = TrainConfig(task = 'prosqa', task_kwargs = dict(min_steps = 7, max_steps = 8, num_nodes = [24, 36]), device = 'cpu')
    task = get_task(config.task, **config.task_kwargs)     # JSON settings give the node range as a list
    assert task.num_steps_range == (7, 8) and task.num_nodes == (24, 36)
    assert task.vocabulary() == ProsQATask().vocabulary()
    assert repr(task) == "ProsQATask(steps='proof', min_steps=7, max_steps=8, num_nodes=(24, 36))"


@pytest.mark.parametrize('settings, message', [
    (dict(min_steps = 0), 'min_steps must be >= 1'),
    (dict(min_steps = 5, max_steps = 4), r'max_steps must be >= min_steps \(5\)'),
    (dict(num_nodes = 41), 'num_nodes must be at most 40'),
    (dict(num_nodes = (20, 10)), 'num_nodes must be a \\(low, high\\) pair with low <= high'),
    (dict(num_nodes = (1, 2, 3)), 'num_nodes must be an int or a \\(low, high\\) pair'),
    (dict(max_steps = 8, num_nodes = 12), 'num_nodes: graphs of at most 12 nodes cannot hold a proof of 8 steps'),
])
def test_unsatisfiable_settings_are_named(settings, message):
    with pytest.raises(ValueError, match = message):
        ProsQATask(**settings)


@pytest.mark.parametrize('depth, least', [(8, 13), (18, 24)])
def test_the_smallest_graphs_allowed_are_drawn(depth, least):
    # the two main persons, the partner's side at its smallest (2 concepts, or 12% of them) and depth + 1 concepts on
    # the subject's: 13 nodes for 8 steps, 24 for 18 (the partner's 3 concepts of 22)
    with pytest.raises(ValueError, match = f'graphs of at most {least - 1} nodes cannot hold a proof of {depth} steps'):
        ProsQATask(min_steps = depth, max_steps = depth, num_nodes = least - 1)
    record = ProsQATask(min_steps = depth, max_steps = depth, num_nodes = least).sample_record(random.Random(0))
    assert len(record['idx_to_symbol']) == least
    assert shortest_distance(record['edges'], record['root'], record['target']) == depth


def test_deeper_proofs_keep_the_shape_of_the_nearest_measured_depth():
    # the deepest node below the subject: the split's 6-step graphs have none below the target, so neither do 7- and
    # 8-step ones; 2-step ones go as far below it as 3-step ones do
    assert prosqa._subject_depth_counts(8) == {8: 7}
    assert prosqa._subject_depth_counts(2) == {2: 96, 3: 17, 4: 9, 5: 2}
    assert prosqa._subject_depth_counts(4) == prosqa.SUBJECT_DEPTH_COUNTS[4]
    # depths the split lacks weigh as its nearest; graph sizes it lacks as an average one
    assert ProsQATask(min_steps = 5, max_steps = 8)._steps_counts == {5: 36, 6: 7, 7: 7, 8: 7}
    assert ProsQATask(num_nodes = (27, 30))._nodes_counts == {27: 3, 28: 1, 29: 25, 30: 25}


def test_settings_no_graph_meets_fail_instead_of_spinning(monkeypatch):
    monkeypatch.setattr(prosqa, 'MAX_ATTEMPTS', 50)
    task = ProsQATask()
    monkeypatch.setattr(task, '_try_sample_record', lambda rng: None)
    with pytest.raises(ValueError, match = 'no graph met these settings in 50 draws'):
        task.sample(random.Random(0))


# the depth evaluation command

def test_depth_eval_seeds_are_never_a_training_seed():
    from coconut_pytorch.depth_eval import depth_eval_seed
    from coconut_pytorch.training.fresh_sets import derived_seed, fresh_data_seed, held_out_seed
    for run_seed in (0, 1, 7, 999, 10 ** 6):
        own = {run_seed, held_out_seed(run_seed)} | {fresh_data_seed(run_seed, epoch) for epoch in range(1, 300)}
        used = own | {derived_seed(seed, round) for seed in own for round in range(1, 65)}
        evaluation = {depth_eval_seed(seed, depth) for seed in range(4) for depth in range(1, 13)}
        assert len(evaluation) == 4 * 12 and not evaluation & used
    with pytest.raises(ValueError, match = 'seed must be >= 0'):
        depth_eval_seed(-1, 3)


def test_depth_sets_take_the_runs_settings():
    from coconut_pytorch.depth_eval import depth_task
    from coconut_pytorch.training import TrainConfig
    config = TrainConfig(task = 'prosqa', task_kwargs = dict(steps = 'frontier', num_nodes = [20, 30]), device = 'cpu')
    task = depth_task(config, 7)
    assert (task.steps, task.num_nodes, task.num_steps_range) == ('frontier', (20, 30), (7, 7))
    assert depth_task(config, 8, dict(num_nodes = [30, 40])).num_nodes == (30, 40)
    with pytest.raises(ValueError, match = "task_kwargs: prosqa has no setting 'colour'; it accepts: steps, min_steps, max_steps, num_nodes"):
        depth_task(config, 3, dict(colour = 1))
    with pytest.raises(ValueError, match = "needs a ProsQA run; this checkpoint was trained on task 'running_sum'"):
        depth_task(TrainConfig(task = 'running_sum', device = 'cpu'), 3)


def test_markdown_table_puts_each_accuracy_in_its_row_and_column():
    from coconut_pytorch.depth_eval import markdown_table
    results = [dict(depth = depth, num_thoughts = thoughts, accuracy = accuracy, n = 10)
               for depth, thoughts, accuracy in ((3, 6, 0.9), (3, 8, 0.95), (7, 6, 0.4), (7, 8, 0.55))]
    assert markdown_table(results).splitlines() == [
        '| depth | n | 6 thoughts | 8 thoughts |',
        '|---|---|---|---|',
        '| 3 | 10 | 0.900 | 0.950 |',
        '| 7 | 10 | 0.400 | 0.550 |',
    ]


@pytest.fixture(scope = 'module')
def prosqa_run(tmp_path_factory):
    """A tiny ProsQA run of two epochs (stages 0 and 1), one optimizer step each: the model sizes of
    tests/training/helpers.TINY."""
    from coconut_pytorch.training import TrainConfig, train
    out = tmp_path_factory.mktemp('prosqa-run')
    config = TrainConfig(task = 'prosqa', device = 'cpu', train_size = 16, eval_size = 2, batch_size = 16, epochs_per_stage = 1,
                         final_epochs = 0, max_latent_stage = 1, dim = 16, depth = 1, heads = 2, dim_head = 8,
                         num_residual_streams = 1, warmup_steps = 0)
    train(config, out)
    return out / 'checkpoint.pt'


def test_depth_eval_table_is_evaluate_examples_on_the_generated_sets(prosqa_run, in_process, tmp_path, monkeypatch):
    from coconut_pytorch import depth_eval
    from coconut_pytorch.depth_eval import depth_eval_seed, main
    from coconut_pytorch.evaluate import evaluate_examples
    from coconut_pytorch.training.checkpoints import load_run

    # what the command evaluates, recorded on the way to the real evaluation
    calls = []
    def spy(model, tokenizer, examples, num_thoughts, max_new_tokens, **kwargs):
        calls.append((list(examples), num_thoughts, max_new_tokens))
        return evaluate_examples(model, tokenizer, examples, num_thoughts = num_thoughts, max_new_tokens = max_new_tokens, **kwargs)
    monkeypatch.setattr(depth_eval, 'evaluate_examples', spy)

    out = tmp_path / 'depth.json'
    finished = in_process(main, '--checkpoint', prosqa_run, '--depths', 3, 7, '--num-thoughts', 0, 2, '--size', 2,
                          '--max-new-tokens', 6, '--device', 'cpu', '--out', out)
    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert json.loads(out.read_text()) == summary
    results = {(row['depth'], row['num_thoughts']): row for row in summary['results']}
    assert list(results) == [(3, 0), (3, 2), (7, 0), (7, 2)]

    assert lines[0] == '| depth | n | 0 thoughts | 2 thoughts |'
    table = {}
    for line in lines[2:-1]:      # after the header and the separator: a row per depth
        cells = [cell.strip() for cell in line.strip('|').split('|')]
        table[int(cells[0])] = [float(cell) for cell in cells[2:]]

    run = load_run(prosqa_run)
    recorded = iter(calls)
    for depth in (3, 7):
        # generated here, independently of the command: the documented seed, the asked depth
        examples = ProsQATask(min_steps = depth, max_steps = depth).generate(2, seed = depth_eval_seed(0, depth))
        assert all(len(example.steps) == depth for example in examples)
        for column, thoughts in enumerate((0, 2)):
            assert next(recorded) == (examples, thoughts, 6)
            expected = evaluate_examples(run.model, run.tokenizer, examples, num_thoughts = thoughts, max_new_tokens = 6)
            row = results[depth, thoughts]
            assert (row['accuracy'], row['n'], row['max_new_tokens'], row['seed']) == (expected['accuracy'], 2, 6, depth_eval_seed(0, depth))
            assert table[depth][column] == round(expected['accuracy'], 3)

    # without --num-thoughts: the checkpoint's own count, within its token budget (recorded only: generating up to
    # that budget would take seconds)
    calls.clear()
    def record(model, tokenizer, examples, num_thoughts, max_new_tokens, **kwargs):
        calls.append((list(examples), num_thoughts, max_new_tokens))
        return dict(accuracy = 0.5, n = len(examples))
    monkeypatch.setattr(depth_eval, 'evaluate_examples', record)
    finished = in_process(main, '--checkpoint', prosqa_run, '--depths', 4, '--size', 1, '--seed', 3, '--device', 'cpu')
    assert finished.returncode == 0, finished.stderr
    examples = ProsQATask(min_steps = 4, max_steps = 4).generate(1, seed = depth_eval_seed(3, 4))
    assert calls == [(examples, run.num_thoughts, depth_eval.token_budget(run, examples))]


def test_the_token_budget_grows_with_the_proof(prosqa_run):
    from coconut_pytorch.data.tokenizer import max_target_length
    from coconut_pytorch.depth_eval import depth_eval_seed, token_budget
    from coconut_pytorch.training.checkpoints import INFERENCE_TOKEN_MARGIN, load_run
    run = load_run(prosqa_run)
    shallow = ProsQATask(min_steps = 3, max_steps = 3).generate(4, seed = depth_eval_seed(0, 3))
    deep = ProsQATask(min_steps = 8, max_steps = 8).generate(4, seed = depth_eval_seed(0, 8))
    assert token_budget(run, shallow) == run.max_new_tokens
    # a run that writes its steps writes 8 of them, more tokens than any training target of 3-6 steps
    assert token_budget(run, deep) == max_target_length(deep, run.tokenizer) + INFERENCE_TOKEN_MARGIN > run.max_new_tokens
def test_depth_eval_names_a_depth_the_graphs_cannot_hold(prosqa_run, in_process):
    from coconut_pytorch.depth_eval import main
    finished = in_process(main, '--checkpoint', prosqa_run, '--depths', 3, 8, '--task-kwargs', '{"num_nodes": 12}', '--device', 'cpu')
    assert finished.returncode == 2 and finished.stdout == ''
    assert finished.stderr.strip().splitlines() == ['error: num_nodes: graphs of at most 12 nodes cannot hold a proof of 8 steps (it needs 13); raise num_nodes or lower max_steps']


@pytest.fixture(scope = 'module')
def halting_prosqa_run(tmp_path_factory):
    """The tiny ProsQA run of `prosqa_run` with a halting head (`halt_loss`)."""
    from coconut_pytorch.training import TrainConfig, train
    out = tmp_path_factory.mktemp('prosqa-halting-run')
    config = TrainConfig(task = 'prosqa', device = 'cpu', train_size = 16, eval_size = 2, batch_size = 16, epochs_per_stage = 1,
                         final_epochs = 0, max_latent_stage = 1, dim = 16, depth = 1, heads = 2, dim_head = 8,
                         num_residual_streams = 1, warmup_steps = 0, halt_loss = 1.)
    train(config, out)
    return out / 'checkpoint.pt'


def test_depth_eval_with_learned_halting_is_evaluate_examples_halting(halting_prosqa_run, prosqa_run, in_process):
    from coconut_pytorch.depth_eval import depth_eval_seed, main
    from coconut_pytorch.evaluate import evaluate_examples
    from coconut_pytorch.training.checkpoints import load_run

    finished = in_process(main, '--checkpoint', halting_prosqa_run, '--depths', 3, '--num-thoughts', 1, 3, '--size', 4,
                          '--max-new-tokens', 6, '--device', 'cpu', '--halt-threshold', 0.5)
    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.strip().splitlines()
    results = json.loads(lines[-1])['results']
    assert lines[0] == '| depth | n | at most 1 thoughts | at most 3 thoughts |'

    run = load_run(halting_prosqa_run)
    examples = ProsQATask(min_steps = 3, max_steps = 3).generate(4, seed = depth_eval_seed(0, 3))
    cells = [cell.strip() for cell in lines[2].strip('|').split('|')][2:]
    for row, cell, most in zip(results, cells, (1, 3)):
        expected = evaluate_examples(run.model, run.tokenizer, examples, num_thoughts = most, max_new_tokens = 6, halt_threshold = 0.5)
        assert (row['num_thoughts'], row['halt_threshold']) == (most, 0.5)
        assert (row['accuracy'], row['mean_num_thoughts']) == (expected['accuracy'], expected['mean_num_thoughts'])
        assert 1 <= row['mean_num_thoughts'] <= most
        assert cell == f"{expected['accuracy']:.3f} ({expected['mean_num_thoughts']:.2f} used)"

    # bad settings are named before any compute; a checkpoint without the head is named too
    for args, message in [(('--halt-threshold', 1.5), '--halt-threshold must be in (0, 1)'),
                          (('--halt-threshold', 0.5, '--num-thoughts', 0, 2), '--halt-threshold needs --num-thoughts >= 1')]:
        failed = in_process(main, '--checkpoint', halting_prosqa_run, '--depths', 3, '--size', 1, '--device', 'cpu', *args)
        assert failed.returncode == 2 and message in failed.stderr
    failed = in_process(main, '--checkpoint', prosqa_run, '--depths', 3, '--size', 1, '--device', 'cpu', '--halt-threshold', 0.5)
    assert failed.returncode == 2 and 'halt' in failed.stderr and 'Traceback' not in failed.stderr
