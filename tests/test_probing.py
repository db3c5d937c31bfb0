"""What the thoughts hold (`coconut_pytorch.probing`): each fed-back thought through the model's head, its top tokens,
a readable block in the evaluation command and in training; and the paper's search analysis on ProsQA
(`coconut_pytorch.search_analysis`): the layer and value of each node, the masses split by hand, the command."""

import json
import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / 'training'))    # the training tests' shared run settings
from helpers import TINY

from coconut_pytorch import Coconut
from coconut_pytorch.data import WordTokenizer
from coconut_pytorch.data.tasks.prosqa import ProsQATask
from coconut_pytorch.probing import ThoughtDistributions, format_thoughts, thought_distributions, thought_probabilities, top_thought_tokens
from coconut_pytorch.search_analysis import NEVER, run_name, search_graph, search_masses
from coconut_pytorch.training import TrainConfig, train
from coconut_pytorch.training.config import RESUME_MAY_CHANGE

WORDS = ['Tom', 'wumpus', 'yumpus', 'zumpus', 'dumpus', 'Every', 'is', 'a', '.']
TOKENIZER = WordTokenizer(WORDS)     # 3 specials + 9 words


def tiny_model(c = 1, dtype = torch.float64) -> Coconut:
    torch.manual_seed(0)
    model = Coconut(num_reasoning_steps = 2, num_latents_per_step = c,
                    transformer = dict(num_tokens = len(TOKENIZER), dim = 8, depth = 1, heads = 1, dim_head = 8, num_residual_streams = 1))
    return model.to(dtype).eval()


PROMPTS = [torch.tensor(TOKENIZER.encode(text)) for text in ('Tom is a wumpus .', 'Every wumpus is a yumpus . Tom is a', 'Tom')]


# probing

def test_each_thought_is_a_distribution_over_the_vocabulary():
    model = tiny_model(c = 2)
    probes = thought_probabilities(model, PROMPTS, num_thoughts = 3)
    assert probes.probs.shape == (3, 6, len(TOKENIZER)) and probes.counts.tolist() == [6, 6, 6]     # 3 steps of 2 thoughts
    assert probes.probs.dtype == torch.float32 and (probes.probs >= 0).all()
    torch.testing.assert_close(probes.probs.sum(dim = -1), torch.ones(3, 6))

    # from text, in chunks, the same
    questions = [TOKENIZER.decode(prompt) for prompt in PROMPTS]
    from_text = thought_distributions(model, TOKENIZER, questions, num_thoughts = 3, batch_size = 2)
    torch.testing.assert_close(from_text.probs, probes.probs)
    assert from_text.counts.tolist() == [6, 6, 6]


def test_the_probabilities_are_the_heads_softmax_of_the_thoughts_fed_back():
    model = tiny_model()
    with torch.no_grad():
        # a head whose logits differ a lot between tokens, so a wrong vector or a missing softmax shows
        model.model.to_logits.weight.copy_(torch.linspace(-3, 3, len(TOKENIZER) * 8, dtype = torch.float64).reshape(len(TOKENIZER), 8))
        intermediates = model(PROMPTS, return_loss = False, num_reasoning_steps = 3)
    thoughts = intermediates.latent_tokens                                     # (b, 3, D): what is fed back
    weight = model.model.to_logits.weight
    # by hand: logit_v = sum_d thought_d W_vd, then exp / sum exp
    logits = torch.stack([torch.stack([torch.stack([(thoughts[b, n] * weight[v]).sum() for v in range(weight.shape[0])])
                                       for n in range(thoughts.shape[1])]) for b in range(thoughts.shape[0])])
    expected = logits.exp() / logits.exp().sum(dim = -1, keepdim = True)

    probes = thought_probabilities(model, PROMPTS, num_thoughts = 3)
    torch.testing.assert_close(probes.probs.double(), expected, atol = 1e-6, rtol = 1e-5)
    # the thoughts are not alike, nor is any distribution flat: the comparison says something
    assert (expected[:, 0] - expected[:, 1]).abs().max() > 1e-3 and expected.max() > 2 / len(TOKENIZER)


def test_rows_with_fewer_thoughts_have_empty_slots_and_their_own_distributions():
    model = tiny_model(c = 2)
    steps = torch.tensor([3, 0, 1])
    probes = thought_probabilities(model, PROMPTS, num_thoughts = steps)
    assert probes.probs.shape == (3, 6, len(TOKENIZER)) and probes.counts.tolist() == [6, 0, 2]
    for row, count in enumerate(probes.counts.tolist()):
        torch.testing.assert_close(probes.probs[row, :count].sum(dim = -1), torch.ones(count))
        assert (probes.probs[row, count:] == 0).all()                      # padding slots: empty
        if count:
            alone = thought_probabilities(model, [PROMPTS[row]], num_thoughts = int(steps[row]))
            torch.testing.assert_close(probes.probs[row, :count], alone.probs[0], atol = 1e-6, rtol = 1e-5)

    # chunks whose most thoughts differ are padded to the longest
    questions = [TOKENIZER.decode(prompt) for prompt in PROMPTS]
    chunked = thought_distributions(model, TOKENIZER, questions[::-1], num_thoughts = steps.flip(0), batch_size = 2)
    assert chunked.counts.tolist() == [2, 0, 6]
    torch.testing.assert_close(chunked.probs, probes.probs.flip(0))

    top = top_thought_tokens(probes, TOKENIZER, k = 2)
    assert [len(thoughts) for thoughts in top] == [6, 0, 2] and all(len(tokens) == 2 for thoughts in top for tokens in thoughts)
    block = format_thoughts(questions, top, ['a', 'b', 'c'])
    assert block.count('thought ') == 8 and '(no continuous thoughts)' in block.split('example 3')[0].split('example 2')[1]


def test_top_tokens_and_the_block_read_as_computed():
    vocab = TOKENIZER.vocab
    probs = torch.zeros(1, 2, len(vocab))
    probs[0, 0, vocab.index('Tom')], probs[0, 0, vocab.index('wumpus')], probs[0, 0, vocab.index('.')] = 0.5, 0.3, 0.2
    probs[0, 1, vocab.index('yumpus')], probs[0, 1, vocab.index('<eos>')] = 0.9, 0.1
    top = top_thought_tokens(ThoughtDistributions(probs, torch.tensor([2])), TOKENIZER, k = 2)
    assert top == [[[('Tom', 0.5), ('wumpus', pytest.approx(0.3))], [('yumpus', pytest.approx(0.9)), ('<eos>', pytest.approx(0.1))]]]

    block = format_thoughts(['Tom is a wumpus. Is Tom a yumpus or zumpus?'], top, ['Tom is a yumpus.'], golds = ['Tom is a zumpus.'])
    assert block.splitlines() == ['example 1: Tom is a wumpus. Is Tom a yumpus or zumpus?',
                                  '  thought 1: Tom 0.50 | wumpus 0.30',
                                  '  thought 2: yumpus 0.90 | <eos> 0.10',
                                  '  answer: Tom is a yumpus.   (gold: Tom is a zumpus.)']
    long = format_thoughts(['x' * 500 + ' Is Tom a yumpus?'], [[]], ['-'], question_chars = 80)
    assert len(long.splitlines()[0]) < 100 and long.splitlines()[0].endswith('Is Tom a yumpus?')


# a tiny run on ProsQA: the training, evaluation and search-analysis commands

@pytest.fixture(scope = 'module')
def prosqa_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('prosqa')
    said = []
    settings = {**TINY, 'task': 'prosqa', 'task_kwargs': {}, 'max_latent_stage': 1, 'train_size': 32, 'eval_size': 2,
                'eval_every': 1, 'show_thoughts': 2}
    result = train(TrainConfig(method = 'coconut', **settings), out, say = said.append)
    assert result['num_thoughts'] == 1
    data = out / 'valid.json'
    task = ProsQATask()
    data.write_text(json.dumps([task.sample_record(random.Random(seed)) for seed in range(20)]))
    return out / 'checkpoint.pt', data, said


def test_training_shows_the_thoughts_at_each_held_out_evaluation(prosqa_run):
    _, _, said = prosqa_run
    blocks = [text for text in said if text.startswith('thoughts ')]
    # eval_every = 1 over two epochs: after epoch 0 (stage 0, no thoughts), and at the end (stage 1, one thought)
    assert len(blocks) == 2 and blocks[0].startswith('thoughts after epoch 0') and blocks[1].startswith('thoughts at the end')
    assert blocks[0].count('example ') == 2 and '(no continuous thoughts)' in blocks[0]
    assert blocks[1].count('example ') == 2 and blocks[1].count('thought 1: ') == 2 and 'thought 2' not in blocks[1]
    assert blocks[1].count('answer: ') == 2 and '(gold: ' in blocks[1]
    assert 'show_thoughts' in RESUME_MAY_CHANGE
    with pytest.raises(ValueError, match = 'show_thoughts'):
        TrainConfig(show_thoughts = -1)


def test_evaluate_prints_the_thoughts_with_show_thoughts(prosqa_run, in_process):
    from coconut_pytorch.evaluate import main as evaluate
    checkpoint, data, _ = prosqa_run
    common = ('--checkpoint', checkpoint, '--data', data, '--device', 'cpu', '--limit', 3, '--num-thoughts', 2, '--max-new-tokens', 4)
    plain = in_process(evaluate, *common)
    shown = in_process(evaluate, *common, '--show-thoughts', 2)
    assert plain.returncode == shown.returncode == 0, shown.stderr

    # the JSON line on stdout is unchanged (but for the time it took)
    lines = [json.loads(done.stdout) for done in (plain, shown)]
    assert [{key: value for key, value in line.items() if key != 'seconds'} for line in lines][0] == \
           [{key: value for key, value in line.items() if key != 'seconds'} for line in lines][1]
    assert 'example 1:' not in plain.stderr
    assert shown.stderr.count('example ') == 2 and 'example 2:' in shown.stderr and 'example 3:' not in shown.stderr
    assert shown.stderr.count('thought 1: ') == 2 and shown.stderr.count('thought 2: ') == 2 and 'thought 3' not in shown.stderr
    assert shown.stderr.count('answer: ') == 2 and ' | ' in shown.stderr

    refused = in_process(evaluate, *common, '--show-thoughts', -1)
    assert refused.returncode != 0 and '--show-thoughts' in refused.stderr


# the search analysis

# root Tom (0); 0 -> 1, 2; 1 -> 3, 6; 2 -> 6; 3 -> 4 (the target); 5 -> 4, but nothing reaches 5
GRAPH = dict(question = 'unused', answer = 'unused', idx_to_symbol = ['Tom', 'wumpus', 'yumpus', 'zumpus', 'dumpus', 'Every', 'is'],
             edges = [[0, 1], [0, 2], [1, 3], [1, 6], [2, 6], [3, 4], [5, 4]], root = 0, target = 4)


def test_search_layers_and_values_of_a_hand_made_graph():
    graph = search_graph(GRAPH)
    assert graph.layer == (0, 1, 1, 2, 3, None, 2)
    assert graph.hops_to_target == (3, 2, None, 1, 0, 1, None)
    assert [graph.on_path(node) for node in range(7)] == [True, True, False, True, True, False, False]

    with pytest.raises(ValueError, match = 'record 3 has no edges, root'):
        search_graph({key: value for key, value in GRAPH.items() if key not in ('edges', 'root')}, 'record 3')
    with pytest.raises(ValueError, match = 'target must be a node index'):
        search_graph({**GRAPH, 'target': 7})


def test_masses_split_as_computed_by_hand():
    vocab = TOKENIZER.vocab
    token = {word: vocab.index(word) for word in vocab}
    probs = torch.zeros(2, 3, len(vocab), dtype = torch.float64)
    # example 1, thought 1 (layer 1 = wumpus, yumpus): wumpus is on the path, yumpus is not
    for word, p in (('wumpus', 0.4), ('yumpus', 0.3), ('zumpus', 0.1), ('Tom', 0.05), ('a', 0.15)):
        probs[0, 0, token[word]] = p
    # thought 2 (layer 2 = zumpus, is): zumpus on the path; Every (node 5) is never reached from Tom
    for word, p in (('zumpus', 0.5), ('is', 0.2), ('Every', 0.1), ('dumpus', 0.2)):
        probs[0, 1, token[word]] = p
    # thought 3 (layer 3 = dumpus, the target)
    probs[0, 2, token['dumpus']], probs[0, 2, token['.']] = 0.6, 0.4
    # example 2 (the same graph), with 2 thoughts of its own; its third slot is padding and must not count
    probs[1, 0, token['yumpus']], probs[1, 0, token['<eos>']] = 1., 0.
    probs[1, 1, token['is']], probs[1, 1, token['.']] = 0.5, 0.5
    probs[1, 2, token['Tom']] = 1.

    analysis = search_masses(probs, torch.tensor([3, 2]), [GRAPH, GRAPH], TOKENIZER)
    assert analysis['n'] == 2 and [t['thought'] for t in analysis['thoughts']] == [1, 2, 3]
    first, second, third = analysis['thoughts']

    approx = pytest.approx
    assert (first['layer'], first['n']) == (1, 2)
    assert first['frontier_on_path'] == approx((0.4 + 0.) / 2) and first['frontier_other'] == approx((0.3 + 1.) / 2)
    assert first['other_nodes'] == approx((0.1 + 0.05) / 2) and first['not_nodes'] == approx((0.15 + 0.) / 2)
    # values: hops to the target; wumpus 2, yumpus never, zumpus 1, Tom 3
    assert first['by_value'] == approx({'0': 0., '1': 0.1 / 2, '2': 0.4 / 2, '3': 0.05 / 2, NEVER: (0.3 + 1.) / 2})
    assert first['frontier_by_value'] == approx({'2': 0.4 / 2, NEVER: (0.3 + 1.) / 2})

    assert second['frontier_on_path'] == approx(0.5 / 2) and second['frontier_other'] == approx((0.2 + 0.5) / 2)
    assert second['other_nodes'] == approx((0.1 + 0.2) / 2) and second['not_nodes'] == approx(0.5 / 2)
    assert second['by_value'] == approx({'0': 0.2 / 2, '1': (0.5 + 0.1) / 2, '2': 0., '3': 0., NEVER: (0.2 + 0.5) / 2})
    assert list(second['by_value']) == ['0', '1', '2', '3', NEVER]

    # only example 1 has a third thought
    assert (third['layer'], third['n']) == (3, 1)
    assert (third['frontier_on_path'], third['frontier_other'], third['other_nodes'], third['not_nodes']) == approx((0.6, 0., 0., 0.4))

    # two thoughts per layer: thoughts 1-2 stand for layer 1, thought 3 for layer 2
    paired = search_masses(probs, torch.tensor([3, 2]), [GRAPH, GRAPH], TOKENIZER, thoughts_per_layer = 2)
    assert [t['layer'] for t in paired['thoughts']] == [1, 1, 2]
    # thought 2 now stands for layer 1, where it put nothing
    assert (paired['thoughts'][1]['frontier_on_path'], paired['thoughts'][1]['frontier_other'], paired['thoughts'][1]['other_nodes']) == approx((0., 0., (1. + 0.5) / 2))
    assert paired['thoughts'][2]['frontier_on_path'] == approx(0.) and paired['thoughts'][2]['other_nodes'] == approx(0.6)

    with pytest.raises(ValueError, match = 'counts must be between 0 and the 3 thought slots'):
        search_masses(probs, torch.tensor([4, 2]), [GRAPH, GRAPH], TOKENIZER)



def test_the_search_analysis_command_writes_its_numbers_and_figure(prosqa_run, tmp_path, in_process):
    from coconut_pytorch.search_analysis import main as analyse
    checkpoint, data, _ = prosqa_run
    out = tmp_path / 'analysis'
    done = in_process(analyse, '--checkpoint', checkpoint, '--data', data, '--out', out, '--limit', 4, '--num-thoughts', 2, '--device', 'cpu')
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout)
    assert line['n'] == 4 and line['num_thoughts'] == 2 and Path(line['figure']).read_bytes()[:4] == b'\x89PNG'

    analysis = json.loads(Path(line['result']).read_text())
    assert analysis['n'] == 4 and 0 <= analysis['accuracy'] <= 1 and len(analysis['thoughts']) == 2
    for thought in analysis['thoughts']:
        parts = [thought[role] for role in ('frontier_on_path', 'frontier_other', 'other_nodes', 'not_nodes')]
        assert all(-1e-9 <= part <= 1 + 1e-9 for part in parts) and sum(parts) == pytest.approx(1.)
        assert sum(thought['by_value'].values()) == pytest.approx(1 - thought['not_nodes'])

    # a file without the graphs is a one-line error
    bare = tmp_path / 'bare.json'
    bare.write_text(json.dumps([{'question': 'Tom is a wumpus. Is Tom a wumpus or yumpus?', 'steps': [], 'answer': 'Tom is a wumpus.'}]))
    refused = in_process(analyse, '--checkpoint', checkpoint, '--data', bare, '--out', tmp_path / 'none')
    assert refused.returncode != 0 and refused.stdout == ''
    assert refused.stderr.startswith('error: ') and 'idx_to_symbol' in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert not (tmp_path / 'none').exists()


def test_the_figure_names_the_run_by_its_folder_or_by_the_copied_files_name():
    assert run_name('runs/prosqa-coconut-1/checkpoint.pt') == 'prosqa-coconut-1'
    assert run_name('/tmp/i19/coconut_s0.pt') == 'coconut_s0'
    assert run_name('checkpoint.pt') == 'checkpoint'


def test_reading_thoughts_and_answering_leave_a_training_model_in_training_mode():
    from coconut_pytorch.evaluate import generate_greedy
    from coconut_pytorch.helpers import in_eval_mode
    model = Coconut(num_reasoning_steps = 2, transformer = dict(num_tokens = 12, dim = 16, depth = 1, dim_head = 8, heads = 2)).train()
    with pytest.raises(RuntimeError):
        with in_eval_mode(model):
            assert not model.training
            raise RuntimeError('the block fails')
    assert model.training
    generate_greedy(model, [torch.tensor([1, 2, 3])], eos_id = 0, num_thoughts = 2, max_new_tokens = 2)
    assert model.training
    model.eval()
    generate_greedy(model, [torch.tensor([1, 2, 3])], eos_id = 0, num_thoughts = 2, max_new_tokens = 2)
    assert not model.training
