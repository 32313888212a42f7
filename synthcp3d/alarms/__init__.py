"""synthcp3d.alarms (submodules are imported on first access)."""

from synthcp3d._lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__)
