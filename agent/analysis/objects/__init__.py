"""Object detection on motion: a shared TFLite detector, motion crops, and an object tracker.

`interpreter` picks the TFLite package, `model` loads and decodes a model (SSD or YOLO),
`regions` turns motion regions into crops, `service` runs one model for all cameras on one
worker thread, `tracker` turns detections into `object` events and `stage` plugs both into a
camera pipeline.
"""

from agent.analysis.objects.interpreter import BACKENDS, interpreter_class, make_interpreter
from agent.analysis.objects.model import DEFAULT_LABELS, DEFAULT_MODEL, Detection, DetectionModel, load_labels
from agent.analysis.objects.regions import Crop, extract, plan_crops
from agent.analysis.objects.service import (
    DetectionResult,
    DetectionService,
    DetectionStats,
    build_detection_service,
)
from agent.analysis.objects.stage import ObjectStage
from agent.analysis.objects.tracker import ObjectTracker

__all__ = [
    "BACKENDS",
    "DEFAULT_LABELS",
    "DEFAULT_MODEL",
    "Crop",
    "Detection",
    "DetectionModel",
    "DetectionResult",
    "DetectionService",
    "DetectionStats",
    "ObjectStage",
    "ObjectTracker",
    "build_detection_service",
    "extract",
    "interpreter_class",
    "load_labels",
    "make_interpreter",
    "plan_crops",
]
