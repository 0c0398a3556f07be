"""Per-unit costs of models: the zoo, the profiler and the Profile contract (bottom floor).

The contract types load without torch; the zoo and the profiler (torch, transformers)
load on first use, so ``import simulator`` or ``import planner`` stays light.
"""

from importlib import import_module

from .contract import ContractError, UserError, write_json
from .types import Profile, ProfileEntry, UnitCost, UnitKind, WholeModel, load_profile

_LAZY = {"PRESETS": ".zoo", "ZooError": ".zoo", "ZooModel": ".zoo", "build_model": ".zoo", "parse_overrides": ".zoo"}


def profile_model(name: str, **kwargs) -> Profile:
    """Measure model ``name`` of the zoo; see :func:`profiles.measure.profile_model`."""
    from .measure import profile_model as _measure  # torch-heavy, loaded on demand

    return _measure(name, **kwargs)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'profiles' has no attribute {name!r}")


__all__ = [
    "ContractError",
    "UserError",
    "write_json",
    "Profile",
    "ProfileEntry",
    "UnitCost",
    "UnitKind",
    "WholeModel",
    "load_profile",
    "profile_model",
    "PRESETS",
    "ZooError",
    "ZooModel",
    "build_model",
    "parse_overrides",
]
