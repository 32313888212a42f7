"""synthcp3d: SynthCP (Synthesize then Compare) failure and anomaly detection for segmentation.

Subpackages (imported on first access): ``data`` (phantoms, dataset loaders), ``networks``, ``losses``,
``metrics``, ``alarms``, ``engines`` and ``reports``.
"""

from synthcp3d._lazy import lazy_submodules

__version__ = "0.1.0"
__getattr__ = lazy_submodules(__name__)
