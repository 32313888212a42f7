"""synthcp3d.monailabel: what the MONAI Label app (``apps/synthcp_pancreas``) serves, without importing
MONAI Label itself — the alarm path behind a server (:mod:`~synthcp3d.monailabel.service`).

The app (``MONAILabelApp`` subclass and infer tasks) lives in ``apps/synthcp_pancreas`` and needs the
``synthcp3d[label]`` extra; this package works with the core install.
"""

from synthcp3d._lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__)
