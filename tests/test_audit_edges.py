"""The audit chain at its edges, as `verify` (and so `edge-agent audit verify`) reports it: the exact
reason for each fault, lines at the 16 KiB and 16-deep limits, brackets inside strings, the key
file's limits, and the bytes of a non-ASCII record (issue 19: each test here kills mutants the
broader audit tests let live).
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest

from agent.commands.audit import GENESIS, AuditLog, record_hash, verify
from agent.commands.audit_chain import MAX_RECORD_BYTES, MIN_KEY_BYTES, canonical, key_id, load_key
from agent.errors import ConfigError

KEY = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
OTHER_KEY = b"fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"


def fields(i: int, **extra: Any) -> dict[str, Any]:
    return {"id": f"r-{i:04d}", "cmd": "snapshot", "camera": "cam-1", "outcome": "ok", **extra}


def write(path: Path, n: int, key: bytes | None = None, **extra: Any) -> list[dict[str, Any]]:
    with AuditLog(path, key=key) as log:
        return [log.append(fields(i, **extra)) for i in range(n)]


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def chained(prev: str, **extra: Any) -> dict[str, Any]:
    """A record chained to `prev` by hand (unkeyed), as a line of the file would hold it."""
    body: dict[str, Any] = {"ts": "2026-11-27T00:00:00.000Z", **extra, "prev": prev}
    body["hash"] = record_hash(body)
    return body


# -- what is written ------------------------------------------------------------------------------


def test_non_ascii_text_is_written_as_utf_8(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 1, operator="김경찰")
    assert "김경찰".encode() in path.read_bytes()
    assert verify(path).ok


def test_the_key_id_of_a_key_is_stable() -> None:
    """The platform keeps the id a keyed chain starts with; it must not change between versions."""
    assert key_id(b"k" * 32) == "419525a492fbf42a"


# -- exact reasons ----------------------------------------------------------------------------------


def test_a_record_rewritten_in_another_json_layout_is_an_edit(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 3)
    rows = lines(path)
    rows[1] = json.dumps(json.loads(rows[1]), sort_keys=True).encode() + b"\n"  # same data, spaces
    path.write_bytes(b"".join(rows))
    result = verify(path)
    assert (result.ok, result.records, result.first_bad_line) == (False, 1, 2)
    assert result.reason == "record is not in canonical form (edited)"
    assert result.file == path


def test_a_log_missing_its_first_records_is_broken(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 3)
    path.write_bytes(b"".join(lines(path)[1:]))
    result = verify(path)
    assert (result.first_bad_line, result.reason) == (
        1,
        "chain broken: the first record follows one that is missing",
    )


def test_each_kind_of_hash_mismatch_has_its_own_reason(tmp_path: Path) -> None:
    keyed = tmp_path / "keyed" / "audit.log"
    write(keyed, 2, key=KEY)  # line 1 starts the keyed chain
    assert verify(keyed, key=KEY).ok
    assert verify(keyed).reason == "the chain is keyed from this record on: give its key (--key-file)"
    assert verify(keyed, key=OTHER_KEY).reason == (
        f"the chain is keyed with another key (key id {key_id(KEY)}) from this record on"
    )
    rows = lines(keyed)
    rows[2] = rows[2].replace(b'"r-0001"', b'"r-0009"')
    keyed.write_bytes(b"".join(rows))
    assert (
        verify(keyed, key=KEY).reason
        == "record does not match its hash (modified, or keyed with another key)"
    )

    plain = tmp_path / "plain" / "audit.log"
    write(plain, 2)
    assert verify(plain, key=KEY).reason == (
        "no record is keyed with the given key (the log was written, or rewritten, without it)"
    )
    assert verify(plain, key=KEY).file is None
    rows = lines(plain)
    rows[1] = rows[1].replace(b'"r-0001"', b'"r-0009"')
    plain.write_bytes(b"".join(rows))
    assert verify(plain).reason == "record does not match its hash (modified)"


def test_an_unkeyed_record_after_the_chain_was_keyed_is_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    records = write(path, 2, key=KEY)
    extra = chained(records[-1]["hash"], **fields(9))
    path.write_bytes(path.read_bytes() + canonical(extra) + b"\n")
    result = verify(path, key=KEY)
    assert (result.first_bad_line, result.reason) == (
        4,
        "unkeyed record after the chain was keyed (rewritten without the key, or the key was removed)",
    )


def test_the_platforms_head_missing_is_named_with_16_hex_digits(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 2)
    head = "ab" * 32
    result = verify(path, head=head)
    assert result.reason == (
        "the platform's last record (hash abababababababab…) is not in the log: records were"
        " cut off the end, or the log was replaced"
    )


def test_a_fault_in_a_rotated_set_counts_files_and_keyed_records(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path, key=KEY, max_bytes=4096) as log:
        for i in range(40):
            log.append(fields(i))
    assert verify(path, key=KEY).files >= 2
    rows = lines(path)
    rows[-1] = rows[-1].replace(b'"ok"', b'"no"')
    path.write_bytes(b"".join(rows))
    result = verify(path, key=KEY)
    assert not result.ok
    assert result.files == len(list(tmp_path.iterdir()))
    assert result.keyed == result.records == 40  # the marker and 39 records before the bad one


def test_an_unreadable_log_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.mkdir()
    result = verify(path)
    assert (result.ok, result.reason, result.file) == (False, f"cannot read {path}: Is a directory", path)


# -- the limits of a line -------------------------------------------------------------------------


def record_line_of(size: int) -> bytes:
    """A good first record whose line (without its newline) is exactly `size` bytes."""
    pad = 0
    while True:
        line = canonical(chained(GENESIS, pad="x" * pad))
        if len(line) >= size:
            assert len(line) == size
            return line
        pad += size - len(line)


def test_a_record_of_exactly_16_kib_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    first = record_line_of(MAX_RECORD_BYTES)
    second = canonical(chained(json.loads(first)["hash"], pad="y"))
    path.write_bytes(first + b"\n" + second + b"\n")
    result = verify(path)
    assert (result.ok, result.records, result.torn_lines) == (True, 2, ())


def test_a_line_one_byte_longer_is_not_a_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(record_line_of(MAX_RECORD_BYTES + 1) + b"\n")
    result = verify(path)
    assert (result.first_bad_line, result.reason) == (1, "unreadable record (longer than any audit record)")


def test_a_last_record_that_only_lacks_its_newline_is_a_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 3)
    path.write_bytes(path.read_bytes()[:-1])
    result = verify(path)
    assert (result.ok, result.records, result.torn_lines) == (True, 3, ())


def test_a_torn_last_line_of_exactly_16_kib_is_torn(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 2)
    path.write_bytes(path.read_bytes() + b'{"x":"' + b"x" * (MAX_RECORD_BYTES - 6))
    result = verify(path)
    assert (result.ok, result.records, result.torn_lines) == (True, 2, (3,))


def nest(depth: int) -> Any:
    """A value `depth` deep, alternating lists and objects."""
    value: Any = 0
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def depth_line(depth: int) -> dict[str, Any]:
    """A record `depth` deep in all (the record itself is 1), with closed brackets before the
    deepest point, so a count that forgets a closing bracket or an opening one is caught."""
    return chained(GENESIS, a=[[0], {"x": 0}, nest(depth - 2)])


def test_a_record_exactly_16_deep_is_read(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(canonical(depth_line(16)) + b"\n")
    assert verify(path).ok


def test_a_record_17_deep_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(canonical(depth_line(17)) + b"\n")
    result = verify(path)
    assert result.reason == "unreadable record (nested deeper than any audit record)"


def test_many_shallow_brackets_are_not_depth(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(
        canonical(chained(GENESIS, a=[[i] for i in range(30)], b=[{"i": i} for i in range(30)])) + b"\n"
    )
    assert verify(path).ok


@pytest.mark.parametrize(
    "text",
    [
        'say "hi" [' * 20,  # escaped quotes inside a string full of brackets
        "C:\\",  # a string that ends with a backslash, followed by brackets in the next one
        'x"' + "[" * 20,  # one escaped quote, then brackets still inside the string
    ],
)
def test_brackets_inside_strings_are_not_depth(tmp_path: Path, text: str) -> None:
    path = tmp_path / "audit.log"
    write(path, 2, a_text=text, b_text="{[" * 20)
    result = verify(path)
    assert (result.ok, result.records) == (True, 2)


# -- the key file ----------------------------------------------------------------------------------


def key_file(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "audit-key"
    path.write_bytes(content)
    path.chmod(0o600)
    return path


def test_a_key_file_of_4096_bytes_is_read_whole_and_one_more_is_refused(tmp_path: Path) -> None:
    assert load_key(key_file(tmp_path, b"k" * 4096)) == b"k" * 4096
    with pytest.raises(ConfigError) as info:
        load_key(key_file(tmp_path, b"k" * 4097))
    assert info.value.problems == [
        f"{tmp_path / 'audit-key'} must hold a secret of at least 32 and at most 4096 bytes,"
        " e.g. from `openssl rand -hex 32`"
    ]


def test_a_key_of_exactly_the_minimum_length_is_accepted(tmp_path: Path) -> None:
    assert load_key(key_file(tmp_path, b"k" * MIN_KEY_BYTES + b"\n")) == b"k" * MIN_KEY_BYTES


def test_a_missing_key_file_is_named_under_the_config_key(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as info:
        load_key(missing)
    assert (info.value.source, info.value.problems) == (
        "gateway.audit_key_file",
        [f"cannot read {missing}: No such file or directory"],
    )


# -- the log file: bounds, rotation at the exact byte, recovery --------------------------------------


def record_length(tmp_path: Path) -> int:
    """The length of every `fields(i)` line (fixed-width ts, hashes and ids)."""
    probe = tmp_path / "probe" / "audit.log"
    write(probe, 1)
    return len(probe.read_bytes())


@pytest.mark.parametrize(("args", "ok"), [((4095, 2), False), ((4096, 1), False), ((4096, 2), True)])
def test_the_smallest_log_is_4096_bytes_in_2_files(tmp_path: Path, args: tuple[int, int], ok: bool) -> None:
    path = tmp_path / "audit.log"
    if ok:
        AuditLog(path, max_bytes=args[0], max_files=args[1]).close()
        return
    with pytest.raises(ValueError, match=r"^an audit log needs max_bytes >= 4096 and max_files >= 2$"):
        AuditLog(path, max_bytes=args[0], max_files=args[1])


def test_a_closed_log_refuses_to_append(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    log.close()
    log.close()
    with pytest.raises(ValueError, match=r"^audit log .*audit\.log is closed$"):
        log.append(fields(0))


def test_the_marker_of_a_keyed_chain_names_the_key_id(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 1, key=KEY)
    marker = json.loads(lines(path)[0])
    assert (marker["chain"], marker["key_id"]) == ("hmac-sha256", key_id(KEY))


def test_a_file_fills_to_exactly_max_bytes_before_it_rotates(tmp_path: Path) -> None:
    size = record_length(tmp_path)
    per_file = -(-4096 // size)
    path = tmp_path / "audit.log"
    with AuditLog(path, max_bytes=per_file * size) as log:
        for i in range(per_file):
            log.append(fields(i))
        assert (path.stat().st_size, path.with_name("audit.log.1").exists()) == (per_file * size, False)
        log.append(fields(0))
        assert path.with_name("audit.log.1").stat().st_size == per_file * size
        for i in range(1, per_file):
            log.append(fields(i))
    assert path.stat().st_size == per_file * size
    assert not path.with_name("audit.log.2").exists()
    assert verify(path).records == per_file * 2


def test_a_record_longer_than_max_bytes_does_not_rotate_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path, max_bytes=4096) as log:
        log.append(fields(0, note="n" * 5000))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.log"]


def test_in_data_dir_keeps_max_files(tmp_path: Path) -> None:
    with AuditLog.in_data_dir(tmp_path, max_bytes=4096, max_files=2) as log:
        for i in range(100):
            log.append(fields(i))
    assert sorted(p.name for p in (tmp_path / "audit").iterdir()) == ["audit.log", "audit.log.1"]


def test_from_config_without_a_key_file_writes_an_unkeyed_chain(tmp_path: Path) -> None:
    from agent.config.models import parse_config

    cfg = parse_config({"gateway": {"district": "d", "id": "gw", "data_dir": str(tmp_path)}})
    with AuditLog.from_config(cfg) as log:
        log.append(fields(0))
    path = tmp_path / "audit" / "audit.log"
    assert verify(path).ok
    assert "chain" not in json.loads(lines(path)[0])


def reopen_and_append(path: Path) -> tuple[AuditLog, dict[str, Any]]:
    log = AuditLog(path)
    record = log.append(fields(7))
    log.close()
    return log, record


def test_a_file_that_is_one_empty_line_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(b"\n")
    log, record = reopen_and_append(path)
    assert log.recovered is None
    assert record["prev"] == GENESIS
    assert path.read_bytes().startswith(b"\n{")


def test_a_torn_first_record_is_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(b'{"ts":"2026')
    log, record = reopen_and_append(path)
    assert log.recovered == "torn last line of 11 bytes removed"
    assert record["prev"] == GENESIS
    assert verify(path).records == 1


def test_a_last_record_of_16_kib_lacking_its_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    first = record_line_of(MAX_RECORD_BYTES)
    path.write_bytes(first)
    log, record = reopen_and_append(path)
    assert log.recovered is None
    assert record["prev"] == json.loads(first)["hash"]
    assert verify(path).records == 2


def test_after_a_newline_is_added_at_open_the_file_still_rotates_at_the_exact_byte(tmp_path: Path) -> None:
    size = record_length(tmp_path)
    per_file = -(-4096 // size)
    path = tmp_path / "audit.log"
    write(path, per_file - 1)
    path.write_bytes(path.read_bytes()[:-1])  # the last record lost only its newline
    with AuditLog(path, max_bytes=per_file * size) as log:
        log.append(fields(0))
        assert not path.with_name("audit.log.1").exists()
        log.append(fields(1))
        assert path.with_name("audit.log.1").stat().st_size == per_file * size


def test_a_damaged_last_line_chains_to_the_one_good_record_before_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    [good] = write(path, 1)
    path.write_bytes(path.read_bytes() + b"damaged line\n")
    _, record = reopen_and_append(path)
    assert record["prev"] == good["hash"]


def test_a_current_file_of_damaged_lines_starts_a_new_chain_not_the_rotated_one(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path.with_name("audit.log.1"), 2)
    path.write_bytes(b"damaged line\n")
    _, record = reopen_and_append(path)
    assert record["prev"] == GENESIS


def test_recovery_stops_at_the_newest_rotated_file_with_any_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    older = write(path.with_name("audit.log.2"), 2)
    path.with_name("audit.log.1").write_bytes(b"damaged line\n")
    path.write_bytes(b"")
    _, record = reopen_and_append(path)
    assert record["prev"] == GENESIS
    path.with_name("audit.log.1").write_bytes(b"")  # an empty rotated file holds no head: look further
    path.write_bytes(b"")
    _, record = reopen_and_append(path)
    assert record["prev"] == older[-1]["hash"]


def test_a_log_larger_than_the_recovery_window_chains_to_its_last_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    prev, rows = GENESIS, list[bytes]()
    while sum(map(len, rows)) < 400 * 1024:
        rec = chained(prev, **fields(len(rows)))
        rows.append(canonical(rec) + b"\n")
        prev = rec["hash"]
    path.write_bytes(b"".join(rows))
    _, record = reopen_and_append(path)
    assert record["prev"] == prev
    assert verify(path).ok


def test_a_string_with_an_escape_closes_before_a_too_deep_value(tmp_path: Path) -> None:
    """After an escaped character the next quote closes the string: what follows is depth."""
    path = tmp_path / "audit.log"
    record = chained(GENESIS, _s="x\n", a=[[0], {"x": 0}, nest(15)])  # 17 deep in all
    path.write_bytes(canonical(record) + b"\n")
    assert verify(path).reason == "unreadable record (nested deeper than any audit record)"


def test_an_edited_marker_with_the_right_key_id_is_a_modified_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 1, key=KEY)
    rows = lines(path)
    rows[0] = rows[0].replace(b'"ts":"2', b'"ts":"1')
    path.write_bytes(b"".join(rows))
    result = verify(path, key=KEY)
    assert (result.first_bad_line, result.reason) == (
        1,
        "record does not match its hash (modified, or keyed with another key)",
    )


def test_a_symlinked_log_is_refused_with_a_reason_that_says_so(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_bytes(b"keep me")
    path = tmp_path / "audit.log"
    path.symlink_to(target)
    with pytest.raises(
        OSError, match=r"audit log .*audit\.log is a symbolic link; refusing to follow it$"
    ) as info:
        AuditLog(path)
    assert info.value.errno == errno.ELOOP
    assert target.read_bytes() == b"keep me"
