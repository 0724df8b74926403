"""Head-parallel multi-GPU execution of FairKV plans on torch.distributed (torchrun / accelerate launch).

layout.py: what a rank holds under a plan; slicing.py: weight slices; attention.py: the head-parallel attention
module; sharded.py: MLP and lm_head split; collectives.py: process group and sums; runtime.py: `prepare`.
"""

from .layout import RankHeadSet, RankLayout, check_plan, rank_layout
from .runtime import MLP_MODES, PLAN_NAMES, prepare, resolve_plan

__all__ = ["MLP_MODES", "PLAN_NAMES", "RankHeadSet", "RankLayout", "check_plan", "prepare", "rank_layout", "resolve_plan"]
