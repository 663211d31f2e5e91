"""The detection model: the vendored SSD on a real photo, decoding of both layouts, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import pytest
import skimage.data

from agent.analysis.objects import (
    DEFAULT_LABELS,
    DEFAULT_MODEL,
    DetectionModel,
    build_detection_service,
    load_labels,
)
from agent.analysis.objects.interpreter import interpreter_class
from agent.analysis.objects.model import (
    Quant,
    decode_ssd,
    decode_yolo,
    dequantise,
    input_lut,
    ssd_roles,
    yolo_geometry,
)
from agent.capture.source import Image
from agent.config import parse_config
from agent.errors import AgentError, DetectorUnavailableError, ModelError

# Where the astronaut is in skimage's 512x512 `astronaut` photo, judged by eye: from her left
# shoulder (x~20) to her right arm (x~365), from the top of her hair (y~12) to the bottom edge.
ASTRONAUT = (20 / 512, 12 / 512, 365 / 512, 512 / 512)  # x0, y0, x1, y1
MISSING = ("no_such_tflite_package.interpreter", "another_missing_runtime.interpreter")


def iou_xyxy(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def photo(name: str) -> Image:
    """One of scikit-image's sample photos (RGB), e.g. `astronaut`."""
    return cast(Image, getattr(skimage.data, name)())


@pytest.fixture(scope="module")
def model() -> DetectionModel:
    return DetectionModel.load(threads=1)


# -- the real model on a real photo -------------------------------------------------------------


def test_vendored_model_finds_the_astronaut_where_she_is(model: DetectionModel) -> None:
    assert model.layout == "ssd"
    assert model.input_size == (300, 300)
    people = [d for d in model.detect(photo("astronaut"), min_score=0.5) if d.label == "person"]
    assert people, "no person found in the astronaut photo"
    best = max(people, key=lambda d: d.score)
    assert iou_xyxy(best.box, ASTRONAUT) >= 0.7


def test_a_photo_without_people_yields_no_person(model: DetectionModel) -> None:
    found = model.detect(photo("chelsea"), min_score=0.5)  # a cat
    assert "person" not in {d.label for d in found}
    assert "cat" in {d.label for d in found}


def test_vendored_files_and_notice_ship_with_the_package() -> None:
    folder = DEFAULT_MODEL.parent
    assert DEFAULT_MODEL.stat().st_size > 1_000_000
    notice = (folder / "NOTICE").read_text(encoding="utf-8")
    assert "Apache License, Version 2.0" in notice
    assert "TensorFlow" in notice


def test_bad_image_is_a_clear_error(model: DetectionModel) -> None:
    with pytest.raises(ValueError, match="uint8 image"):
        model.detect(np.zeros((300, 300), np.uint8))


# -- labels -------------------------------------------------------------------------------------


def test_coco_labels_map_line_n_to_class_n_with_gaps() -> None:
    labels = load_labels(DEFAULT_LABELS)
    assert labels[0] == "person"
    assert labels[2] == "car"
    assert labels[5] == "bus"
    assert None in labels  # `???` gaps of the 90-id COCO map


def test_labels_as_id_name_pairs(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("0 person\n2: car\n3  truck\n", encoding="utf-8")
    assert load_labels(path) == ["person", None, "car", "truck"]


@pytest.mark.parametrize(
    ("content", "problem"), [(b"", "empty"), (b"\n\n", "empty"), (b"\xff\xfe\x00", "UTF-8")]
)
def test_bad_labels_files_are_clear_errors(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "labels.txt"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=problem) as info:
        load_labels(path)
    assert info.value.path == str(path)


# -- bad models and missing runtimes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "not a TFLite model"),
        (b"this is not a model at all, just text" * 10, "not a TFLite model"),
        (b"\x20\x00\x00\x00TFL3" + bytes(range(256)) * 8, "rejected the model"),
        (None, "rejected the model"),  # the real model, truncated
    ],
)
def test_corrupt_model_file_is_a_clear_error(tmp_path: Path, content: bytes | None, problem: str) -> None:
    path = tmp_path / "model.tflite"
    path.write_bytes(DEFAULT_MODEL.read_bytes()[:100_000] if content is None else content)
    with pytest.raises(ModelError, match=problem) as info:
        DetectionModel.load(path, DEFAULT_LABELS)
    assert info.value.path == str(path)


def test_missing_model_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read model"):
        DetectionModel.load(tmp_path / "absent.tflite", DEFAULT_LABELS)


def test_no_interpreter_package_is_a_clear_error() -> None:
    with pytest.raises(DetectorUnavailableError) as info:
        interpreter_class(MISSING)
    assert isinstance(info.value, AgentError)
    assert set(info.value.tried) == set(MISSING)
    assert "ai-edge-litert" in str(info.value)
    assert "no_such_tflite_package" in str(info.value)
    with pytest.raises(DetectorUnavailableError):
        DetectionModel.load(backends=MISSING)


def test_first_importable_backend_is_chosen() -> None:
    name, factory = interpreter_class(("no_such_tflite_package.interpreter", "ai_edge_litert.interpreter"))
    assert name == "ai_edge_litert.interpreter"
    assert callable(factory)


def _config(detection: bool) -> dict[str, object]:
    return {
        "gateway": {"district": "d1", "id": "gw1"},
        "cameras": [{"id": "cam-1", "source": "usb:0", "detection": {"enabled": detection}}],
    }


def test_without_a_runtime_only_enabled_detection_fails() -> None:
    assert build_detection_service(parse_config(_config(False)), backends=MISSING) is None
    with pytest.raises(DetectorUnavailableError):
        build_detection_service(parse_config(_config(True)), backends=MISSING)
    service = build_detection_service(parse_config(_config(True)))
    assert service is not None
    assert service.model.layout == "ssd"


# -- input quantisation -------------------------------------------------------------------------


def test_input_lut_honours_quantisation() -> None:
    # The vendored SSD: uint8, scale 1/128, zero point 128, trained on (p - 127.5) / 127.5.
    ssd = input_lut(np.dtype(np.uint8), Quant(1 / 128, 128), 127.5, 127.5)
    assert ssd.dtype == np.uint8
    assert np.abs(ssd.astype(int) - np.arange(256)).max() <= 1
    # A full-integer YOLO: int8, scale 1/255, zero point -128, trained on p / 255.
    yolo = input_lut(np.dtype(np.int8), Quant(1 / 255, -128), 0.0, 255.0)
    assert yolo.dtype == np.int8
    assert yolo.astype(int).tolist() == list(range(-128, 128))
    floats = input_lut(np.dtype(np.float32), Quant(), 0.0, 255.0)
    assert floats[0] == 0.0
    assert floats[255] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unsupported input"):
        input_lut(np.dtype(np.int32), Quant(), 0.0, 1.0)


# -- SSD decoding -------------------------------------------------------------------------------


def _quantise(values: np.ndarray, dtype: type[np.integer], quant: Quant) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.round(values / quant.scale + quant.zero_point), info.min, info.max).astype(dtype)


@pytest.mark.parametrize(("dtype", "quant"), [(np.uint8, Quant(1 / 255, 0)), (np.int8, Quant(1 / 255, -128))])
def test_ssd_outputs_quantised_decode_to_the_same_boxes(dtype: type[np.integer], quant: Quant) -> None:
    boxes = np.array([[[0.1, 0.2, 0.5, 0.4], [0.6, 0.6, 0.9, 1.0], [0.0, 0.0, 0.1, 0.1]]], np.float32)
    scores = np.array([[0.9, 0.6, 0.2]], np.float32)
    classes = np.array([[0.0, 2.0, 5.0]], np.float32)
    count = np.array([3.0], np.float32)
    q_boxes, q_scores = _quantise(boxes, dtype, quant), _quantise(scores, dtype, quant)
    real_boxes, real_scores = dequantise(q_boxes, quant), dequantise(q_scores, quant)
    # TF2 exports order the outputs scores, boxes, count, classes: roles come from shape and content.
    found = decode_ssd(*ssd_roles([real_scores, real_boxes, count, classes]), min_score=0.5)
    assert [(c, round(s, 2)) for c, s, _ in found] == [(0, 0.9), (2, 0.6)]
    assert found[0][2] == pytest.approx((0.2, 0.1, 0.4, 0.5), abs=1 / 255)  # ymin,xmin,... -> x0,y0,...
    assert found[1][2] == pytest.approx((0.6, 0.6, 1.0, 0.9), abs=1 / 255)


def test_ssd_count_limits_the_detections() -> None:
    boxes = np.tile(np.array([0.1, 0.1, 0.5, 0.5], np.float32), (1, 4, 1))
    scores = np.full((1, 4), 0.9, np.float32)
    classes = np.zeros((1, 4), np.float32)
    assert len(decode_ssd(boxes, classes, scores, np.array([2.0], np.float32), min_score=0.5)) == 2


# -- YOLO decoding ------------------------------------------------------------------------------

# Hand-made candidates for 3 classes (person, car, dog) on a 320x320 input: cx, cy, w, h, class scores.
CANDIDATES = [
    (0.30, 0.50, 0.20, 0.60, [0.90, 0.05, 0.00]),  # a person
    (0.31, 0.51, 0.21, 0.58, [0.80, 0.00, 0.00]),  # the same person again: suppressed by NMS
    (0.30, 0.50, 0.20, 0.60, [0.00, 0.00, 0.70]),  # same place, another class: NMS is per class
    (0.75, 0.70, 0.30, 0.20, [0.10, 0.85, 0.00]),  # a car
    (0.50, 0.10, 0.10, 0.10, [0.20, 0.10, 0.10]),  # below the score threshold
]
EXPECTED = [
    (0, 0.90, (0.20, 0.20, 0.40, 0.80)),
    (1, 0.85, (0.60, 0.60, 0.90, 0.80)),
    (2, 0.70, (0.20, 0.20, 0.40, 0.80)),
]


def _v8_tensor(pixels: bool = False) -> np.ndarray:
    scale = 320.0 if pixels else 1.0
    rows = [[cx * scale, cy * scale, w * scale, h * scale, *cls] for cx, cy, w, h, cls in CANDIDATES]
    return np.array(rows, np.float32).T[np.newaxis]  # [1, 4 + C, N]


def _check(found: list[tuple[int, float, tuple[float, float, float, float]]], tol: float = 1e-5) -> None:
    assert sorted(c for c, _, _ in found) == [0, 1, 2]
    by_class = {c: (s, b) for c, s, b in found}
    for class_id, score, box in EXPECTED:
        assert by_class[class_id][0] == pytest.approx(score, abs=max(tol, 1e-5))
        assert by_class[class_id][1] == pytest.approx(box, abs=max(tol, 1e-5))


def test_yolov8_layout_decodes_with_per_class_nms() -> None:
    raw = _v8_tensor()
    assert yolo_geometry(raw.shape, 3) == (True, False, 3)
    _check(decode_yolo(raw, num_labels=3, input_size=(320, 320), min_score=0.5, iou_threshold=0.45))


def test_yolo_boxes_in_input_pixels_are_normalised() -> None:
    found = decode_yolo(
        _v8_tensor(pixels=True), num_labels=3, input_size=(320, 320), min_score=0.5, iou_threshold=0.45
    )
    _check(found)


def test_yolov5_layout_with_objectness_decodes() -> None:
    # [1, N, 5 + C]: objectness 1.0 for real candidates keeps the expected scores; an extra
    # candidate with a high class score but low objectness is dropped.
    rows = [[cx, cy, w, h, 1.0, *cls] for cx, cy, w, h, cls in CANDIDATES]
    rows.append([0.5, 0.5, 0.2, 0.2, 0.1, 0.0, 0.95, 0.0])
    rows += [[0.0] * 8] * 20  # empty anchors, so N > features as in a real export
    raw_long = np.array(rows, np.float32)[np.newaxis]  # [1, 26, 8]
    assert yolo_geometry(raw_long.shape, 3) == (False, True, 3)
    _check(decode_yolo(raw_long, num_labels=3, input_size=(320, 320), min_score=0.5, iou_threshold=0.45))


def test_int8_quantised_yolo_output_decodes_to_the_same_objects() -> None:
    raw = _v8_tensor()
    quant = Quant(1 / 255, -128)
    real = dequantise(_quantise(raw, np.int8, quant), quant)
    assert real.dtype == np.float32
    found = decode_yolo(real, num_labels=3, input_size=(320, 320), min_score=0.5, iou_threshold=0.45)
    _check(found, tol=1.5 / 255)


def test_yolo_with_nothing_above_threshold_is_empty() -> None:
    assert (
        decode_yolo(_v8_tensor(), num_labels=3, input_size=(320, 320), min_score=0.99, iou_threshold=0.45)
        == []
    )


@pytest.mark.parametrize("shape", [(1, 8), (2, 8, 100), (1, 4, 100)])
def test_impossible_yolo_shapes_are_clear_errors(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="YOLO output"):
        yolo_geometry(shape, 3)


def test_an_input_size_the_model_cannot_take_is_a_clear_error() -> None:
    # The vendored SSD's post-processing is built for 300x300.
    with pytest.raises(ModelError, match="cannot resize the input to 320"):
        DetectionModel.load(input_size=320)
    assert DetectionModel.load(input_size=300).input_size == (300, 300)  # its own size is fine
