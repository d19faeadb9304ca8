"""Ingest without a Kafka client (issue 7): HTTP POST, WebSocket, file collectors, transforms, schema.

Every record is read back with confluent-kafka (assign + seek, no group management)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from util import record_timing, unique_topic, wait_until

SALT = "pepper-e2e"


# -- helpers ---------------------------------------------------------------------------------------

def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 60):
    """(status, headers, parsed JSON or text) without raising on 4xx/5xx."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, hdrs, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, hdrs, raw = e.code, e.headers, e.read()
    try:
        return status, hdrs, json.loads(raw) if raw else None
    except ValueError:
        return status, hdrs, raw.decode(errors="replace")


def consumer(bootstrap: str):
    from confluent_kafka import Consumer
    return Consumer({"bootstrap.servers": bootstrap, "group.id": "ingest-e2e-unused", "enable.auto.commit": False,
                     "auto.offset.reset": "earliest", "fetch.max.bytes": 52_428_800})


def end_offset(bootstrap: str, topic: str, partition: int = 0) -> int:
    from confluent_kafka import TopicPartition
    c = consumer(bootstrap)
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
    finally:
        c.close()


def consume(bootstrap: str, topic: str, n: int, partition: int = 0, timeout: float = 120) -> list:
    """The first n records of topic-partition as (offset, key bytes, value bytes)."""
    from confluent_kafka import TopicPartition
    c = consumer(bootstrap)
    c.assign([TopicPartition(topic, partition, 0)])
    out = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            for m in c.consume(num_messages=10_000, timeout=1.0):
                if m.error():
                    continue
                out.append((m.offset(), m.key(), m.value()))
    finally:
        c.close()
    assert len(out) >= n, f"read {len(out)} of {n} records from {topic}-{partition} within {timeout}s"
    return out[:n] if len(out) == n else out


def salted(value: str) -> str:
    return hashlib.sha256(SALT.encode() + value.encode()).hexdigest()


def event(i: int) -> dict:
    return {"id": i, "user": f"user-{i % 97}", "msg": f"event number {i}"}


# -- HTTP --------------------------------------------------------------------------------------------

def test_curl_posts_100k_ndjson_events_read_back_in_order_with_keys(shared_broker, tmp_path):
    b = shared_broker
    topic = unique_topic("ingest-http")
    n = 100_000
    body = tmp_path / "events.ndjson"
    body.write_text("".join(json.dumps(event(i)) + "\n" for i in range(n)))
    t0 = time.monotonic()
    out = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "-X", "POST", "-H", "Content-Type: application/x-ndjson",
         "--data-binary", f"@{body}", f"{b.http_url}/ingest/{topic}?key=user"],
        capture_output=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    reply = json.loads(out.stdout)
    assert reply["count"] == n
    assert [(o["partition"], o["offset"]) for o in reply["offsets"]] == [(0, i) for i in range(n)]
    record_timing("ingest: curl 100k NDJSON events", f"{elapsed:.2f}s ({n / elapsed:,.0f} events/s)")

    records = consume(b.bootstrap, topic, n)
    assert len(records) == n
    for i, (offset, key, value) in enumerate(records):
        assert offset == i
        assert json.loads(value) == event(i), f"record {i}"
        assert key == f"user-{i % 97}".encode(), f"key of record {i}"


def test_json_object_array_header_key_and_explicit_partition(shared_broker):
    b = shared_broker
    topic = unique_topic("ingest-shapes")
    s, _, r = http("POST", f"{b.http_url}/ingest/{topic}", json.dumps({"k": "one", "v": 1}).encode(),
                   {"Content-Type": "application/json", "X-Weir-Key": "k"})
    assert s == 200 and r["offsets"] == [{"partition": 0, "offset": 0}], r
    s, _, r = http("POST", f"{b.http_url}/ingest/{topic}?partition=0&key=k",
                   json.dumps([{"k": "two"}, {"k": "three"}]).encode(), {"Content-Type": "application/json"})
    assert s == 200 and r["count"] == 2, r
    s, _, r = http("POST", f"{b.http_url}/ingest/{topic}?partition=5", b'{"a":1}')
    assert s == 400 and "partition 5" in r["error"], r
    recs = consume(b.bootstrap, topic, 3)
    assert [k for _, k, _ in recs] == [b"one", b"two", b"three"]


def test_malformed_line_7_is_refused_whole_and_names_the_line(shared_broker):
    b = shared_broker
    topic = unique_topic("ingest-bad")
    s, _, _ = http("POST", f"{b.http_url}/ingest/{topic}", b'{"seed": true}')
    assert s == 200
    lines = [json.dumps(event(i)) for i in range(10)]
    lines[6] = '{"id": 6, "msg": oops}'
    s, _, r = http("POST", f"{b.http_url}/ingest/{topic}", ("\n".join(lines) + "\n").encode(),
                   {"Content-Type": "application/x-ndjson"})
    assert s == 400, r
    assert r["error"].startswith("line 7:"), r
    assert end_offset(b.bootstrap, topic) == 1, "nothing of the refused batch may be appended"
    # The same body without the NDJSON content type is detected as NDJSON and refused the same way.
    s, _, r = http("POST", f"{b.http_url}/ingest/{topic}", ("\n".join(lines) + "\n").encode())
    assert s == 400 and "line 7" in r["error"], r
    assert end_offset(b.bootstrap, topic) == 1


def test_body_limit_unknown_topic_and_backpressure_statuses(broker_factory):
    b = broker_factory(extra_args=["--set", "auto.create.topics.enable=false", "--set", "ingest.max.body.bytes=1000",
                                   "--set", "ingest.max.in.flight.requests=1"])
    s, _, r = http("POST", f"{b.http_url}/ingest/nope", b'{"a": 1}')
    assert s == 404 and "nope" in r["error"], r
    s, _, _ = http("POST", f"{b.http_url}/ingest/nope", b'{"a": "' + b"x" * 2000 + b'"}')
    assert s == 413
    # 503 + Retry-After when more requests are in flight than allowed: many concurrent posts, one slot.
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    admin.create_topics([NewTopic("bp", 1, 1)])["bp"].result(30)
    statuses, retry_after = [], []

    def post():
        st, h, _ = http("POST", f"{b.http_url}/ingest/bp", b'[' + b",".join([b'{"a":1}'] * 100) + b']')
        statuses.append(st)
        if st == 503:
            retry_after.append(h.get("Retry-After"))
    threads = [threading.Thread(target=post) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses
    if 503 in statuses:
        assert all(ra == "1" for ra in retry_after), retry_after
    assert end_offset(b.bootstrap, "bp") == 100 * statuses.count(200)


# -- WebSocket ---------------------------------------------------------------------------------------

def test_websocket_streams_100k_events_with_acks(shared_broker):
    import websockets

    b = shared_broker
    topic = unique_topic("ingest-ws")
    n, per = 100_000, 1000

    async def run():
        acks = []
        url = f"ws://127.0.0.1:{b.http_port}/ingest/{topic}/ws?key=user"
        async with websockets.connect(url, max_size=16 * 1024 * 1024) as ws:
            async def reader():
                while len(acks) < n // per:
                    acks.append(json.loads(await ws.recv()))

            task = asyncio.create_task(reader())
            for start in range(0, n, per):
                await ws.send("".join(json.dumps(event(i)) + "\n" for i in range(start, start + per)))
            await asyncio.wait_for(task, 120)
            # One bad message gets an error ack and does not end the session.
            await ws.send('{"id": 1}\n{"id": }\n')
            bad = json.loads(await ws.recv())
            await ws.send(json.dumps(event(n)))
            after = json.loads(await ws.recv())
        return acks, bad, after

    t0 = time.monotonic()
    acks, bad, after = asyncio.run(run())
    elapsed = time.monotonic() - t0
    record_timing("ingest: WebSocket 100k events in 1000-event messages", f"{elapsed:.2f}s ({n / elapsed:,.0f} events/s)")
    assert [a["seq"] for a in acks] == list(range(1, n // per + 1))
    assert all(a["ok"] for a in acks), [a for a in acks if not a["ok"]][:3]
    offsets = [o["offset"] for a in acks for o in a["result"]["offsets"]]
    assert offsets == list(range(n))
    assert bad["ok"] is False and bad["error"].startswith("line 2:"), bad
    assert after["ok"] and after["result"]["offsets"] == [{"partition": 0, "offset": n}], after

    records = consume(b.bootstrap, topic, n + 1)
    for i, (offset, key, value) in enumerate(records):
        assert json.loads(value) == event(i), f"record {i}"
        assert key == f"user-{i % 97}".encode()


# -- transforms, schema, dead letters ----------------------------------------------------------------

def pipeline_config(path: Path, logs: Path) -> Path:
    path.write_text(f"""
[[ingest.topic]]
topic = "pii"
key_field = "id"
dead_letter_topic = "pii-dead"
schema = {{ type = "object", required = ["id", "email"], properties = {{ id = {{ type = "integer", minimum = 0 }} }} }}
transforms = [
  {{ op = "hash", field = "email", salt = "{SALT}" }},
  {{ op = "mask", field = "card", keep_last = 4 }},
  {{ op = "mask", field = "phone", keep_first = 3 }},
  {{ op = "drop", field = "password" }},
  {{ op = "rename", field = "name", to = "display_name" }},
]

[[ingest.file]]
name = "json-files"
path = "{logs}/*.json"
topic = "pii-files"
format = "json"
key_field = "id"
dead_letter_topic = "pii-files-dead"
schema = {{ type = "object", required = ["id"] }}
transforms = [ {{ op = "hash", field = "email", salt = "{SALT}" }} ]
poll_ms = 50
""")
    return path


def test_transforms_schema_and_dead_letters(broker_factory, tmp_path):
    logs = tmp_path / "jsonlogs"
    logs.mkdir()
    cfg = pipeline_config(tmp_path / "weir.toml", logs)
    b = broker_factory(extra_args=["--config", str(cfg)])
    good = [{"id": i, "email": f"user{i}@example.com", "card": "4111111111111111", "phone": "5551234567",
             "password": "hunter2", "name": f"N{i}"} for i in range(20)]
    bad = [{"email": "noid@example.com", "card": "4000000000000002"}, {"id": -5, "email": "neg@example.com"}]
    body = "".join(json.dumps(e) + "\n" for e in good[:10] + bad + good[10:])
    s, _, r = http("POST", f"{b.http_url}/ingest/pii", body.encode(), {"Content-Type": "application/x-ndjson"})
    assert s == 200, r
    assert r["count"] == 20 and r["dead_letters"] == 2, r

    stored = consume(b.bootstrap, "pii", 20)
    for (offset, key, value), src in zip(stored, good):
        v = json.loads(value)
        assert key == str(src["id"]).encode()
        assert v["email"] == salted(src["email"]) and len(v["email"]) == 64
        assert v["card"] == "************1111"
        assert v["phone"] == "555*******"
        assert "password" not in v
        assert v["display_name"] == src["name"] and "name" not in v
    dead = [json.loads(v) for _, _, v in consume(b.bootstrap, "pii-dead", 2)]
    assert "missing required property \"id\"" in dead[0]["reason"], dead[0]
    assert "minimum" in dead[1]["reason"], dead[1]
    # Dead letters are transformed too: no clear-text personal data in any topic.
    assert dead[0]["record"]["email"] == salted("noid@example.com")
    assert dead[0]["record"]["card"] == "************0002"

    # The file collector declared in [[ingest.file]]: JSON lines, schema, dead letters, hashing.
    (logs / "a.json").write_text('{"id": 1, "email": "f@x.io"}\nnot json\n{"email": "x@x.io"}\n{"id": 2}\n')
    files = consume(b.bootstrap, "pii-files", 2, timeout=30)
    assert [json.loads(v) for _, _, v in files] == [{"id": 1, "email": salted("f@x.io")}, {"id": 2}]
    assert [k for _, k, _ in files] == [b"1", b"2"]
    dead = [json.loads(v) for _, _, v in consume(b.bootstrap, "pii-files-dead", 2, timeout=30)]
    assert "invalid JSON" in dead[0]["reason"] and dead[0]["record"] == "not json"
    assert "required" in dead[1]["reason"] and dead[1]["record"]["email"] == salted("x@x.io")


# -- file collectors ---------------------------------------------------------------------------------

def read_lines(bootstrap: str, topic: str, n: int, timeout: float = 60) -> list[str]:
    wait_until(lambda: end_offset(bootstrap, topic) >= n, timeout, f"{n} records in {topic}", interval=0.2)
    return [v.decode() for _, _, v in consume(bootstrap, topic, end_offset(bootstrap, topic))]


def line(i: int) -> str:
    return f"{i:07d} the quick brown fox jumps over the lazy dog"


def append_lines(path: Path, lo: int, hi: int) -> None:
    with open(path, "a") as f:
        f.write("".join(line(i) + "\n" for i in range(lo, hi)))


def test_file_collector_rotation_copytruncate_and_sigkill(broker, tmp_path):
    b = broker
    logs = tmp_path / "logs"
    logs.mkdir()
    app = logs / "app.log"
    topic = "files"
    s, _, r = http("POST", f"{b.http_url}/api/collectors",
                   json.dumps({"name": "app", "path": f"{logs}/*.log", "topic": topic, "poll_ms": 50}).encode())
    assert s == 201, r
    s, _, r = http("POST", f"{b.http_url}/api/collectors",
                   json.dumps({"name": "app", "path": f"{logs}/*.log", "topic": topic}).encode())
    assert s == 409, r
    s, _, r = http("GET", f"{b.http_url}/api/collectors")
    assert [c["name"] for c in r["collectors"]] == ["app"]

    append_lines(app, 0, 1000)
    assert read_lines(b.bootstrap, topic, 1000) == [line(i) for i in range(1000)]

    # Rename-and-recreate: lines written just before the rename exist only in the renamed file.
    append_lines(app, 1000, 1500)
    os.rename(app, logs / "app.log.1")
    append_lines(app, 1500, 2000)
    assert read_lines(b.bootstrap, topic, 2000) == [line(i) for i in range(2000)]

    # Copytruncate (once the collector has read the file, as logrotate's copytruncate assumes).
    append_lines(app, 2000, 2500)
    assert read_lines(b.bootstrap, topic, 2500)[-1] == line(2499)
    shutil.copy(app, logs / "app.log.2")
    with open(app, "r+") as f:
        f.truncate(0)
    append_lines(app, 2500, 3000)
    assert read_lines(b.bootstrap, topic, 3000) == [line(i) for i in range(3000)]

    # SIGKILL while lines keep coming, then restart: the collector (added through the API) comes back
    # from its saved definition and resumes from its checkpoint: nothing lost, nothing twice.
    stop = threading.Event()

    def writer():
        i = 3000
        while i < 8000:
            append_lines(app, i, i + 50)
            i += 50
            time.sleep(0.005)
        stop.set()

    w = threading.Thread(target=writer)
    w.start()
    time.sleep(0.4)
    assert b.kill() == -signal.SIGKILL
    time.sleep(0.2)
    b.start()
    w.join()
    got = read_lines(b.bootstrap, topic, 8000, timeout=90)
    assert len(got) == len(set(got)), f"duplicated lines: {len(got) - len(set(got))}"
    assert got == [line(i) for i in range(8000)]

    s, _, r = http("GET", f"{b.http_url}/api/collectors")
    assert [(c["name"], c["origin"]) for c in r["collectors"]] == [("app", "api")]
    s, _, _ = http("DELETE", f"{b.http_url}/api/collectors/app")
    assert s == 204
    s, _, _ = http("DELETE", f"{b.http_url}/api/collectors/app")
    assert s == 404
    b.restart()
    s, _, r = http("GET", f"{b.http_url}/api/collectors")
    assert r["collectors"] == []
