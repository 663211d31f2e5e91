"""The command server on a real broker: requests in on `{root}/cmd`, replies out where they belong.

The agent side here is the real `CommandServer` and `Dispatcher` over the in-process `FakeGateway`
of test_commands_gateway, fed by a paho client subscribed to the command topic, as the runtime's
link does; the platform side is a raw MQTT 5 client, so requests can carry any reply address.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.clock import iso
from agent.commands import COMMANDS, CommandServer, CommandSpec, Dispatcher
from agent.commands.audit import AuditLog
from agent.commands.models import NoArgs
from agent.config import parse_config
from tests.conftest import Broker
from tests.test_commands_gateway import FakeGateway, base_config

pytestmark = pytest.mark.broker


@dataclass
class Reply:
    topic: str
    body: dict[str, Any]
    corr: bytes | None


def _client(broker: Broker) -> mqtt.Client:
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
    )
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def _subscribe(client: mqtt.Client, topic: str) -> None:
    done = threading.Event()
    client.on_subscribe = lambda *a: done.set()
    client.subscribe(topic, qos=1)
    assert done.wait(5), f"no SUBACK for {topic}"


class Gate:
    """A command that holds its worker until released, so a test can fill the queue."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def run(self, ctx: Any, args: NoArgs) -> dict[str, Any]:
        self.entered.set()
        assert self.release.wait(10)
        return {"held": True}


def _boom(ctx: Any, args: NoArgs) -> dict[str, Any]:
    raise RuntimeError("handler exploded")


def _exit(ctx: Any, args: NoArgs) -> dict[str, Any]:
    raise SystemExit("a thread-killing bug")


class Bench:
    """Agent side (server, dispatcher, paho on `{root}/cmd`) and platform side (raw client)."""

    def __init__(
        self, broker: Broker, tmp: Path, *, workers: int = 1, queue_size: int = 8, **dispatcher: Any
    ) -> None:
        self.gw = FakeGateway(parse_config(base_config(tmp, id="gw-" + uuid.uuid4().hex[:10])))
        self.topics = self.gw.topics
        self.gate = Gate()
        extra = {
            "gate": CommandSpec("gate", NoArgs, self.gate.run, "any", audited=False),
            "boom": CommandSpec("boom", NoArgs, _boom, "any", audited=False),
            "exit": CommandSpec("exit", NoArgs, _exit, "any", audited=False),
        }
        self.audit = AuditLog.in_data_dir(tmp)
        self.dispatcher = Dispatcher(self.gw, self.audit, commands={**COMMANDS, **extra}, **dispatcher)
        self.fail_replies_to: set[str] = set()  # reply topics whose next reply raises, once each
        self.server = CommandServer(self.dispatcher, self._reply, workers=workers, queue_size=queue_size)
        self.agent = _client(broker)
        self.agent.message_callback_add(self.topics.cmd, lambda c, u, msg: self.server.submit(msg))
        _subscribe(self.agent, self.topics.cmd)
        self.replies: list[Reply] = []
        self._lock = threading.Lock()
        self.platform = _client(broker)
        self.platform.on_message = self._on_reply
        _subscribe(self.platform, f"{self.topics.reply_prefix}/#")

    def _reply(self, topic: str, payload: bytes, corr: bytes | None) -> None:
        """The link's reply, through the agent's paho client; raises like a broken link when asked."""
        if topic in self.fail_replies_to:
            self.fail_replies_to.discard(topic)
            raise RuntimeError("the link refused the reply")
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if corr is not None:
            props.CorrelationData = corr
        self.agent.publish(topic, payload, qos=1, properties=props)

    def _on_reply(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        corr = getattr(msg.properties, "CorrelationData", None)
        with self._lock:
            self.replies.append(Reply(msg.topic, json.loads(msg.payload), corr))

    def send(
        self, cmd: str, *, response_topic: str | None = None, reply_to: str | None = None, rid: str = ""
    ) -> str:
        rid = rid or uuid.uuid4().hex
        body: dict[str, Any] = {"id": rid, "cmd": cmd, "issued_at": iso(), "requester": {"agency": "police"}}
        if reply_to is not None:
            body["reply_to"] = reply_to
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if response_topic is not None:
            props.ResponseTopic = response_topic
            props.CorrelationData = rid.encode()
        # ensure_ascii keeps a lone surrogate as the JSON escape "\udc00", as a platform could send it
        payload = json.dumps(body).encode("ascii")
        self.platform.publish(self.topics.cmd, payload, qos=1, properties=props).wait_for_publish(5)
        return rid

    def wait(self, match: Callable[[Reply], bool], timeout: float = 5.0) -> Reply:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = next((r for r in self.replies if match(r)), None)
            if found is not None:
                return found
            time.sleep(0.01)
        raise AssertionError(f"no such reply within {timeout} s; got {self.replies}")

    def reply_for(self, rid: str, timeout: float = 5.0) -> Reply:
        return self.wait(lambda r: r.body.get("id") == rid or r.corr == rid.encode(), timeout)

    def ping_answers(self) -> bool:
        rid = self.send("ping", reply_to=self.topics.reply("after"))
        return self.reply_for(rid).body["ok"] is True

    def close(self) -> None:
        self.gate.release.set()
        self.server.stop(timeout=5)
        for client in (self.agent, self.platform):
            client.disconnect()
            client.loop_stop()
        self.dispatcher.close()
        self.audit.close()


@pytest.fixture
def bench(broker: Broker, tmp_path: Path) -> Iterator[Bench]:
    b = Bench(broker, tmp_path)
    b.server.start()
    yield b
    b.close()


def test_full_queue_answers_busy_at_once(broker: Broker, tmp_path: Path) -> None:
    b = Bench(broker, tmp_path, workers=1, queue_size=2)
    b.server.start()
    try:
        held = b.send("gate", reply_to=b.topics.reply("held"))
        assert b.gate.entered.wait(5)  # the only worker is busy from now on
        queued = [b.send("ping", reply_to=b.topics.reply("queued")) for _ in range(2)]
        v5 = b.send("ping", response_topic=b.topics.reply("v5"))
        v311 = b.send("ping", reply_to=b.topics.reply("v311"))

        busy5 = b.wait(lambda r: r.topic == b.topics.reply("v5"))
        assert busy5.corr == v5.encode()  # matched by Correlation Data: the id is not read
        assert busy5.body == {
            "id": None,
            "ok": False,
            "error": {"code": "busy", "message": "command queue full; retry"},
        }
        busy311 = b.wait(lambda r: r.topic == b.topics.reply("v311"))
        assert busy311.body["error"]["code"] == "busy"
        assert not any(r.body.get("id") in (held, *queued) for r in b.replies)  # all still waiting

        b.gate.release.set()
        assert b.reply_for(held).body["result"] == {"held": True}
        assert all(b.reply_for(rid).body["ok"] for rid in queued)
        assert b.ping_answers()
        assert not any(r.body.get("id") in (v5, v311) for r in b.replies)  # refused ones never ran
    finally:
        b.close()


def test_a_raising_handler_is_internal_and_the_worker_lives_on(
    bench: Bench, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        rid = bench.send("boom", response_topic=bench.topics.reply("boom"))
        reply = bench.reply_for(rid)
    assert reply.body["error"]["code"] == "internal"
    assert "handler exploded" in caplog.text
    assert bench.ping_answers()
    assert bench.server.dead_threads() == []


def test_a_lone_surrogate_reply_topic_is_never_used(bench: Bench) -> None:
    bad = bench.topics.reply("x\udc00")
    bench.send("ping", reply_to=bad)  # no usable address: runs, and no reply can go anywhere
    rid = bench.send("ping", response_topic=bench.topics.reply("v5"), reply_to=bad)
    assert bench.reply_for(rid).topic == bench.topics.reply("v5")  # the Response Topic still works
    assert bench.ping_answers()
    assert bench.server.dead_threads() == []
    assert all("\udc00" not in r.topic for r in bench.replies)


def test_a_failing_reply_is_logged_answered_internal_and_the_worker_lives_on(
    bench: Bench, caplog: pytest.LogCaptureFixture
) -> None:
    topic = bench.topics.reply("flaky")
    bench.fail_replies_to.add(topic)
    with caplog.at_level(logging.ERROR):
        rid = bench.send("ping", response_topic=topic)
        reply = bench.reply_for(rid)
    assert reply.topic == topic
    assert reply.corr == rid.encode()
    assert reply.body["error"] == {"code": "internal", "message": "internal error"}
    assert "the link refused the reply" in caplog.text
    assert bench.ping_answers()
    assert bench.server.dead_threads() == []


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death is the point
def test_workers_are_named_and_a_dead_one_is_reported(broker: Broker, tmp_path: Path) -> None:
    b = Bench(broker, tmp_path, workers=2)
    b.server.start()
    try:
        names = {t.name for t in threading.enumerate()}
        assert {"commands.0", "commands.1"} <= names
        b.send("exit", reply_to=b.topics.reply("exit"))  # SystemExit is not for a worker to swallow
        deadline = time.monotonic() + 5
        while not b.server.dead_threads() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(b.server.dead_threads()) == 1
        assert b.ping_answers()  # the other worker carries on
        b.server.stop(timeout=5)
        assert b.server.dead_threads() == []
        assert not {"commands.0", "commands.1"} & {t.name for t in threading.enumerate()}
    finally:
        b.close()


def test_a_retained_command_is_refused_when_the_broker_hands_it_over(bench: Bench) -> None:
    """A retained message on `{root}/cmd` comes to every new subscription: it never runs."""
    cmd = bench.topics.cmd
    done = threading.Event()
    bench.agent.on_unsubscribe = lambda *a: done.set()
    bench.agent.unsubscribe(cmd)
    assert done.wait(5)
    body = {"id": "kept-1", "cmd": "boom", "issued_at": iso(), "requester": {"agency": "police"}}
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ResponseTopic = bench.topics.reply("retained")
    props.CorrelationData = b"kept-1"
    bench.platform.publish(
        cmd, json.dumps(body).encode(), qos=1, retain=True, properties=props
    ).wait_for_publish(5)
    try:
        _subscribe(bench.agent, cmd)  # as the agent does after every (re)connect
        reply = bench.reply_for("kept-1")
        assert reply.topic == bench.topics.reply("retained")
        assert reply.body["error"]["code"] == "bad_request"
        assert "retained" in reply.body["error"]["message"]
        (record,) = [json.loads(line) for line in bench.audit.path.read_text().splitlines()]
        assert (record["id"], record["cmd"], record["outcome"]) == ("kept-1", "boom", "bad_request")
    finally:
        bench.platform.publish(cmd, b"", qos=1, retain=True).wait_for_publish(5)  # clear it
    assert bench.ping_answers()


def test_busy_is_never_sent_outside_the_reply_prefixes(broker: Broker, tmp_path: Path) -> None:
    b = Bench(broker, tmp_path, workers=1, queue_size=1)
    b.server.start()
    seen: list[str] = []
    b.platform.message_callback_add(f"{b.topics.root}/status", lambda c, u, msg: seen.append(msg.topic))
    _subscribe(b.platform, f"{b.topics.root}/status")
    try:
        b.send("gate", reply_to=b.topics.reply("held"))
        assert b.gate.entered.wait(5)
        b.send("ping", reply_to=b.topics.reply("queued"))
        b.send("ping", response_topic=f"{b.topics.root}/status")  # queue full: busy, but not there
        fine = b.send("ping", response_topic=b.topics.reply("fine"))
        assert b.wait(lambda r: r.topic == b.topics.reply("fine")).body["error"]["code"] == "busy"
        b.gate.release.set()
        assert b.ping_answers()
        assert seen == []
        assert not any(r.body.get("id") == fine for r in b.replies)
    finally:
        b.close()


def test_user_properties_reach_the_verifier(broker: Broker, tmp_path: Path) -> None:
    seen: list[dict[str, str]] = []

    class Recorder:
        def verify(self, envelope: dict[str, Any], user_properties: Mapping[str, str]) -> None:
            seen.append(dict(user_properties))

    b = Bench(broker, tmp_path, verifier=Recorder())
    b.server.start()
    try:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = b.topics.reply("signed")
        props.UserProperty = [("sig", "c2ln"), ("sig", "second"), ("other", "x")]
        body = {"id": "u-1", "cmd": "ping", "issued_at": iso(), "requester": {"agency": "police"}}
        b.platform.publish(b.topics.cmd, json.dumps(body).encode(), qos=1, properties=props)
        assert b.reply_for("u-1").body["ok"] is True
        assert seen == [{"sig": "c2ln", "other": "x"}]
    finally:
        b.close()
