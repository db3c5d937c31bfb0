"""coconut-pytorch: Chain of Continuous Thought (Coconut) in PyTorch, with a Transformer of its own."""

from coconut_pytorch.coconut import Coconut, Intermediates, LossBreakdown
from coconut_pytorch.kv_cache import KVCache
from coconut_pytorch.sampling import min_p_filter, top_k_filter
from coconut_pytorch.transformer import Transformer

__all__ = ['Coconut', 'Transformer', 'KVCache', 'Intermediates', 'LossBreakdown', 'min_p_filter', 'top_k_filter']
