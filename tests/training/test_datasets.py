"""A run's training and held-out sets: from files (a disjoint held-out split by seed) or generated (never asking a
held-out question), with a held-out file the vocabulary cannot encode refused before training."""

import pytest
from helpers import SMALL, running_sum_files

from coconut_pytorch.data import Example, save_json_examples
from coconut_pytorch.training import TrainConfig, train


def test_load_data_from_files_splits_off_a_disjoint_held_out_set(tmp_path):
    from coconut_pytorch.data import load_json_examples
    from coconut_pytorch.training.datasets import load_data

    train_file, eval_file = running_sum_files(tmp_path)
    everything = load_json_examples(train_file)

    train_set, eval_set, tokenizer, max_steps = load_data(TrainConfig(train_file = str(train_file), eval_size = 50, seed = 4))
    assert len(eval_set) == 50 and len(train_set) == len(everything) - 50
    held_out = {id(e) for e in eval_set}
    assert not held_out & {id(e) for e in train_set}
    assert sorted(map(repr, train_set + eval_set)) == sorted(map(repr, everything))
    assert max_steps == max(len(e.steps) for e in everything)
    words = {word for e in everything for text in (e.question, *e.steps, e.answer) for word in text.split()}
    assert all(word in tokenizer for word in words)

    # the split follows the seed
    again, _, _, _ = load_data(TrainConfig(train_file = str(train_file), eval_size = 50, seed = 4))
    other, _, _, _ = load_data(TrainConfig(train_file = str(train_file), eval_size = 50, seed = 5))
    assert again == train_set and other != train_set

    # with an eval file nothing is split off
    train_set, eval_set, _, _ = load_data(TrainConfig(train_file = str(train_file), eval_file = str(eval_file)))
    assert train_set == everything and eval_set == load_json_examples(eval_file)

    with pytest.raises(ValueError, match = 'too few'):
        load_data(TrainConfig(train_file = str(train_file), eval_size = 600))
    empty = tmp_path / 'empty.json'
    empty.write_text('[]')
    with pytest.raises(ValueError, match = 'holds no examples'):
        load_data(TrainConfig(train_file = str(empty)))
    # an empty held-out file is found before training, with a generated task or a training file
    with pytest.raises(ValueError, match = 'eval_file .*empty.json holds no examples'):
        load_data(TrainConfig(eval_file = str(empty)))
    with pytest.raises(ValueError, match = 'eval_file .*empty.json holds no examples'):
        load_data(TrainConfig(train_file = str(train_file), eval_file = str(empty)))


@pytest.mark.parametrize('fresh_data', [False, True])
def test_generated_training_sets_never_ask_a_held_out_question(fresh_data):
    from coconut_pytorch.training.fresh_sets import FreshSets, generate_set
    from coconut_pytorch.training.datasets import held_out_questions, load_data

    # 3-digit running sums: 1,000 questions, so 400 draws from another seed would repeat many of the 100 held out
    config = TrainConfig(task = 'running_sum', task_kwargs = dict(num_digits = 3), train_size = 400, eval_size = 100, fresh_data = fresh_data, seed = 3)
    train_set, eval_set, _, _ = load_data(config)
    excluded = held_out_questions(config, eval_set)
    assert len(train_set) == 400 and len(excluded) > 80 and not excluded & {e.question for e in train_set}
    # the filter only removes: what is left of the unfiltered set comes first, in its order
    unfiltered, _, _, _ = load_data(TrainConfig(**{**config.__dict__, 'exclude_held_out': False}))
    kept = [e for e in unfiltered if e.question not in excluded]
    assert len(kept) < 400 and train_set[:len(kept)] == kept

    if fresh_data:
        examples, _ = generate_set(config.task, config.task_kwargs, 400, 12345, excluded)
        assert len(examples) == 400 and not excluded & {e.question for e in examples}
        fresh = FreshSets(config.task, config.task_kwargs, 400, config.seed, 3, None, workers = 1, excluded = excluded)
        assert fresh.arguments(1)[-1] == excluded
        fresh.close()


def test_a_generated_run_names_the_eval_file_it_cannot_encode(tmp_path):
    bad = tmp_path / 'bad.json'
    save_json_examples([Example(question = '1 2 zebra', steps = ['3'], answer = '3')], bad)
    with pytest.raises(ValueError, match = 'bad.json.*zebra'):
        train(TrainConfig(**{**SMALL, 'eval_file': str(bad)}), tmp_path / 'run')
    assert not (tmp_path / 'run' / 'checkpoint.pt').exists()  # before any training
