"""Shared helpers for Weir's end-to-end tests: names, ports, waiting, record content, comparison."""

from __future__ import annotations

import hashlib
import itertools
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable

TESTS_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = TESTS_DIR.parent
NODE_DIR = TESTS_DIR / "node"

_counter = itertools.count()

# Timings of client round trips etc., printed by conftest at the end of the run (before pytest's summary line).
TIMINGS: list[tuple[str, str]] = []


def record_timing(name: str, text: str) -> None:
    TIMINGS.append((name, text))


def unique_topic(prefix: str = "t") -> str:
    """A topic name no other test (or earlier run against the same broker) uses."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:8]}"


_given_ports: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, and never one this process handed out before: the
    kernel may return a just-closed port again, and a cluster asks for nine at once (two
    nodes given the same port fail to start)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _given_ports:
            _given_ports.add(port)
            return port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(pred: Callable[[], object], timeout: float, what: str, interval: float = 0.1):
    """Poll pred() until it returns something truthy; raise AssertionError after timeout."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - report the last one
            last_exc = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))


# ---------------------------------------------------------------- record content
# Deterministic content shared by every client's round trip (and by tests/node/kafkajs_roundtrip.js,
# which implements the same rules: keep both in sync).
N_RECORDS = 100_000
BIG_INDEX = 4242          # this record's value is 1 MiB of incompressible bytes
BIG_SIZE = 1 << 20
CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


def big_value(codec: str, i: int) -> bytes:
    """1 MiB of incompressible, deterministic bytes: SHA-256 in counter mode."""
    out = bytearray()
    j = 0
    while len(out) < BIG_SIZE:
        out += hashlib.sha256(f"{codec}-{i}-{j}".encode()).digest()
        j += 1
    return bytes(out[:BIG_SIZE])


def record_key(i: int) -> bytes:
    return f"k{i % 1000}".encode()


def record_value(codec: str, i: int, big: bytes | None = None) -> bytes | None:
    if i % 100 == 0:
        return None
    if i == BIG_INDEX:
        return big if big is not None else big_value(codec, i)
    return f"{codec}-{i}".encode()


def record_headers(codec: str, i: int) -> list[tuple[str, bytes]]:
    if i % 10 == 0:
        return [("idx", str(i).encode()), ("codec", codec.encode())]
    return []


def digest_value(v: bytes | None):
    """Small values compare as themselves; large ones by SHA-256 (keeps reports readable)."""
    if v is None:
        return None
    if len(v) > 256:
        return f"sha256:{hashlib.sha256(v).hexdigest()}:len={len(v)}"
    return v.decode("utf-8", "replace")


def norm_headers(h) -> tuple:
    if not h:
        return ()
    return tuple((k, v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else v) for k, v in h)


def expected_record(codec: str, i: int, big: bytes) -> tuple:
    """(key, value-digest, headers) of record i."""
    return (record_key(i).decode(), digest_value(record_value(codec, i, big)), norm_headers(record_headers(codec, i)))


def verify_roundtrip(codec: str, n: int, produced: dict, consumed: dict, big: bytes) -> None:
    """Check a round trip exactly.

    produced: {partition: [(offset, i), ...]} in production order (from delivery reports)
    consumed: {partition: [(offset, key-str|None, value-digest, headers-tuple), ...]} in consumption order
    """
    # every record acknowledged exactly once
    all_i = sorted(i for lst in produced.values() for _, i in lst)
    complete = all_i == list(range(n))   # bools, not list comparisons: no 100,000-item diffs from pytest
    assert complete, f"delivery reports cover {len(all_i)} records, expected exactly 0..{n - 1} once each"
    for p, lst in produced.items():
        # production order (i) within a partition == offset order, offsets dense from 0 (fresh topic)
        in_production_order = [o for o, _ in sorted(lst, key=lambda x: x[1])]
        ordered = in_production_order == sorted(in_production_order)
        assert ordered, (
            f"partition {p}: offsets are not increasing in production order")
        offsets = sorted(o for o, _ in lst)
        dense = offsets == list(range(len(offsets)))
        assert dense, (
            f"partition {p}: offsets {offsets[:5]}..{offsets[-5:]} are not exactly 0..{len(offsets) - 1}")
    assert set(consumed) <= set(produced) | set(range(64)), "consumed unknown partitions"
    for p in sorted(set(produced) | set(consumed)):
        exp = [(o,) + expected_record(codec, i, big) for o, i in sorted(produced.get(p, []))]
        got = [tuple(r) for r in consumed.get(p, [])]
        if exp != got:
            for idx, (e, g) in enumerate(zip(exp, got)):
                if e != g:
                    raise AssertionError(f"partition {p}: record #{idx} differs:\n expected {e}\n consumed {g}")
            raise AssertionError(f"partition {p}: consumed {len(got)} records, expected {len(exp)}; "
                                 f"last expected {exp[-1:]}, last consumed {got[-1:]}")


def chunks(it: Iterable, size: int):
    buf = []
    for x in it:
        buf.append(x)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


# ---------------------------------------------------------------- small confluent-kafka helpers
def create_topic(bootstrap: str, topic: str, partitions: int = 1, config: dict | None = None, timeout: float = 30):
    """Create a topic with confluent-kafka's AdminClient and wait for the result."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    fs = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1, config=config or {})],
                             operation_timeout=timeout, request_timeout=timeout)
    fs[topic].result(timeout=timeout)


def produce_records(bootstrap: str, topic: str, records, conf: dict | None = None, timeout: float = 60) -> list:
    """Produce [(partition|None, key, value[, timestamp_ms])] with confluent-kafka; returns per record
    (partition, offset) from the delivery reports, raising on any delivery error."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, **(conf or {})})
    results: list = [None] * len(records)

    def cb(idx, err, msg):
        results[idx] = err if err is not None else (msg.partition(), msg.offset())

    for idx, rec in enumerate(records):
        part, key, value = rec[:3]
        kw = {"key": key, "value": value, "on_delivery": lambda err, msg, idx=idx: cb(idx, err, msg)}
        if part is not None:
            kw["partition"] = part
        if len(rec) > 3 and rec[3] is not None:
            kw["timestamp"] = rec[3]
        p.produce(topic, **kw)
    left = p.flush(timeout)
    assert left == 0, f"{left} records not delivered within {timeout}s"
    errs = [(i, r) for i, r in enumerate(results) if not isinstance(r, tuple)]
    assert not errs, f"delivery errors: {errs[:5]}"
    return results


def consume_partition(bootstrap: str, topic: str, partition: int, start_offset, expect: int | None = None,
                      timeout: float = 30, conf: dict | None = None) -> list:
    """Read one partition with confluent-kafka (assign, no group) from start_offset until its end
    (partition EOF) or until `expect` records arrived; returns [(offset, key, value, timestamp_ms)]."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"unused-{uuid.uuid4().hex}",
                  "enable.auto.commit": False, "enable.partition.eof": True, "fetch.wait.max.ms": 100,
                  **(conf or {})})
    out = []
    try:
        c.assign([TopicPartition(topic, partition, start_offset)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    if expect is None or len(out) >= expect:
                        break
                    continue
                raise AssertionError(f"consume error: {m.error()}")
            out.append((m.offset(), m.key(), m.value(), m.timestamp()[1]))
            if expect is not None and len(out) >= expect:
                break
        else:
            raise AssertionError(f"timed out after {timeout}s reading {topic}[{partition}] from {start_offset}: "
                                 f"got {len(out)} records" + (f", expected {expect}" if expect is not None else ""))
    finally:
        c.close()
    return out
