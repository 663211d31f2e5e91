"""Checks of the detector's files that need no interpreter, for `edge-agent check-config`.

The Ansible role validates a rendered config with check-config before it replaces a working
one, so a missing model, a label map that cannot be read or a camera asking for a label the
model does not know must fail there, not later as "object detection disabled" at run time.
"""

from __future__ import annotations

from agent.analysis.objects.interpreter import check_model_file
from agent.analysis.objects.model import DEFAULT_LABELS, DEFAULT_MODEL, load_labels
from agent.config import AgentConfig, DetectorConfig
from agent.errors import ModelError


def detector_problems(cfg: AgentConfig) -> list[str]:
    """One line per problem, naming the key; empty when no camera enables detection."""
    enabled = [cam for cam in cfg.cameras if cam.detection.enabled]
    if not enabled:
        return []
    det = cfg.detector or DetectorConfig()
    problems: list[str] = []
    try:
        check_model_file(det.model_path or DEFAULT_MODEL)
    except ModelError as exc:
        problems.append(f"detector.model_path: {exc.path}: {exc.reason}")
    try:
        known = {label for label in load_labels(det.labels_path or DEFAULT_LABELS) if label}
    except ModelError as exc:
        problems.append(f"detector.labels_path: {exc.path}: {exc.reason}")
        return problems
    for index, cam in enumerate(cfg.cameras):
        if not cam.detection.enabled:
            continue
        unknown = [label for label in cam.detection.labels if label not in known]
        if unknown:
            names = ", ".join(map(repr, unknown))
            problems.append(f"cameras[{index}].detection.labels: {names} not in the model's label map")
    return problems
