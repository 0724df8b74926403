"""fairkv_hf: per-head variable-length KV cache, head budget policies and fair multi-GPU head placement.

Importing the package registers the "fairkv" attention implementation with transformers.
"""

from .attention import register as _register_attention
from .cache import FairKVCache, FairKVLayer
from .models import load_model
from .policies import (
    AdaPolicy,
    CakePolicy,
    DuoAttentionPolicy,
    FullPolicy,
    HeadBudgetPolicy,
    Policy,
    PyramidKVPolicy,
    SnapKVPolicy,
    get_policy,
)

_register_attention()

__all__ = ["AdaPolicy", "CakePolicy", "DuoAttentionPolicy", "FairKVCache", "FairKVLayer", "FullPolicy",
           "HeadBudgetPolicy", "Policy", "PyramidKVPolicy", "SnapKVPolicy", "get_policy", "load_model"]
