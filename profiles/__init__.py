"""Per-unit costs of models: the zoo, the profiler and the Profile contract (bottom floor)."""

from .contract import ContractError, write_json
from .types import Profile, ProfileEntry, UnitCost, WholeModel, load_profile
from .zoo import PRESETS, ZooError, ZooModel, build_model, parse_overrides


def profile_model(name: str, **kwargs) -> Profile:
    """Measure model ``name`` of the zoo; see :func:`profiles.measure.profile_model`."""
    from .measure import profile_model as _measure  # torch-heavy, loaded on demand

    return _measure(name, **kwargs)


__all__ = ["ContractError", "write_json", "Profile", "ProfileEntry", "UnitCost", "WholeModel",
           "load_profile", "profile_model", "PRESETS", "ZooError", "ZooModel", "build_model",
           "parse_overrides"]
