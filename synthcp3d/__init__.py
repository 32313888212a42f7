"""synthcp3d: SynthCP (Synthesize then Compare) failure and anomaly detection for segmentation.

Subpackages: ``data`` (phantoms, dataset loaders), ``networks``, ``losses``, ``metrics``,
``alarms``, ``engines`` and ``reports``.
"""

__version__ = "0.1.0"
