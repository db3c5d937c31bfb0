"""Generation over Hugging Face backbones writes into a preallocated cache (`coconut_pytorch.hf.HFStaticCache`), in
place, with steps that can be captured as CUDA graphs: each step equals the segment path on padded batches (sliding
windows narrower than the sequence included), is the same computation at every length, reads nothing from the host,
and on a GPU, generation replaying captured steps equals generation without graphs.

The families, their tiny float64 models and tolerances are those of test_backbone_equivalence.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from coconut_pytorch import Coconut
from test_backbone_equivalence import BACKBONES, TOLERANCE, VOCAB

HF = [name for name in BACKBONES if name.startswith('hf-')]

# a padded batch of 3 rows run in steps of these sizes (17 columns, past the tiny models' window of 4): padding at
# the front of a row, in the middle, a row with no real position in a step, and steps with no padding at all (None)
STEPS = [
    torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [1, 0, 1, 1, 0]]),
    None,
    torch.tensor([[1, 0, 1], [1, 1, 1], [0, 0, 0]]),
    torch.tensor([[1], [0], [1]]),
    None,
    torch.tensor([[0, 1, 1, 1], [1, 1, 0, 1], [1, 1, 1, 1]]),
]
CAPACITY = 20   # more than the 17 columns: unwritten columns stay behind every step


def backbone(name):
    torch.manual_seed(0)
    return BACKBONES[name]().double().eval()


def steps():
    """(inputs (3, n) ids, mask (3, n) bool or None) per step, the same every call."""
    generator = torch.Generator().manual_seed(1)
    for mask in STEPS:
        length = mask.shape[1] if mask is not None else 2
        yield torch.randint(0, VOCAB, (3, length), generator = generator), mask.bool() if mask is not None else None


@pytest.mark.parametrize('name', HF)
def test_hf_generation_decodes_into_a_preallocated_cache_written_in_place(name, monkeypatch):
    # the equivalence proofs (greedy generation == teacher-forced argmax, and the rest) go through this cache once
    # generation asks for the backbone's static cache: it is an HFStaticCache, and generation writes through it
    from coconut_pytorch.hf import BufferCache, HFStaticCache
    model = Coconut(transformer = backbone(name), num_reasoning_steps = 2).double().eval()
    assert isinstance(model.model.static_cache(2, 8), HFStaticCache) and model.model.graph_capturable

    writes = []
    update = BufferCache.update
    monkeypatch.setattr(BufferCache, 'update', lambda self, *args, **kwargs: writes.append(type(self.cache)) or update(self, *args, **kwargs))
    model.generate([torch.randint(0, VOCAB, (n,)) for n in (4, 7)], max_length = 3, temperature = 0.)
    # 2 thoughts, then <eot>, then 2 tokens after the first: 4 steps after the prompt, through each of 2 layers
    assert writes == [HFStaticCache] * 4 * 2


@pytest.mark.parametrize('start', ['prefill', 'load'])
@pytest.mark.parametrize('name', HF)
def test_static_steps_equal_the_segment_path_and_each_row_alone_on_padded_batches(name, start):
    model = backbone(name)
    static = model.static_cache(3, CAPACITY)
    segment = None
    real_ids, real_hiddens = [[] for _ in range(3)], [[] for _ in range(3)]

    with torch.no_grad():
        for index, (ids, mask) in enumerate(steps()):
            expected, segment = model.forward_with_cache(ids, mask = mask, cache = segment)
            hiddens = expected
            if start == 'load' and index < 2:
                # the static cache takes over a segment cache (what generation does after several hypotheses)
                static.load(segment)
            else:
                hiddens, returned = model.forward_with_cache(ids, mask = mask, cache = static)
                assert returned is static
                torch.testing.assert_close(hiddens, expected, atol = TOLERANCE[name], rtol = 0)
            for row in range(3):
                real = mask[row] if mask is not None else slice(None)
                real_ids[row].append(ids[row, real])
                real_hiddens[row].append(hiddens[row, real])

        # and each row's real positions are what its real tokens give alone, in one pass without padding, where the
        # masks (and a window that reaches back 4 of its 8 to 12 tokens) are transformers' own
        for row in range(3):
            alone = model.forward_with_cache(torch.cat(real_ids[row])[None]).hiddens[0]
            torch.testing.assert_close(torch.cat(real_hiddens[row]), alone, atol = TOLERANCE[name], rtol = 0)

    length = segment.length
    assert static.length == length == 17 and int(static.write_index) == length
    assert torch.equal(static.key_mask[:, :length], segment.key_mask) and not static.key_mask[:, length:].any()
    assert torch.equal(static.next_position, segment.next_position)
    for (keys, values), static_keys, static_values in zip(segment.layers, static.keys, static.values):
        torch.testing.assert_close(static_keys[:, :, :length], keys, atol = TOLERANCE[name], rtol = 0)
        torch.testing.assert_close(static_values[:, :, :length], values, atol = TOLERANCE[name], rtol = 0)
        assert not static_keys[:, :, length:].any() and not static_values[:, :, length:].any()


# what reads a tensor's value on the host (on a GPU: a sync, which stops a CUDA graph capture) or makes a shape out of
# one: `.item()`, `bool()`, `int()` all go through _local_scalar_dense
HOST_READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.equal.default, torch.ops.aten.is_nonzero.default}


class Trace(TorchDispatchMode):
    """Every op a computation runs, with the shapes, dtypes and devices of its tensors and the value of every other
    argument: what a CUDA graph bakes in. Ops that read a tensor on the host go in `host_reads`."""

    def __init__(self):
        super().__init__()
        self.ops, self.host_reads = [], []

    def __torch_dispatch__(self, func, types, args = (), kwargs = None):
        kwargs = kwargs or {}
        leaves, _ = tree_flatten((args, kwargs))
        self.ops.append((str(func), tuple((tuple(leaf.shape), leaf.dtype, leaf.device) if torch.is_tensor(leaf) else leaf for leaf in leaves)))
        tags = getattr(func, 'tags', ())
        if func in HOST_READS or torch.Tag.data_dependent_output in tags or torch.Tag.dynamic_output_shape in tags:
            self.host_reads.append(str(func))
        return func(*args, **kwargs)


def traced_step(model, cache, ids, mask):
    with torch.no_grad(), Trace() as trace:
        hiddens = model.forward_static(model.embed(ids), mask, cache)
    return hiddens, trace


@pytest.mark.parametrize('name', HF)
def test_a_static_step_is_the_same_computation_at_every_length_and_reads_nothing_from_the_host(name):
    # DecodeGraphs captures a step once, at one length, and replays it at every later one: that is right only if the
    # step runs the same ops on the same shapes with the same constants whatever the cache holds (everything that
    # changes lives in device tensors), and never reads a tensor on the host (which a capture refuses). On a CPU
    # this checks both by tracing every op; test_cuda_graph_generation_equals_eager_generation captures for real.
    from coconut_pytorch.hf import GrowingCache
    model = backbone(name)
    ids, mask = torch.randint(0, VOCAB, (3, 2)), torch.tensor([[True, True], [False, True], [True, False]])

    traces, hiddens = {}, {}
    for make in ('static', 'growing'):
        cache = model.static_cache(3, CAPACITY) if make == 'static' else GrowingCache(model.empty_cache(3), CAPACITY)
        for index, (step_ids, step_mask) in enumerate(steps()):
            if index in (1, 4):
                # the same step after 5 and after 13 columns
                hiddens[make, index], traces[make, index] = traced_step(model, cache, ids, mask)
            if index == 4:
                break
            with torch.no_grad():
                model.forward_static(model.embed(step_ids), step_mask, cache)

    assert traces['static', 1].ops == traces['static', 4].ops
    assert traces['static', 1].host_reads == traces['static', 4].host_reads == []
    # the check can tell: the growing cache's step (not captured) attends over its length, so its shapes change
    assert traces['growing', 1].ops != traces['growing', 4].ops

    # and the host's count of columns written is not read: a step taken with it wrong computes the same
    cache = model.static_cache(3, CAPACITY)
    for index, (step_ids, step_mask) in enumerate(steps()):
        if index == 1:
            traced_step(model, cache, ids, mask)
        if index == 4:
            right = cache.length
            cache.length = CAPACITY - ids.shape[1]      # wrong, but leaving room for the step
            wrong, _ = traced_step(model, cache, ids, mask)
            assert cache.length == CAPACITY and int(cache.write_index) == right + ids.shape[1]
            torch.testing.assert_close(wrong, hiddens['static', 4], atol = 0, rtol = 0)
            break
        with torch.no_grad():
            model.forward_static(model.embed(step_ids), step_mask, cache)


def test_only_hf_backbones_whose_masks_it_builds_get_the_static_cache_and_graphs():
    transformers = pytest.importorskip('transformers')
    from coconut_pytorch.hf import GrowingCache, HFBackbone

    model = backbone('hf-llama')
    model.lm.config._attn_implementation = 'flash_attention_2'
    # transformers would build its own masks from a 2-D one (flash unpads by its contents): grown, not captured
    assert isinstance(model.static_cache(2, 8), GrowingCache) and not model.graph_capturable

    config = transformers.LlamaConfig(vocab_size = VOCAB, hidden_size = 32, intermediate_size = 64, num_hidden_layers = 1, num_attention_heads = 4,
                                      num_key_value_heads = 2, rope_scaling = {'rope_type': 'dynamic', 'factor': 2.})
    config._attn_implementation = 'sdpa'
    dynamic = HFBackbone(transformers.LlamaForCausalLM(config))
    # a dynamic rotary embedding compares positions on the host: preallocated, but run eagerly
    assert dynamic.rope_types == {'dynamic'} and not dynamic.graph_capturable


@pytest.mark.parametrize('autocast', [False, True], ids = ['float64', 'bf16-autocast'])
@pytest.mark.parametrize('name', HF)
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason = 'no CUDA GPU')
def test_cuda_graph_generation_equals_eager_generation(name, autocast):
    from coconut_pytorch.generation import decoders
    torch.manual_seed(0)
    model = Coconut(transformer = BACKBONES[name](), num_reasoning_steps = 2, num_latents_per_step = 2)
    model = (model.float() if autocast else model.double()).eval().cuda()
    assert model.model.graph_capturable
    prompts = [torch.randint(0, VOCAB, (n,)) for n in (4, 9, 6)]
    steps = torch.tensor([2, 0, 1])

    generated = {}
    for cuda_graph in (False, True):
        with torch.autocast('cuda', dtype = torch.bfloat16, enabled = autocast):
            generated[cuda_graph] = model.generate(prompts, max_length = 8, temperature = 0., num_reasoning_steps = steps, cuda_graph = cuda_graph)

    # the steps were replayed from graphs captured against the one cache kept
    kept = list(decoders(model).values())
    assert len(kept) == 1 and len(kept[0].graphs.captured) > 0
    assert torch.equal(generated[True], generated[False])

    # and the graphs, kept with their cache, serve a second call as the first (the cache reset, its graphs reused)
    with torch.autocast('cuda', dtype = torch.bfloat16, enabled = autocast):
        again = model.generate(prompts, max_length = 8, temperature = 0., num_reasoning_steps = steps, cuda_graph = True)
    assert torch.equal(again, generated[False])
    if not autocast:
        # float64: the graphs compute exactly what teacher forcing does
        logits = model(prompts, generated[True], return_loss = False, num_reasoning_steps = steps).answer_logits
        assert torch.equal(logits.argmax(dim = -1), generated[True])
