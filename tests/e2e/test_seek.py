"""Acceptance (c): a consumer that seeks to an offset inside a record batch reads on from exactly there,
without a hang or a lost record, also inside the LAST batch of the partition (where a broker that
answers from the next batch boundary returns nothing forever)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from kafkawire import KafkaConn, parse_batches, record_batch
from util import create_topic, produce_records, unique_topic

TIMEOUT = 30


def _expect(lo, hi):
    return [(o, f"v{o}".encode()) for o in range(lo, hi)]


def _produce_one_batch(bootstrap, topic, lo, hi, codec):
    """Records lo..hi-1 (value v<offset>) in ONE batch: long linger, a single flush."""
    res = produce_records(bootstrap, topic, [(0, f"k{o}".encode(), f"v{o}".encode()) for o in range(lo, hi)],
                          conf={"linger.ms": 1000, "batch.num.messages": 1000, "compression.type": codec})
    assert [off for _, off in res] == list(range(lo, hi)), f"delivery offsets {res}"


@pytest.fixture(scope="module", params=["none", "gzip", "snappy", "lz4", "zstd"])
def two_batches(request, shared_broker):
    """A 1-partition topic holding exactly two batches: offsets 0..9 and 10..19."""
    codec = request.param
    bootstrap = shared_broker.bootstrap
    topic = unique_topic(f"seek-{codec}")
    create_topic(bootstrap, topic)
    with KafkaConn.to(bootstrap) as c:
        # hand-built batches, so that the batch boundaries are exactly known
        for lo in (0, 10):
            batch = record_batch([(f"k{o}".encode(), f"v{o}".encode()) for o in range(lo, lo + 10)], codec=codec)
            res = c.produce(topic, 0, batch)[(topic, 0)]
            assert (res["error"], res["base_offset"]) == (0, lo), f"setup: produce of batch {lo}..{lo + 9}: {res}"
        f = c.fetch(topic, 0, 0)
        spans = [(b["base_offset"], b["last_offset"]) for b in parse_batches(f["records"])]
    assert spans == [(0, 9), (10, 19)], f"setup: expected two batches 0-9 and 10-19, broker holds {spans}"
    return bootstrap, topic, codec


# ---- per-client "seek to offset, read n, then produce one more and read it" ----------------------
def _confluent(bootstrap, topic, offset, n, produce_more):
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"unused-{uuid.uuid4().hex}",
                  "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    out = []
    try:
        c.assign([TopicPartition(topic, 0, offset)])
        for want in ((n, n + 1) if produce_more else (n,)):
            deadline = time.monotonic() + TIMEOUT
            while len(out) < want and time.monotonic() < deadline:
                for m in c.consume(100, timeout=0.2):
                    assert not m.error(), m.error()
                    out.append((m.offset(), m.value()))
            if want == n:
                assert len(out) == n, f"after seek to {offset}: got {out}, expected {n} records"
                if produce_more:
                    produce_more()
        # nothing beyond
        out += [(m.offset(), m.value()) for m in c.consume(100, timeout=0.5) if not m.error()]
    finally:
        c.close()
    return out


def _kafka_python(bootstrap, topic, offset, n, produce_more):
    from kafka import KafkaConsumer, TopicPartition

    tp = TopicPartition(topic, 0)
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100)
    out = []
    try:
        c.assign([tp])
        c.seek(tp, offset)
        for want in ((n, n + 1) if produce_more else (n,)):
            deadline = time.monotonic() + TIMEOUT
            while len(out) < want and time.monotonic() < deadline:
                for recs in c.poll(timeout_ms=200).values():
                    out += [(r.offset, r.value) for r in recs]
            if want == n:
                assert len(out) == n, f"after seek to {offset}: got {out}, expected {n} records"
                if produce_more:
                    produce_more()
        for recs in c.poll(timeout_ms=500).values():
            out += [(r.offset, r.value) for r in recs]
    finally:
        c.close()
    return out


def _aiokafka(bootstrap, topic, offset, n, produce_more):
    async def run():
        from aiokafka import AIOKafkaConsumer, TopicPartition

        tp = TopicPartition(topic, 0)
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             fetch_max_wait_ms=100)
        await c.start()
        out = []
        try:
            c.assign([tp])
            c.seek(tp, offset)
            for want in ((n, n + 1) if produce_more else (n,)):
                deadline = time.monotonic() + TIMEOUT
                while len(out) < want and time.monotonic() < deadline:
                    for recs in (await c.getmany(timeout_ms=200)).values():
                        out += [(r.offset, r.value) for r in recs]
                if want == n:
                    assert len(out) == n, f"after seek to {offset}: got {out}, expected {n} records"
                    if produce_more:
                        await asyncio.get_running_loop().run_in_executor(None, produce_more)
            for recs in (await c.getmany(timeout_ms=500)).values():
                out += [(r.offset, r.value) for r in recs]
        finally:
            await c.stop()
        return out

    return asyncio.run(asyncio.wait_for(run(), 120))


CLIENTS = {"confluent-kafka": _confluent, "kafka-python": _kafka_python, "aiokafka": _aiokafka}


@pytest.mark.parametrize("client", list(CLIENTS))
def test_seek_inside_first_batch(two_batches, client):
    bootstrap, topic, codec = two_batches
    # seek to 5 (inside batch 0..9): exactly 5..19, nothing before 5, no duplicates, nothing after
    out = CLIENTS[client](bootstrap, topic, 5, 15, None)
    assert out == _expect(5, 20), f"{client}/{codec}: seek to 5 returned {out}"


@pytest.mark.parametrize("client", list(CLIENTS))
def test_seek_inside_last_batch_then_new_record(shared_broker, client):
    """Own topic (records get appended): seek to 15 inside the last batch 10..19, read 15..19, then a
    record produced while the consumer waits at the end arrives (offset 20)."""
    bootstrap = shared_broker.bootstrap
    topic = unique_topic(f"seeklast-{client}")
    create_topic(bootstrap, topic)
    with KafkaConn.to(bootstrap) as c:
        for lo in (0, 10):
            batch = record_batch([(f"k{o}".encode(), f"v{o}".encode()) for o in range(lo, lo + 10)], codec="lz4")
            res = c.produce(topic, 0, batch)[(topic, 0)]
            assert (res["error"], res["base_offset"]) == (0, lo), f"setup: produce of batch {lo}..{lo + 9}: {res}"

    def produce_more():
        _produce_one_batch(bootstrap, topic, 20, 21, "none")

    out = CLIENTS[client](bootstrap, topic, 15, 5, produce_more)
    assert out == _expect(15, 21), f"{client}: seek to 15 then one new record returned {out}"


def test_raw_fetch_inside_batch_returns_whole_batch(two_batches):
    """The broker side of it: Fetch at offset 5 returns the whole batch 0..9 (clients drop 0..4),
    and at 15 the whole batch 10..19 — never an empty answer for an offset below the high watermark."""
    bootstrap, topic, _ = two_batches
    with KafkaConn.to(bootstrap) as c:
        for off, first in ((5, (0, 9)), (9, (0, 9)), (15, (10, 19)), (19, (10, 19))):
            f = c.fetch(topic, 0, off)
            assert f["error"] == 0 and f["high_watermark"] == 20
            spans = [(b["base_offset"], b["last_offset"]) for b in parse_batches(f["records"])]
            assert spans and spans[0] == first, f"Fetch at {off}: batches {spans}, expected first {first}"
        f = c.fetch(topic, 0, 20, max_wait_ms=50)
        assert f["error"] == 0 and f["records"] == b"", "Fetch at the log end must be empty"
        f = c.fetch(topic, 0, 21, max_wait_ms=50)
        assert f["error"] == 1, f"Fetch beyond the log end: error {f['error']}, expected OFFSET_OUT_OF_RANGE (1)"
