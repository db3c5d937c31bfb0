"""Tiny Hugging Face models and tokenizers built locally (no network), saved as a folder like a downloaded model."""

from pathlib import Path
from typing import Iterable

import pytest

EOS, BOS = '<|endoftext|>', '<s>'


def bpe_tokenizer(texts: Iterable[str], vocab_size: int = 300, with_bos: bool = False):
    """A byte-level BPE tokenizer trained on `texts` (GPT-2's kind); `with_bos`: it puts <s> before a text, as
    Llama's does."""
    pytest.importorskip('transformers')
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space = False)
    backend.decoder = decoders.ByteLevel()
    specials = [EOS, BOS] if with_bos else [EOS]
    trainer = trainers.BpeTrainer(vocab_size = vocab_size, special_tokens = specials, initial_alphabet = pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(list(texts) + ['\n'], trainer)
    if with_bos:
        backend.post_processor = processors.TemplateProcessing(single = f'{BOS} $A', special_tokens = [(BOS, backend.token_to_id(BOS))])
    return PreTrainedTokenizerFast(tokenizer_object = backend, eos_token = EOS, **({'bos_token': BOS} if with_bos else {}))


def save_tiny_model(folder: Path, texts: Iterable[str], family: str = 'gpt2', dim: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A random causal LM of `family` ('gpt2' or 'llama', the latter with a tokenizer that adds <s>) and a tokenizer
    trained on `texts`, saved in `folder` as `from_pretrained` reads them."""
    transformers = pytest.importorskip('transformers')
    import torch

    tokenizer = bpe_tokenizer(texts, with_bos = family == 'llama')
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    if family == 'gpt2':
        config = transformers.GPT2Config(vocab_size = vocab, n_embd = dim, n_layer = layers, n_head = 4, n_positions = 128,
                                         bos_token_id = tokenizer.eos_token_id, eos_token_id = tokenizer.eos_token_id)
        model = transformers.GPT2LMHeadModel(config)
    elif family == 'llama':
        # a vocabulary padded past the tokenizer's ids, as Qwen2's is
        config = transformers.LlamaConfig(vocab_size = vocab + 5, hidden_size = dim, intermediate_size = 2 * dim, num_hidden_layers = layers,
                                          num_attention_heads = 4, num_key_value_heads = 2, max_position_embeddings = 128,
                                          bos_token_id = tokenizer.bos_token_id, eos_token_id = tokenizer.eos_token_id)
        model = transformers.LlamaForCausalLM(config)
    else:
        raise ValueError(f'family must be gpt2 or llama, got {family!r}')
    folder.mkdir(parents = True, exist_ok = True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


if __name__ == '__main__':
    # the random models RESULTS.md trains through the curriculum:
    #   python tests/tiny_hf.py /tmp/llama llama --dim 128 --layers 4
    import argparse

    from coconut_pytorch.data.tasks import get_task

    parser = argparse.ArgumentParser(description = 'Save a random causal LM and a BPE tokenizer trained on running sums (4 digits).')
    parser.add_argument('folder', type = Path)
    parser.add_argument('family', choices = ('gpt2', 'llama'))
    parser.add_argument('--dim', type = int, default = 64)
    parser.add_argument('--layers', type = int, default = 2)
    args = parser.parse_args()
    texts = [text for example in get_task('running_sum').generate(500, seed = 0) for text in (example.question, *example.steps, example.answer)]
    print(save_tiny_model(args.folder, texts, args.family, dim = args.dim, layers = args.layers))
