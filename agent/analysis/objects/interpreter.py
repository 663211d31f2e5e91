"""The one place that picks a TFLite interpreter package and builds an interpreter.

`tflite-runtime` is what installs on Raspberry Pi OS (Python <= 3.11, numpy < 2); its successor
`ai-edge-litert` is what installs everywhere else. Both expose the same `Interpreter` class, so
the rest of the detector talks to the small `Interpreter` protocol below and never imports either.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import numpy.typing as npt

from agent.errors import DetectorUnavailableError, ModelError

# Tried in order: the maintained successor first, then the Pi OS package.
BACKENDS: tuple[str, ...] = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")

TensorDetails = dict[str, Any]


class Interpreter(Protocol):
    """What the detector needs from a TFLite interpreter (both packages provide it)."""

    def allocate_tensors(self) -> None: ...

    def get_input_details(self) -> list[TensorDetails]: ...

    def get_output_details(self) -> list[TensorDetails]: ...

    def resize_tensor_input(self, input_index: int, tensor_size: Sequence[int]) -> None: ...

    def set_tensor(self, tensor_index: int, value: npt.NDArray[Any]) -> None: ...

    def invoke(self) -> None: ...

    def get_tensor(self, tensor_index: int) -> npt.NDArray[Any]: ...


class InterpreterFactory(Protocol):
    def __call__(self, *, model_path: str, num_threads: int) -> Interpreter: ...


def interpreter_class(backends: Sequence[str] = BACKENDS) -> tuple[str, InterpreterFactory]:
    """Return (module name, Interpreter class) of the first backend that imports.

    Raise DetectorUnavailableError naming every module tried and why it failed. A package that
    is present but broken (e.g. built against another numpy) counts as absent.
    """
    tried: dict[str, str] = {}
    for name in backends:
        try:
            module = importlib.import_module(name)
            factory = module.Interpreter
        except (ImportError, AttributeError, OSError) as exc:
            tried[name] = str(exc) or type(exc).__name__
            continue
        return name, cast(InterpreterFactory, factory)
    raise DetectorUnavailableError(tried or {"<none>": "no interpreter modules were given"})


def check_model_file(path: Path) -> None:
    """Fail early and clearly on a missing or non-TFLite file instead of deep in the runtime."""
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise ModelError(str(path), f"cannot read model: {exc.strerror or exc}") from None
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise ModelError(str(path), "not a TFLite model (no TFL3 identifier in its header)")


def make_interpreter(
    model_path: Path, *, num_threads: int = 2, backends: Sequence[str] = BACKENDS
) -> Interpreter:
    """Load `model_path` into an interpreter with tensors allocated, ready to invoke."""
    if num_threads < 1:
        raise ValueError(f"num_threads must be at least 1, got {num_threads}")
    check_model_file(model_path)
    _, factory = interpreter_class(backends)
    try:
        interpreter = factory(model_path=str(model_path), num_threads=num_threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelError(str(model_path), f"the TFLite runtime rejected the model: {exc}") from None
    return interpreter
