"""MONAI Label app: the synthcp3d pancreas segmentation served with its SynthCP alarm.

    monailabel start_server --app apps/synthcp_pancreas --studies STUDIES --conf models synthcp_pancreas \
        --conf models_dir runs/demo/models

Models (``POST /infer/<model>?image=<id>``):

* ``synthcp_pancreas`` — the segmentation (uint8 NIfTI: 1 pancreas, 2 tumour, the input's grid);
* ``synthcp_pancreas_error`` — the SynthCP voxel error map of that segmentation (levels, or float32 with
  ``params={"heatmap": true}``).

Both return the same JSON: per-class predicted Dice of SynthCP, the VAE alarm, Direct Prediction and their
ensemble, the ensemble's conformal interval, the review flag and a one-line message.

To judge a segmentation made elsewhere (nnU-Net, a MONAI zoo bundle, a clinician's edit), send it as the
request's ``label`` file, or name the datastore's label with ``params={"label_tag": "final"}``: the alarm is then
about that label map (returned as the segmentation), not about the app's own; ``"segmentation": "client label"``
in the JSON says so. A label on another grid or with values outside 0/1/2 is answered with 422 naming the problem.

``--conf`` keys: ``models`` (``synthcp_pancreas`` or ``all``), ``models_dir`` (default: the bundle's
``models/``, written by its ``export_models`` config; ``make demo`` writes ``runs/demo/models``), ``bundle``
(default: the repository's ``bundles/pancreas_synthcp``), ``profile`` (default: the models' manifest),
``device`` (default: first GPU, else CPU). Without models the server starts, lists no model and answers
inference with 503 and the commands that produce them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fastapi import HTTPException
from lib.infers import SynthCPAlarm
from monailabel.interfaces.app import MONAILabelApp

from synthcp3d import __version__
from synthcp3d.data.io import DataError
from synthcp3d.monailabel.service import BUNDLE_ROOT, LABELS, AlarmService

logger = logging.getLogger(__name__)

MODEL = "synthcp_pancreas"
MODELS = {MODEL: "segmentation", f"{MODEL}_error": "error_map"}


class SynthCPPancreasApp(MONAILabelApp):
    """The pancreas bundle's alarm path as MONAI Label infer tasks (no trainers: training is the bundle's)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        wanted = [m.strip() for m in conf.get("models", MODEL).split(",") if m.strip()]
        unknown = [m for m in wanted if m not in (MODEL, "all")]
        if unknown:
            raise ValueError(f"--conf models {','.join(unknown)}: unknown; this app serves {MODEL!r} (or 'all')")
        bundle = Path(conf.get("bundle", BUNDLE_ROOT))
        models_dir = Path(conf.get("models_dir", bundle / "models"))
        self.service: AlarmService | None = None
        self.unavailable = ""
        try:
            self.service = AlarmService(models_dir, bundle_root=bundle, profile=conf.get("profile"),
                                        device=conf.get("device"))  # fmt: skip
            logger.info("synthcp_pancreas: models %s (profile %s) on %s", models_dir, self.service.profile,
                        self.service.device)  # fmt: skip
        except FileNotFoundError as e:
            self.unavailable = str(e)
            logger.error("synthcp_pancreas serves no model: %s", e)
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="synthcp3d pancreas + SynthCP alarm",
                         description="Pancreas / tumour segmentation with predicted Dice, conformal interval and "
                                     "review flag (SynthCP, ECCV 2020)",
                         version=__version__, labels=LABELS)  # fmt: skip

    def init_infers(self):
        return {name: SynthCPAlarm(self.service, output) for name, output in MODELS.items()}

    def infer(self, request, datastore=None):
        """MONAI Label's ``infer`` with 4xx answers naming the problem (its own raise plain 500s)."""
        model = request.get("model")
        if model not in self._infers:
            raise HTTPException(404, f"unknown model {model!r}; this app serves {', '.join(MODELS)}")
        if self.service is None:
            raise HTTPException(503, f"model {model!r} is not available: {self.unavailable}")
        image = request.get("image")
        if not isinstance(image, str) or not image:
            raise HTTPException(400, "no image: pass ?image=<id> (GET /datastore/?output=all lists them) or a file")
        store = datastore or self.datastore()
        if not os.path.exists(image) and not store.get_image_uri(image):
            ids = sorted(store.list_images())
            raise HTTPException(404, f"unknown image {image!r}: the studies folder has {len(ids)} images "
                                     f"({', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''})")  # fmt: skip
        tag = request.get("label_tag")
        if tag and not request.get("label"):  # judge the label the datastore holds for this image
            uri = store.get_label_uri(image, tag)
            if not uri or not os.path.exists(uri):
                raise HTTPException(404, f"image {image!r} has no label tagged {tag!r} in the datastore: save one "
                                         "(PUT /datastore/label) or send the label file with the request")  # fmt: skip
            request["label"] = uri
        try:
            return super().infer(request, datastore)
        except DataError as e:
            raise HTTPException(422, f"image {image!r} cannot be processed: {e}") from e
