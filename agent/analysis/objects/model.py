"""A TFLite detection model: labels, input quantisation and output decoding (SSD and YOLO).

Decoding is done by pure functions over numpy arrays so that each layout can be checked on a
hand-built tensor; `DetectionModel` only wires them to an interpreter. Boxes leave this module
as `(x0, y0, x1, y1)` normalised to the model's input image.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import cv2
import numpy as np
import numpy.typing as npt

from agent.analysis.objects.interpreter import BACKENDS, Interpreter, TensorDetails, make_interpreter
from agent.capture.source import Image
from agent.config.base import read_small
from agent.errors import ModelError

MODELS_DIR = Path(__file__).resolve().parent / "vendored"
DEFAULT_MODEL = MODELS_DIR / "ssd_mobilenet_v1_coco_quant.tflite"
DEFAULT_LABELS = MODELS_DIR / "coco_labels.txt"

Layout = Literal["ssd", "yolo"]
FloatArray = npt.NDArray[np.float32]
XYXY = tuple[float, float, float, float]

# The float range each family was trained on: value = (pixel - mean) / std.
_NORMALISATION: dict[Layout, tuple[float, float]] = {"ssd": (127.5, 127.5), "yolo": (0.0, 255.0)}
_MAX_YOLO_DETECTIONS = 100
_ID_LABEL = re.compile(r"^\s*(\d+)[\s:,]+(.+?)\s*$")


@dataclass(frozen=True, slots=True)
class Detection:
    """One object found in a model input image."""

    class_id: int
    label: str
    score: float
    box: XYXY  # x0, y0, x1, y1 normalised to the model input


@dataclass(frozen=True, slots=True)
class Quant:
    """Affine quantisation of a tensor: real = (q - zero_point) * scale; scale 0 means float."""

    scale: float = 0.0
    zero_point: int = 0

    @classmethod
    def of(cls, details: TensorDetails) -> Quant:
        scale, zero_point = details.get("quantization", (0.0, 0))
        return cls(float(scale), int(zero_point))


def load_labels(path: Path) -> list[str | None]:
    """Read a label map: line N names class id N, or lines of `id name`. `???` marks a gap."""
    try:
        text = read_small(path).decode("utf-8")
    except OSError as exc:
        raise ModelError(str(path), f"cannot read labels: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ModelError(str(path), "labels file is not UTF-8 text") from None
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise ModelError(str(path), "labels file is empty")
    pairs = [_ID_LABEL.match(line) for line in lines if line]
    labels: list[str | None]
    if all(pairs):
        by_id = {int(m.group(1)): m.group(2) for m in pairs if m}
        labels = [by_id.get(i) for i in range(max(by_id) + 1)]
    else:
        labels = list(lines)
    return [None if not name or name == "???" else name for name in labels]


def input_lut(dtype: np.dtype[Any], quant: Quant, mean: float, std: float) -> npt.NDArray[Any]:
    """Map each pixel value 0..255 to what the input tensor wants, honouring its quantisation."""
    real = (np.arange(256, dtype=np.float64) - mean) / std
    if dtype == np.float32:
        return real.astype(np.float32)
    if dtype not in (np.uint8, np.int8):
        raise ValueError(f"unsupported input tensor type {dtype}")
    if quant.scale <= 0:
        # Unquantised integer input: raw pixels, shifted into int8's range if need be.
        raw = np.arange(256, dtype=np.int16)
        return (raw - 128 if dtype == np.int8 else raw).astype(dtype)
    info = np.iinfo(dtype)
    q = np.round(real / quant.scale + quant.zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantise(values: npt.NDArray[Any], quant: Quant) -> FloatArray:
    """Real values of an output tensor (a float tensor passes through)."""
    if quant.scale <= 0 or values.dtype.kind == "f":
        return values.astype(np.float32, copy=False)
    return ((values.astype(np.float32) - quant.zero_point) * quant.scale).astype(np.float32)


def decode_ssd(
    boxes: FloatArray, classes: FloatArray, scores: FloatArray, count: FloatArray, min_score: float
) -> list[tuple[int, float, XYXY]]:
    """Decode TFLite_Detection_PostProcess outputs: boxes [1,N,4] as ymin,xmin,ymax,xmax."""
    n = min(int(np.asarray(count).reshape(-1)[0]), boxes.shape[1], classes.shape[1], scores.shape[1])
    found: list[tuple[int, float, XYXY]] = []
    for i in range(max(n, 0)):
        score = float(scores[0, i])
        if score < min_score:
            continue
        y0, x0, y1, x1 = np.clip(boxes[0, i], 0.0, 1.0).tolist()
        if x1 > x0 and y1 > y0:
            found.append((round(float(classes[0, i])), score, (x0, y0, x1, y1)))
    return found


def yolo_geometry(shape: Sequence[int], num_labels: int) -> tuple[bool, bool, int]:
    """(channels_first, has_objectness, classes) for a raw YOLO output of `shape`.

    YOLOv5 exports [1, N, 5+C] (objectness then class scores); YOLOv8 exports [1, 4+C, N]
    (class scores only). The feature axis is the one whose length fits the labels (4+C or 5+C),
    else the shorter one (N is in the thousands); a length of 5+C means objectness, 4+C none,
    and an unmatched length follows the usual export: objectness with channels last.
    """
    if len(shape) != 3 or shape[0] != 1:
        raise ValueError(f"a YOLO output must be [1, N, F] or [1, F, N], got {list(shape)}")
    fits = [n - num_labels in (4, 5) for n in (shape[1], shape[2])]
    channels_first = fits[0] if fits[0] != fits[1] else shape[1] < shape[2]
    features = shape[1] if channels_first else shape[2]
    has_obj = features - num_labels == 5 if features - num_labels in (4, 5) else not channels_first
    classes = features - (5 if has_obj else 4)
    if classes < 1:
        raise ValueError(
            f"a YOLO output needs 4 box values, [objectness] and class scores per box; got {features} values"
        )
    return channels_first, has_obj, classes


def decode_yolo(
    raw: FloatArray,
    *,
    num_labels: int,
    input_size: tuple[int, int],
    min_score: float,
    iou_threshold: float,
) -> list[tuple[int, float, XYXY]]:
    """Decode a raw YOLO output (cx, cy, w, h, [objectness], class scores...) and apply NMS.

    Coordinates may be normalised or in input pixels (exports differ); pixels are recognised
    by values above 1.5 and divided by the input size.
    """
    channels_first, has_obj, classes = yolo_geometry(raw.shape, num_labels)
    rows = raw[0].T if channels_first else raw[0]
    class_scores = rows[:, 5 : 5 + classes] if has_obj else rows[:, 4 : 4 + classes]
    class_ids = np.argmax(class_scores, axis=1)
    best = class_scores[np.arange(len(rows)), class_ids]
    scores = best * rows[:, 4] if has_obj else best
    keep = scores >= min_score
    if not np.any(keep):
        return []
    xywh = rows[keep, :4].astype(np.float64)
    scores, class_ids = scores[keep], class_ids[keep]
    if float(np.max(np.abs(xywh))) > 1.5:
        w, h = input_size
        xywh = xywh / np.array([w, h, w, h], dtype=np.float64)
    x0 = np.clip(xywh[:, 0] - xywh[:, 2] / 2, 0.0, 1.0)
    y0 = np.clip(xywh[:, 1] - xywh[:, 3] / 2, 0.0, 1.0)
    x1 = np.clip(xywh[:, 0] + xywh[:, 2] / 2, 0.0, 1.0)
    y1 = np.clip(xywh[:, 1] + xywh[:, 3] / 2, 0.0, 1.0)
    rects = [
        (float(a), float(b), float(c - a), float(d - b)) for a, b, c, d in zip(x0, y0, x1, y1, strict=True)
    ]
    kept = nms(rects, scores.tolist(), class_ids.tolist(), iou_threshold)
    kept = sorted(kept, key=lambda i: -float(scores[i]))[:_MAX_YOLO_DETECTIONS]
    return [
        (int(class_ids[i]), float(scores[i]), (float(x0[i]), float(y0[i]), float(x1[i]), float(y1[i])))
        for i in kept
        if x1[i] > x0[i] and y1[i] > y0[i]
    ]


def nms(
    rects: Sequence[tuple[float, float, float, float]],
    scores: Sequence[float],
    class_ids: Sequence[int],
    iou_threshold: float,
) -> list[int]:
    """Indices kept by per-class non-maximum suppression; rects are (x, y, w, h)."""
    if not rects:
        return []
    kept = cv2.dnn.NMSBoxesBatched(list(rects), list(scores), list(class_ids), 0.0, iou_threshold)
    return [int(i) for i in np.asarray(kept).reshape(-1)]


class DetectionModel:
    """A loaded detector: give it an RGB image, get `Detection`s. Not thread-safe (one owner)."""

    def __init__(
        self,
        interpreter: Interpreter,
        labels: list[str | None],
        *,
        layout: Literal["auto", "ssd", "yolo"] = "auto",
        input_size: int | None = None,
        nms_iou: float = 0.45,
        source: str = "<model>",
    ) -> None:
        self._interpreter = interpreter
        self.labels = labels
        self.source = source
        self.nms_iou = nms_iou
        inp = interpreter.get_input_details()
        if len(inp) != 1 or len(inp[0]["shape"]) != 4 or int(inp[0]["shape"][3]) != 3:
            shapes = [list(d["shape"]) for d in inp]
            raise ModelError(source, f"expected one [1, H, W, 3] image input, got {shapes}")
        if input_size is not None and tuple(inp[0]["shape"][1:3]) != (input_size, input_size):
            try:
                interpreter.resize_tensor_input(inp[0]["index"], [1, input_size, input_size, 3])
                interpreter.allocate_tensors()
            except (ValueError, RuntimeError) as exc:
                raise ModelError(source, f"cannot resize the input to {input_size}: {exc}") from None
            inp = interpreter.get_input_details()
        self._input = inp[0]
        self._outputs = interpreter.get_output_details()
        self.layout: Layout = self._pick_layout(layout)
        height, width = int(self._input["shape"][1]), int(self._input["shape"][2])
        self.input_size = (width, height)
        mean, std = _NORMALISATION[self.layout]
        try:
            self._lut = input_lut(np.dtype(self._input["dtype"]), Quant.of(self._input), mean, std)
        except ValueError as exc:
            raise ModelError(source, str(exc)) from None
        if self.layout == "yolo":
            try:
                _, _, classes = yolo_geometry(list(self._outputs[0]["shape"]), len(labels))
            except ValueError as exc:
                raise ModelError(source, str(exc)) from None
            if classes > len(labels):
                raise ModelError(
                    source, f"the model has {classes} classes but the labels file names {len(labels)}"
                )

    @classmethod
    def load(
        cls,
        model_path: Path | None = None,
        labels_path: Path | None = None,
        *,
        layout: Literal["auto", "ssd", "yolo"] = "auto",
        input_size: int | None = None,
        threads: int = 2,
        nms_iou: float = 0.45,
        backends: Sequence[str] = BACKENDS,
    ) -> DetectionModel:
        """Load a model and its labels; both default to the vendored COCO SSD MobileNet."""
        model_file = model_path or DEFAULT_MODEL
        labels = load_labels(labels_path or DEFAULT_LABELS)
        interpreter = make_interpreter(model_file, num_threads=threads, backends=backends)
        return cls(
            interpreter, labels, layout=layout, input_size=input_size, nms_iou=nms_iou, source=str(model_file)
        )

    def _pick_layout(self, wanted: Literal["auto", "ssd", "yolo"]) -> Layout:
        shapes = [list(d["shape"]) for d in self._outputs]
        is_ssd = len(shapes) == 4 and any(len(s) == 3 and s[-1] == 4 for s in shapes)
        is_yolo = len(shapes) == 1 and len(shapes[0]) == 3
        if wanted == "ssd" and not is_ssd:
            raise ModelError(self.source, f"layout ssd needs boxes, classes, scores and count; got {shapes}")
        if wanted == "yolo" and not is_yolo:
            raise ModelError(self.source, f"layout yolo needs one [1, N, F] output, got {shapes}")
        if wanted != "auto":
            return wanted
        if is_ssd:
            return "ssd"
        if is_yolo:
            return "yolo"
        raise ModelError(self.source, f"unrecognised output layout {shapes}; expected SSD or YOLO")

    def label(self, class_id: int) -> str | None:
        return self.labels[class_id] if 0 <= class_id < len(self.labels) else None

    def detect(self, rgb: Image, min_score: float = 0.3) -> list[Detection]:
        """Run the model on one RGB image (resized to the input size if it differs)."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 image, got {rgb.shape} {rgb.dtype}")
        width, height = self.input_size
        if rgb.shape[:2] != (height, width):
            rgb = cast(Image, cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA))
        self._interpreter.set_tensor(self._input["index"], self._lut[rgb][np.newaxis])
        self._interpreter.invoke()
        outputs = [dequantise(self._interpreter.get_tensor(d["index"]), Quant.of(d)) for d in self._outputs]
        if self.layout == "ssd":
            raw = decode_ssd(*ssd_roles(outputs), min_score=min_score)
        else:
            raw = decode_yolo(
                outputs[0],
                num_labels=len(self.labels),
                input_size=self.input_size,
                min_score=min_score,
                iou_threshold=self.nms_iou,
            )
        found = []
        for class_id, score, box in raw:
            name = self.label(class_id)
            if name is not None:
                found.append(Detection(class_id, name, score, box))
        return found


def ssd_roles(outputs: Sequence[FloatArray]) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Sort four SSD outputs into (boxes, classes, scores, count) by shape and content.

    TF1 exports order them boxes, classes, scores, count; TF2 exports scores, boxes, count,
    classes. Boxes are the [1,N,4] tensor, count the one-element one; of the two [1,N] tensors the
    classes are whole numbers and the scores are not (ties keep the TF1 order).
    """
    boxes = next(o for o in outputs if o.ndim == 3 and o.shape[-1] == 4)
    count = next(o for o in outputs if o.ndim == 1)
    pair = [o for o in outputs if o is not boxes and o is not count]
    if len(pair) != 2:
        raise ValueError(f"expected two [1, N] outputs beside boxes and count, got {len(pair)}")
    first, second = pair

    def whole(a: FloatArray) -> bool:
        return bool(np.all(np.equal(np.mod(a, 1.0), 0.0)))

    if whole(second) and not whole(first):
        first, second = second, first
    return boxes, first, second, count
