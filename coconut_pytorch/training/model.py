"""The run's model, built from its settings: the native Transformer of the configured shape, or a pretrained
`transformers` model behind `hf.HFBackbone`; and what a checkpoint keeps to rebuild the latter without its folder.
"""

from __future__ import annotations

import torch

from coconut_pytorch.coconut import Coconut
from coconut_pytorch.training.config import TrainConfig
from coconut_pytorch.training.schedule import Curriculum


def build_model(config: TrainConfig, num_tokens: int, curriculum: Curriculum, backbone_config: dict | None = None) -> Coconut:
    """The run's model. With `config.hf_model`: the pretrained model read from it (in float32: AdamW's updates are
    lost in bf16 weights), or, with `backbone_config` (a checkpoint's), that architecture with fresh weights to load
    a checkpoint into, without the original folder."""
    torch.manual_seed(config.seed)
    if config.hf_model is not None:
        from coconut_pytorch.hf import HFBackbone, causal_lm_from_config, load_causal_lm
        lm = causal_lm_from_config(backbone_config) if backbone_config is not None else load_causal_lm(config.hf_model, download = config.download)
        transformer = HFBackbone(lm.float())
    else:
        transformer = dict(
            num_tokens = num_tokens,
            dim = config.dim,
            depth = config.depth,
            heads = config.heads,
            dim_head = config.dim_head,
            num_residual_streams = config.num_residual_streams,
            ff_dim_inner = config.ff_dim_inner
        )
    return Coconut(
        num_reasoning_steps = 0,
        num_latents_per_step = 1,   # thoughts come one per position, as in the paper; the curriculum counts them
        transformer = transformer,
        checkpoint = config.checkpoint,
        thought_mode = curriculum.thought_mode,
        thought_loss_weight = config.thought_loss,
        align_mse_weight = config.align_mse,
        align_cosine_weight = config.align_cosine,
        thought_rms_match = config.thought_rms_match,
        halt_loss_weight = config.halt_loss,
        thought_token_heads = config.thought_tokens_per_thought(),
        thought_token_loss_weight = config.thought_token_loss
    )


def backbone_config(model: Coconut) -> dict | None:
    """What a checkpoint needs to rebuild a pretrained backbone's architecture: its transformers config, as plain
    data (None for the native Transformer, which the run's configuration describes)."""
    lm = getattr(model.model, 'lm', None)
    return lm.config.to_dict() if lm is not None else None
