"""synthcp3d.data: phantoms, dataset loaders and transforms (submodules are imported on first access)."""

from synthcp3d._lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__)
