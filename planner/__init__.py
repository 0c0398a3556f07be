"""Choose the pipeline: cluster and job specs, the split MILP, the outer search, the Plan contract."""

from .cluster import PRESET_CLUSTERS, Cluster, Job, load_cluster, load_job, parse_bytes
from .given import score_split
from .plan import Plan, Prediction, StagePlan, load_plan
from .search import InfeasibleError, SearchStats, plan, search
from .splits import even_split, min_max_split

__all__ = [
    "PRESET_CLUSTERS",
    "Cluster",
    "Job",
    "load_cluster",
    "parse_bytes",
    "Plan",
    "Prediction",
    "StagePlan",
    "load_plan",
    "InfeasibleError",
    "even_split",
    "min_max_split",
    "plan",
    "score_split",
    "search",
    "SearchStats",
    "load_job",
]
