"""The float64 proofs every backbone gets: cached recurrence == full recompute, padded batch == each example alone,
per-row step counts, greedy generation == teacher-forced argmax, checkpointed == plain gradients.

Each backbone is a factory in BACKBONES; a new backbone gets every test by adding one. Hugging Face models are tiny
random ones built from configs (no network); they run only where `transformers` is installed (the `[hf]` extra).
"""

import pytest
import torch

from coconut_pytorch import Coconut, Transformer
from test_coconut import naive_answer_logits   # the reference: every thought step recomputes the whole sequence

VOCAB = 40


def native():
    return Transformer(num_tokens = VOCAB, dim = 32, depth = 2, heads = 2, dim_head = 16, num_residual_streams = 2)


def hf(family: str):
    def build():
        transformers = pytest.importorskip('transformers')
        from coconut_pytorch.hf import HFBackbone
        if family == 'gpt2':
            config = transformers.GPT2Config(vocab_size = VOCAB, n_embd = 32, n_layer = 2, n_head = 2, n_positions = 128,
                                             bos_token_id = 0, eos_token_id = 0)
            model = transformers.GPT2LMHeadModel(config)
        elif family == 'llama':
            config = transformers.LlamaConfig(vocab_size = VOCAB, hidden_size = 32, intermediate_size = 64, num_hidden_layers = 2,
                                              num_attention_heads = 4, num_key_value_heads = 2, max_position_embeddings = 128,
                                              bos_token_id = 0, eos_token_id = 0, pad_token_id = None)
            model = transformers.LlamaForCausalLM(config)
        elif family == 'qwen2':
            config = transformers.Qwen2Config(vocab_size = VOCAB, hidden_size = 32, intermediate_size = 64, num_hidden_layers = 2,
                                              num_attention_heads = 4, num_key_value_heads = 2, max_position_embeddings = 128,
                                              bos_token_id = 0, eos_token_id = 0)
            model = transformers.Qwen2ForCausalLM(config)
        elif family == 'gemma2':
            # a window of 4 real tokens, narrower than the tests' sequences, on the first layer; logit softcapping on
            config = transformers.Gemma2Config(vocab_size = VOCAB, hidden_size = 32, intermediate_size = 64, num_hidden_layers = 2,
                                               num_attention_heads = 4, num_key_value_heads = 2, head_dim = 8, max_position_embeddings = 128,
                                               sliding_window = 4, layer_types = ['sliding_attention', 'full_attention'],
                                               bos_token_id = 0, eos_token_id = 0, pad_token_id = None)
            model = transformers.Gemma2ForCausalLM(config)
        elif family == 'mistral':
            # every layer slides, over 4 real tokens
            config = transformers.MistralConfig(vocab_size = VOCAB, hidden_size = 32, intermediate_size = 64, num_hidden_layers = 2,
                                                num_attention_heads = 4, num_key_value_heads = 2, head_dim = 8, max_position_embeddings = 128,
                                                sliding_window = 4, bos_token_id = 0, eos_token_id = 0, pad_token_id = None)
            model = transformers.MistralForCausalLM(config)
        # SDPA (its math kernel on the CPU) computes in float64, where eager attention takes its softmax in float32;
        # Gemma-2 needs eager, as SDPA cannot cap attention logits
        model.config._attn_implementation = 'eager' if family == 'gemma2' else 'sdpa'
        return HFBackbone(model)
    return build


BACKBONES = {'native': native, 'hf-gpt2': hf('gpt2'), 'hf-llama': hf('llama'), 'hf-qwen2': hf('qwen2'), 'hf-gemma2': hf('gemma2'),
             'hf-mistral': hf('mistral')}

# how close two float64 computations of the same thing come: Llama, Qwen2, Gemma-2 and Mistral in transformers compute
# their rotary angles in float32 even in a float64 model (as a matrix product whose rounding depends on its shape),
# and Gemma-2's eager attention its softmax, which leave differences near 1e-8; a wrong position or mask moves logits
# by far more than this
TOLERANCE = {'native': 1e-10, 'hf-gpt2': 1e-10, 'hf-llama': 1e-6, 'hf-qwen2': 1e-6, 'hf-gemma2': 1e-6, 'hf-mistral': 1e-6}


# every proof runs on the CPU, and again on a GPU where there is one (float64 there too: the same tolerances)
ON_CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason = 'no CUDA GPU')]


@pytest.fixture(params = [pytest.param((name, device), id = f'{name}-{device}', marks = ON_CUDA if device == 'cuda' else ())
                          for name in BACKBONES for device in ('cpu', 'cuda')])
def make(request):
    """make(**coconut_kwargs) -> a float64 Coconut in eval mode over the parametrised backbone, on the parametrised
    device (inputs made on the CPU are moved by the model's own input handling)."""
    name, device = request.param
    def build(**kwargs):
        build.atol = TOLERANCE[name]
        torch.manual_seed(0)
        backbone = BACKBONES[name]()
        return Coconut(transformer = backbone, **{'num_reasoning_steps': 2, **kwargs}).double().eval().to(device)
    return build


@pytest.mark.parametrize('num_steps', [0, 3])
def test_cached_recurrence_equals_full_recompute(make, num_steps):
    model = make(num_latents_per_step = 2)
    # on the model's device: the reference indexes its embeddings directly
    prompt, answer = torch.randint(0, VOCAB, (2, 6), device = model.device), torch.randint(0, VOCAB, (2, 4), device = model.device)
    cached = model(prompt, answer, return_loss = False, num_reasoning_steps = num_steps).answer_logits
    torch.testing.assert_close(cached, naive_answer_logits(model, prompt, answer, num_steps), atol = make.atol, rtol = 0)


def test_a_padded_batch_with_its_own_steps_per_row_equals_each_example_alone(make):
    model = make(num_latents_per_step = 2)
    prompts = [torch.randint(0, VOCAB, (n,)) for n in (3, 8, 5)]
    answers = [torch.randint(0, VOCAB, (n,)) for n in (4, 2, 3)]
    steps = torch.tensor([2, 0, 1])

    batched = model(prompts, answers, return_loss = False, num_reasoning_steps = steps).answer_logits
    for row, (prompt, answer) in enumerate(zip(prompts, answers)):
        alone = model(prompt[None], answer[None], return_loss = False, num_reasoning_steps = int(steps[row])).answer_logits
        torch.testing.assert_close(batched[row, :len(answer)], alone[0], atol = make.atol, rtol = 0)


def test_greedy_generation_equals_the_teacher_forced_argmax(make):
    model = make(num_latents_per_step = 1)
    prompts = [torch.randint(0, VOCAB, (n,)) for n in (4, 7)]
    steps = torch.tensor([2, 1])
    generated = model.generate(prompts, max_length = 6, temperature = 0., num_reasoning_steps = steps)
    # answer_logits[:, i] predicts answer token i (the first from <eot>)
    logits = model(prompts, generated, return_loss = False, num_reasoning_steps = steps).answer_logits
    assert torch.equal(logits.argmax(dim = -1), generated)


def test_hypotheses_generate_greedily_and_a_padded_batch_equals_each_example_alone(make):
    model = make(num_latents_per_step = 2, num_hypotheses = 2)
    prompts = [torch.randint(0, VOCAB, (n,)) for n in (3, 7)]
    if 'sliding_attention' in getattr(model.model, 'layer_types', ()):
        with pytest.raises(NotImplementedError, match = 'sliding-window'):
            model.generate(prompts, max_length = 5, temperature = 0.)
        return

    generated = model.generate(prompts, max_length = 5, temperature = 0.)
    out = model(prompts, generated, return_loss = False)
    assert torch.equal(out.answer_logits.argmax(dim = -1), generated)
    for index, prompt in enumerate(prompts):
        alone = model(prompt[None], generated[index:index + 1], return_loss = False).answer_logits
        torch.testing.assert_close(out.answer_logits[index], alone[0], atol = make.atol, rtol = 0)
    # each stream starts from its own <bot>, so the two think apart
    assert (out.latent_tokens[:, 0] - out.latent_tokens[:, 1]).abs().amax() > 1e-6


def test_checkpointed_gradients_equal_plain_ones(make):
    grads = []
    for checkpoint in (False, True):
        model = make(checkpoint = checkpoint, num_latents_per_step = 2).train()
        prompt, answer = torch.randint(0, VOCAB, (2, 5), generator = torch.Generator().manual_seed(1)), torch.randint(0, VOCAB, (2, 3), generator = torch.Generator().manual_seed(2))
        model(prompt, answer, num_reasoning_steps = torch.tensor([2, 1])).backward()
        grads.append([p.grad for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain, atol = 1e-12, rtol = 0)  # the same computation twice


@pytest.mark.parametrize('name', [name for name in BACKBONES if name.startswith('hf-')])
def test_without_padding_a_hf_backbone_computes_what_its_model_does(name):
    # the tests above compare HFBackbone with itself (padded rows, whose masks it builds, with rows alone, whose masks
    # transformers builds); this pins it to the model's own forward from token ids: its embedding (Gemma-2 scales it),
    # its positions, and a sliding window that reaches back into the cache
    torch.manual_seed(0)
    backbone = BACKBONES[name]().double().eval()
    ids = torch.randint(0, VOCAB, (2, 11))
    first = backbone.forward_with_cache(ids[:, :7])
    hiddens = torch.cat((first.hiddens, backbone.forward_with_cache(ids[:, 7:], cache = first.cache).hiddens), dim = 1)
    torch.testing.assert_close(hiddens, backbone.lm.base_model(ids).last_hidden_state, atol = TOLERANCE[name], rtol = 0)
    torch.testing.assert_close(backbone.to_logits(hiddens), backbone.lm(ids).logits, atol = TOLERANCE[name], rtol = 0)


def test_from_hf_reads_a_saved_model_and_never_downloads_unasked(tmp_path):
    transformers = pytest.importorskip('transformers')
    config = transformers.GPT2Config(vocab_size = VOCAB, n_embd = 32, n_layer = 1, n_head = 2, n_positions = 64, bos_token_id = 0, eos_token_id = 0)
    torch.manual_seed(0)
    saved = transformers.GPT2LMHeadModel(config)
    saved.save_pretrained(tmp_path / 'tiny')

    model = Coconut.from_hf(tmp_path / 'tiny', num_reasoning_steps = 2)
    prompt = torch.randint(0, VOCAB, (1, 5))
    assert model.generate(prompt, max_length = 3, temperature = 0.).shape == (1, 3)
    torch.testing.assert_close(model.model.lm.get_input_embeddings().weight, saved.get_input_embeddings().weight)

    with pytest.raises(ValueError, match = 'download = True'):
        Coconut.from_hf('no-such-org/no-such-model-here')
    with pytest.raises(TypeError, match = 'model_or_path'):
        Coconut.from_hf(3)
