"""A misspelt setting is refused, naming the key, in every config model: none is silently ignored.

The cases are generated: every subclass of `agent.config.Strict` (the base of all config models)
is found, located inside the config file (`AgentConfig`) and/or the runtime settings that
`config.set` changes (`RuntimeSettings`), and a misspelling of one of its own keys is put there.
A new model that cannot be reached from either root fails `test_every_strict_model_is_reachable`,
so it cannot be added without this check.
"""

from __future__ import annotations

import copy
import importlib
import pkgutil
import subprocess
import sys
import tomllib
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import agent.config
from agent.config import AgentConfig, Strict, parse_config
from agent.config.settings import RuntimeSettings, SettingsStore
from agent.console.auth import hash_password
from agent.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"

Path_ = tuple[str | int, ...]


def strict_models() -> list[type[Strict]]:
    """Every Strict subclass defined in agent.config (all its modules imported first)."""
    for info in pkgutil.walk_packages(agent.config.__path__, "agent.config."):
        importlib.import_module(info.name)
    found: list[type[Strict]] = []
    todo = list(Strict.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls not in found:
            found.append(cls)
            todo.extend(cls.__subclasses__())
    return sorted(found, key=lambda c: c.__name__)


def _models_in(annotation: Any) -> Iterator[tuple[type[BaseModel], Path_]]:
    """Models inside a field's annotation, each with the key steps from the field to it."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation, ()
        return
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType) or origin is typing.Annotated:
        for arg in args[:1] if origin is typing.Annotated else args:
            yield from _models_in(arg)
    elif origin is list and args:
        for model, rest in _models_in(args[0]):
            yield model, (0, *rest)
    elif origin is dict and len(args) == 2:
        for model, rest in _models_in(args[1]):
            yield model, ("cam-1", *rest)


def locations(root: type[BaseModel]) -> dict[type[BaseModel], Path_]:
    """The first key path (breadth first) from `root` to each model nested in it."""
    found: dict[type[BaseModel], Path_] = {root: ()}
    queue: list[type[BaseModel]] = [root]
    while queue:
        model = queue.pop(0)
        for name, info in model.model_fields.items():
            for inner, rest in _models_in(info.annotation):
                if inner not in found:
                    found[inner] = (*found[model], name, *rest)
                    queue.append(inner)
    return found


def misspelt(model: type[BaseModel]) -> str:
    """A typo of one of the model's own keys, as an operator would make it ("host" -> "hots")."""
    for name in model.model_fields:
        if len(name) >= 3:
            typo = name[:-2] + name[-1] + name[-2]
            if typo not in model.model_fields:
                return typo
    return "unknown_key"


REQUIRED = {"onvif": {"url": "http://192.0.2.1/onvif/device_service"}}
"""Tables with a required key, created with it so that only the typo is refused."""


def put(data: dict[str, Any], path: Path_, key: str) -> str:
    """Add `key = 1` at `path` inside `data` (creating tables, with their required keys); the
    dotted path as reported."""
    node: Any = data
    shown = ""
    for step in path:
        if isinstance(step, int):
            shown += f"[{step}]"
            node = node[step]
        else:
            shown += f".{step}" if shown else step
            node = node.setdefault(step, dict(REQUIRED.get(step, {})))
    node[key] = 1
    return f"{shown}.{key}" if shown else key


def example() -> dict[str, Any]:
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    data["cameras"] = data["cameras"][:1]
    data["cameras"][0]["id"] = "cam-1"
    # The example leaves its console user commented out (it has no password to show).
    data["console"]["users"] = [{"name": "tech", "password_hash": hash_password("a test password")}]
    return data


FILE_MODELS = locations(AgentConfig)
SETTINGS_MODELS = locations(RuntimeSettings)
MODELS = strict_models()


def test_every_strict_model_is_reachable() -> None:
    unreachable = [m.__name__ for m in MODELS if m not in FILE_MODELS and m not in SETTINGS_MODELS]
    assert unreachable == [], "models neither in the config file nor in config.set's settings"
    assert {"AgentConfig", "MqttConfig", "MotionSettings", "RuntimeSettings"} <= {m.__name__ for m in MODELS}


@pytest.mark.parametrize("model", [m for m in MODELS if m in FILE_MODELS], ids=lambda m: m.__name__)
def test_unknown_key_in_the_config_file_is_an_error_naming_it(model: type[Strict]) -> None:
    base = example()
    parse_config(copy.deepcopy(base))  # the base is valid: only the typo can be refused
    key = misspelt(model)
    where = put(base, FILE_MODELS[model], key)
    with pytest.raises(ConfigError) as info:
        parse_config(base)
    assert info.value.problems == [f"{where}: Extra inputs are not permitted (got 1)"]


@pytest.mark.parametrize("model", [m for m in MODELS if m in SETTINGS_MODELS], ids=lambda m: m.__name__)
def test_unknown_key_in_config_set_is_refused_naming_it(model: type[Strict], tmp_path: Path) -> None:
    cfg = parse_config(example())
    store = SettingsStore(cfg, tmp_path / "settings.json")
    before = store.as_dict()
    partial: dict[str, Any] = {}
    key = misspelt(model)
    where = put(partial, SETTINGS_MODELS[model], key)
    with pytest.raises(ConfigError) as info:
        store.apply(partial)
    assert info.value.problems == [f"{where}: Extra inputs are not permitted (got 1)"]
    assert store.as_dict() == before
    assert not (tmp_path / "settings.json").exists()


@pytest.mark.parametrize(
    ("section", "line", "named"),
    [
        ("[mqtt]", 'hots = "broker.example"', "mqtt.hots"),
        ("[cameras.motion]", "thresold = 30", "cameras[0].motion.thresold"),
    ],
)
def test_check_config_exits_1_naming_the_misspelt_key(
    tmp_path: Path, section: str, line: str, named: str
) -> None:
    """The operator's view of the issue's two cases: `edge-agent check-config` fails and says where."""
    text = EXAMPLE.read_text(encoding="utf-8").replace(f"{section}\n", f"{section}\n{line}\n", 1)
    assert line in text
    path = tmp_path / "typo.toml"
    path.write_text(text, encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 1, run.stdout
    assert any(p.startswith(f"  - {named}: Extra inputs are not permitted") for p in run.stderr.splitlines())
    assert "OK" not in run.stdout


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("rtsp://admin:pw@10.0.0.5:554main", "malformed URL"),
        ("rtsp://:554/main", "the URL has no host"),
        ("https://cam:99999/mjpeg", "malformed URL"),
    ],
)
def test_a_malformed_camera_url_is_a_config_error_without_its_password(source: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({**example(), "cameras": [{"id": "cam-1", "source": source}]})
    text = "\n".join(err.value.problems)
    assert problem in text and "pw@" not in text and ":pw" not in text
