"""Decoding steps captured as CUDA graphs.

A generated token (or a thought, or the <eot> marker) is a forward pass over one or a few positions: on a GPU its
time goes to launching hundreds of small kernels (attention, feedforward, hyper-connection mixing per layer), not to
computing them. Against a `StaticKVCache` every such step has fixed shapes and buffer addresses, so it is captured
once as a CUDA graph and replayed: one launch per step instead of hundreds.

`DecodeGraphs` captures a backbone's `forward_static` against one static cache; `coconut_pytorch.generation` keeps
the two side by side and replays a graph for every step after the prefill. Graphs are captured per number of new
positions and per autocast state.

A replay still runs every kernel of the step, one after another: with hundreds of tiny kernels that costs ~1.5 ms
a step at config A's size. `compile_steps` captures `torch.compile`d steps instead, whose fused kernels are far fewer.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor

from coconut_pytorch.kv_cache import StaticKVCache
from coconut_pytorch.transformer import autocast_dtype
from coconut_pytorch.helpers import exists


class DecodeGraphs:
    """CUDA graphs of a backbone's `forward_static` against one static cache.

    Args:
        transformer: the backbone (`coconut_pytorch.backbone.Backbone`) whose steps are captured.
        cache: the `StaticKVCache` they read and write; the graphs are valid for its buffers only.
        warmup: eager runs before each capture (lazy initialisation inside kernels must not happen during capture).
        compile_steps: capture `torch.compile`d steps: fused kernels, so a replay runs far fewer of them. Each step
            shape compiles once, at its first capture (tens of seconds); dynamo's recompile limit applies, past
            which steps are captured uncompiled.
    """

    def __init__(self, transformer, cache: StaticKVCache, warmup: int = 2, compile_steps: bool = False):
        self.cache = cache
        self.warmup = warmup
        # the cache's host-side length is a Python int the compiled step specialises on; each shape is captured
        # once, at one length, so that costs one compile per shape
        self.run_step = torch.compile(transformer.forward_static, dynamic = False) if compile_steps else transformer.forward_static
        self.pool = None
        self.captured: dict[tuple, tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor]] = {}

    def step(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x (b, n, D) through the transformer against the cache, by replaying a graph; returns hiddens (b, n, D)."""
        num_new = x.shape[1]
        self.cache.check_room(num_new)

        # a graph bakes in the compute dtype it was captured under (None: autocast off)
        key = (num_new, x.dtype, autocast_dtype(x.device.type, default = None))
        if key not in self.captured:
            self.captured[key] = self.capture(x)

        graph, static_x, static_mask, static_hiddens = self.captured[key]
        static_x.copy_(x)
        if exists(mask):
            static_mask.copy_(mask)
        else:
            static_mask.fill_(True)

        graph.replay()
        self.cache.length += num_new
        # the output buffer is overwritten by the next replay; callers keep thoughts across steps
        return static_hiddens.clone()

    def capture(self, x: Tensor) -> tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor]:
        cache = self.cache
        static_x = torch.zeros_like(x)
        static_mask = torch.ones(x.shape[:2], dtype = torch.bool, device = x.device)

        # warm-up and capture run the step, which writes the cache: put its state back after each
        state = cache.snapshot()

        # autocast caches its low-precision copies of the weights until its context exits: a graph that read those
        # copies would read freed memory in a later call, so under capture every cast happens inside the graph
        compute_dtype = autocast_dtype(x.device.type, default = None)
        casts = torch.autocast(x.device.type, dtype = compute_dtype, cache_enabled = False) if exists(compute_dtype) else nullcontext()

        side_stream = torch.cuda.Stream(device = x.device)
        side_stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side_stream), casts:
            for _ in range(self.warmup):
                self.run_step(static_x, static_mask, cache)
                cache.restore(state)
        torch.cuda.current_stream(x.device).wait_stream(side_stream)

        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool = self.pool), casts:
            static_hiddens = self.run_step(static_x, static_mask, cache)
        cache.restore(state)

        self.pool = graph.pool()
        return graph, static_x, static_mask, static_hiddens
