"""Acceptance (h): bad input over raw sockets never takes the broker down or disturbs other clients.

Each test opens a second client *before* sending the bad bytes (a raw connection and a confluent-kafka
producer) and checks afterwards that both still work, that the broker process is alive, and (at
teardown) that it never panicked."""

from __future__ import annotations

import random
import struct

import pytest

from conftest import BrokerFactory
from kafkawire import KafkaConn, i16, i32, parse_batches, record_batch, string
from util import consume_partition, create_topic, produce_records, unique_topic

CORRUPT_MESSAGE = 2


@pytest.fixture(scope="module")
def bad_broker(tmp_path_factory):
    """A broker of this module's own, so that a crash here cannot hide behind other tests."""
    f = BrokerFactory(tmp_path_factory.mktemp("bad-input"))
    b = f()
    yield b
    f.close()


@pytest.fixture
def witness(bad_broker):
    """A raw connection and a confluent-kafka producer opened before the bad input, checked after it."""
    from confluent_kafka import Producer

    topic = unique_topic("witness")
    create_topic(bad_broker.bootstrap, topic)
    raw = KafkaConn.to(bad_broker.bootstrap)
    assert 0 in raw.api_versions()
    prod = Producer({"bootstrap.servers": bad_broker.bootstrap, "acks": "all", "linger.ms": 0})
    assert topic in prod.list_topics(topic, timeout=10).topics
    yield
    assert bad_broker.running, f"the broker died\n{bad_broker.log_tail()}"
    # the connection opened before the bad input still works
    md = raw.metadata([topic])
    assert md["topics"][topic]["error"] == 0 and len(md["topics"][topic]["partitions"]) == 1
    raw.close()
    # and so does the client library: metadata, produce, consume
    assert topic in prod.list_topics(topic, timeout=10).topics
    got = []
    prod.produce(topic, key=b"k", value=b"after-bad-input", on_delivery=lambda err, msg: got.append((err, msg.offset())))
    assert prod.flush(15) == 0
    assert got == [(None, 0)], f"produce after bad input: {got}"
    recs = consume_partition(bad_broker.bootstrap, topic, 0, 0)
    assert [(o, k, v) for o, k, v, _ in recs] == [(0, b"k", b"after-bad-input")]


def test_truncated_frame_then_close(bad_broker, witness):
    c = KafkaConn.to(bad_broker.bootstrap)
    _, frame = c.frame(18, 0, b"")
    c.send_raw(i32(100) + frame[4:])      # declares 100 bytes, sends 10
    c.close()
    # also: truncated in the middle of the 4-byte length prefix
    c = KafkaConn.to(bad_broker.bootstrap)
    c.send_raw(b"\x00\x00")
    c.close()


def test_truncated_frame_then_hold_open(bad_broker, witness):
    """A client that stops mid-frame must not block anybody else (the witness checks run meanwhile)."""
    c = KafkaConn.to(bad_broker.bootstrap)
    c.send_raw(i32(1000) + b"\x00\x12\x00\x00")
    yield_check = KafkaConn.to(bad_broker.bootstrap)
    assert 3 in yield_check.api_versions()
    yield_check.close()
    c.close()


def test_frame_declaring_2_gib(bad_broker, witness):
    c = KafkaConn.to(bad_broker.bootstrap)
    c.send_raw(struct.pack(">i", 0x7FFFFFFF) + b"\x00\x12\x00\x00\x00\x00\x00\x01")
    # Kafka closes such a connection at once (size > socket.request.max.bytes), allocating nothing.
    assert c.closed_by_peer(10), "broker kept a connection open whose frame declares 2 GiB"
    c.close()
    c = KafkaConn.to(bad_broker.bootstrap)
    c.send_raw(struct.pack(">I", 0x80000000) + b"\x00" * 8)   # negative size
    assert c.closed_by_peer(10), "broker kept a connection open whose frame declares a negative size"
    c.close()


@pytest.mark.parametrize("kind", ["random", "http", "small-frame-random"])
def test_garbage_bytes(bad_broker, witness, kind):
    rnd = random.Random(42)
    if kind == "random":
        data = bytes(rnd.randrange(256) for _ in range(4096))
    elif kind == "http":
        data = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    else:  # a well-sized frame full of noise
        body = bytes(rnd.randrange(256) for _ in range(60))
        data = i32(len(body)) + body
    c = KafkaConn.to(bad_broker.bootstrap)
    c.send_raw(data)
    # Either an error answer or a closed connection; what matters is that nothing else is affected.
    c.closed_by_peer(2)
    c.close()


def test_unknown_api_key(bad_broker, witness):
    c = KafkaConn.to(bad_broker.bootstrap)
    corr, frame = c.frame(api_key=999, version=0, body=b"\x00\x01\x02\x03", corr=424242)
    c.send_raw(frame)
    c.sock.settimeout(10)
    try:
        resp = c.recv_frame()
    except (ConnectionError, OSError):
        resp = None     # closed: what Apache Kafka does for an unknown API key
    if resp is not None:
        (got,) = struct.unpack(">i", resp[:4])
        assert got == corr, f"answer to an unknown API key carries correlation id {got}, expected {corr}"
    c.close()
    # an unsupported version of a known API gets UNSUPPORTED_VERSION (35) in an ApiVersions v0 answer
    c = KafkaConn.to(bad_broker.bootstrap)
    corr, frame = c.frame(api_key=18, version=9999, body=b"", corr=77)
    c.send_raw(frame)
    resp = c.recv_frame()
    (got, err) = struct.unpack(">ih", resp[:6])
    assert (got, err) == (77, 35), f"ApiVersions v9999: correlation {got}, error {err}; Kafka answers 35 in v0 form"
    c.close()


def test_produce_with_bad_crc_is_rejected_and_not_appended(bad_broker, witness):
    topic = unique_topic("badcrc")
    create_topic(bad_broker.bootstrap, topic)
    good = record_batch([(b"k1", b"v1"), (b"k2", b"v2")])
    bad = record_batch([(b"x1", b"bad1"), (b"x2", b"bad2")], corrupt_crc=True)
    with KafkaConn.to(bad_broker.bootstrap) as c:
        # make sure the topic's leader is known to the broker as to us
        assert c.metadata([topic])["topics"][topic]["error"] == 0
        res = c.produce(topic, 0, bad)
        assert res[(topic, 0)]["error"] == CORRUPT_MESSAGE, f"produce with a wrong CRC answered {res}"
        err, _, end = c.list_offsets(topic, 0, -1)
        assert (err, end) == (0, 0), f"after a rejected batch the log end offset is {end} (error {err}), expected 0"
        # the connection is still usable, and a correct batch goes in at offset 0
        res = c.produce(topic, 0, good)
        assert res[(topic, 0)]["error"] == 0 and res[(topic, 0)]["base_offset"] == 0, res
        err, _, end = c.list_offsets(topic, 0, -1)
        assert (err, end) == (0, 2)
        f = c.fetch(topic, 0, 0)
        assert f["error"] == 0 and f["high_watermark"] == 2
        batches = parse_batches(f["records"])
        assert [r[2:] for b in batches for r in b["records"]] == [(b"k1", b"v1"), (b"k2", b"v2")]
        assert all(b["crc_ok"] for b in batches)
    recs = consume_partition(bad_broker.bootstrap, topic, 0, 0)
    assert [(o, k, v) for o, k, v, _ in recs] == [(0, b"k1", b"v1"), (1, b"k2", b"v2")]


def test_produce_with_truncated_batch_is_rejected(bad_broker, witness):
    """A batch whose declared length runs past the records field: CORRUPT_MESSAGE, nothing appended."""
    topic = unique_topic("shortbatch")
    create_topic(bad_broker.bootstrap, topic)
    batch = record_batch([(b"k", b"v" * 50)])
    with KafkaConn.to(bad_broker.bootstrap) as c:
        res = c.produce(topic, 0, batch[:-10])
        assert res[(topic, 0)]["error"] == CORRUPT_MESSAGE, f"truncated batch answered {res}"
        assert c.list_offsets(topic, 0, -1)[2] == 0
