"""The infer task: the pancreas bundle's alarm path (segment, synthesize, compare, VAE, ensemble) for one image.

One class serves both models of the app: ``output="segmentation"`` returns the uint8 label map, ``"error_map"``
the SynthCP error map (uint8 levels by default, float32 probabilities with the request parameter
``{"heatmap": true}``). Both return the same JSON: predicted Dice per method and class, conformal interval,
review flag and message. The work is :class:`synthcp3d.monailabel.service.AlarmService`'s; this class only
adapts it to MONAI Label's ``InferTask`` interface (request in, (file, JSON) out).
"""

from __future__ import annotations

import tempfile
from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from synthcp3d.monailabel.service import ERROR_LEVELS, LABELS, AlarmService

OUTPUTS = {
    "segmentation": (LABELS, "Pancreas and tumour segmentation with the SynthCP alarm: predicted Dice (SynthCP, "
                             "VAE, Direct Prediction, ensemble), conformal interval and review flag in the JSON"),
    "error_map": (ERROR_LEVELS, "SynthCP voxel error map of the pancreas segmentation (levels of the error "
                                "probability; params {\"heatmap\": true} for float32 probabilities), same JSON"),
}  # fmt: skip


class SynthCPAlarm(InferTask):
    """MONAI Label infer task over an :class:`AlarmService` (None: models missing, the task is not listed)."""

    def __init__(self, service: AlarmService | None, output: str = "segmentation"):
        labels, description = OUTPUTS[output]
        super().__init__(type=InferType.SEGMENTATION, labels=labels, dimension=3, description=description,
                         config={"heatmap": False})  # fmt: skip
        self.service = service
        self.output = output

    def is_valid(self) -> bool:
        return self.service is not None

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict]:
        kind = self.output
        if kind == "error_map" and not _true(request.get("heatmap")):
            kind = "error_levels"
        # MONAI Label deletes the returned file after sending it: hand over a copy, keep the cached result
        with tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False) as f:
            path = f.name
        result = self.service.alarm(request["image"], kind, path, label=request.get("label"))
        params = {**result["summary"], "output": kind, "label_names": self.labels, "profile": self.service.profile,
                  "seconds": round(result["seconds"], 3), "cached": result["cached"]}  # fmt: skip
        return str(path), params


def _true(value: Any) -> bool:
    return value is True or str(value).lower() in ("1", "true", "yes")
