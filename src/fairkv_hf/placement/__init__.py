"""FairKV placement: head load profiles, cost model, best-effort assignment, Fair-Copying, bounds, plans."""

from fairkv_hf.placement.converters import from_duoattention, from_headkv, shared_profiles
from fairkv_hf.placement.cost import CostModel, GpuLoads
from fairkv_hf.placement.plans import Placement, Plan, batch_rows, make_plan, standard_tp_loads
from fairkv_hf.placement.profile import HeadLoadProfile

__all__ = [
    "CostModel",
    "GpuLoads",
    "HeadLoadProfile",
    "Placement",
    "Plan",
    "batch_rows",
    "from_duoattention",
    "from_headkv",
    "make_plan",
    "shared_profiles",
    "standard_tp_loads",
]
