"""Round trips (admin create topic -> produce -> consume from the beginning) with each Python client.

Each function returns (produced, consumed, timings) in the shapes util.verify_roundtrip expects:
  produced: {partition: [(offset, i), ...]}   from the client's delivery reports / record metadata
  consumed: {partition: [(offset, key, value-digest, headers), ...]}  in the order the client returned them
No consumer groups: consumers use assign() + seek to the beginning.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections import defaultdict

from util import BIG_INDEX, digest_value, norm_headers, record_headers, record_key, record_value

PARTITIONS = 8
TOPIC_CONFIG = {"max.message.bytes": "4194304"}
MAX_REQUEST = 5 * 1024 * 1024
CONSUME_TIMEOUT = 120.0


def _key_str(k):
    return None if k is None else k.decode("utf-8", "replace")


# ---------------------------------------------------------------- confluent-kafka (librdkafka)
def confluent_roundtrip(bootstrap: str, topic: str, codec: str, n: int, big: bytes):
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    timings = {}
    t0 = time.monotonic()
    admin = AdminClient({"bootstrap.servers": bootstrap})
    fs = admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1, config=TOPIC_CONFIG)],
                             operation_timeout=30, request_timeout=30)
    fs[topic].result(timeout=30)
    timings["create_topic_s"] = time.monotonic() - t0

    t0 = time.monotonic()
    p = Producer({
        "bootstrap.servers": bootstrap,
        "compression.type": codec,
        "acks": "all",
        "linger.ms": 20,
        "batch.num.messages": 10000,
        "batch.size": 2_000_000,
        "message.max.bytes": 4_000_000,
        "queue.buffering.max.messages": 200_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "message.timeout.ms": 60_000,
    })
    produced = defaultdict(list)
    errors = []

    def on_delivery(i, err, msg):
        if err is not None:
            errors.append((i, str(err)))
        else:
            produced[msg.partition()].append((msg.offset(), i))

    for i in range(n):
        kw = dict(key=record_key(i), value=record_value(codec, i, big), on_delivery=functools.partial(on_delivery, i))
        h = record_headers(codec, i)
        if h:
            kw["headers"] = h
        while True:
            try:
                p.produce(topic, **kw)
                break
            except BufferError:
                p.poll(0.05)
        if i % 5000 == 0:
            p.poll(0)
    left = p.flush(90)
    assert left == 0, f"{left} records still undelivered after flush(90)"
    assert not errors, f"{len(errors)} delivery errors, first: {errors[:3]}"
    timings["produce_s"] = time.monotonic() - t0

    t0 = time.monotonic()
    ends = {part: len(lst) for part, lst in produced.items()}
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"unused-{uuid.uuid4().hex}",   # required by the client; assign() uses no group
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "fetch.wait.max.ms": 100,
    })
    consumed = defaultdict(list)
    try:
        c.assign([TopicPartition(topic, part, OFFSET_BEGINNING) for part in range(PARTITIONS)])
        eof = {}
        deadline = time.monotonic() + CONSUME_TIMEOUT
        while time.monotonic() < deadline:
            for m in c.consume(10000, timeout=0.5):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        eof[m.partition()] = m.offset()
                        continue
                    raise AssertionError(f"consume error: {m.error()}")
                consumed[m.partition()].append((m.offset(), _key_str(m.key()), digest_value(m.value()),
                                                norm_headers(m.headers())))
            if all(eof.get(part, -1) >= ends.get(part, 0) for part in range(PARTITIONS)):
                break
    finally:
        c.close()
    timings["consume_s"] = time.monotonic() - t0
    return dict(produced), dict(consumed), timings


# ---------------------------------------------------------------- kafka-python
def kafka_python_roundtrip(bootstrap: str, topic: str, codec: str, n: int, big: bytes):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient

    timings = {}
    t0 = time.monotonic()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
    try:
        admin.create_topics({topic: {"num_partitions": PARTITIONS, "replication_factor": 1, "configs": TOPIC_CONFIG}},
                            timeout_ms=30000, wait_for_metadata=True)
    finally:
        admin.close()
    timings["create_topic_s"] = time.monotonic() - t0

    t0 = time.monotonic()
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type=None if codec == "none" else codec,
                      linger_ms=20, batch_size=256 * 1024, max_request_size=MAX_REQUEST,
                      request_timeout_ms=60000)
    futures = []
    try:
        for i in range(n):
            futures.append(p.send(topic, key=record_key(i), value=record_value(codec, i, big),
                                  headers=record_headers(codec, i)))
        p.flush(timeout=120)
    finally:
        p.close(timeout=30)
    produced = defaultdict(list)
    for i, f in enumerate(futures):
        md = f.get(timeout=1)
        produced[md.partition].append((md.offset, i))
    timings["produce_s"] = time.monotonic() - t0

    t0 = time.monotonic()
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                      auto_offset_reset="earliest", fetch_max_wait_ms=100)
    consumed = defaultdict(list)
    try:
        tps = [TopicPartition(topic, part) for part in range(PARTITIONS)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        ends = c.end_offsets(tps)
        deadline = time.monotonic() + CONSUME_TIMEOUT
        while time.monotonic() < deadline:
            for tp, recs in c.poll(timeout_ms=500, max_records=10000).items():
                for r in recs:
                    consumed[tp.partition].append((r.offset, _key_str(r.key), digest_value(r.value),
                                                   norm_headers(r.headers)))
            if all(c.position(tp) >= ends[tp] for tp in tps):
                break
    finally:
        c.close()
    timings["consume_s"] = time.monotonic() - t0
    return dict(produced), dict(consumed), timings


# ---------------------------------------------------------------- aiokafka
def aiokafka_roundtrip(bootstrap: str, topic: str, codec: str, n: int, big: bytes):
    return asyncio.run(asyncio.wait_for(_aiokafka_roundtrip(bootstrap, topic, codec, n, big), 400))


async def _aiokafka_roundtrip(bootstrap, topic, codec, n, big):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    timings = {}
    t0 = time.monotonic()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
    await admin.start()
    try:
        resp = await admin.create_topics([NewTopic(topic, PARTITIONS, 1, topic_configs=TOPIC_CONFIG)], timeout_ms=30000)
        errs = [t for t in getattr(resp, "topic_errors", getattr(resp, "topics", [])) if t[1] != 0]
        assert not errs, f"CreateTopics errors: {errs}"
    finally:
        await admin.close()
    timings["create_topic_s"] = time.monotonic() - t0

    t0 = time.monotonic()
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type=None if codec == "none" else codec,
                         linger_ms=20, max_batch_size=256 * 1024, max_request_size=MAX_REQUEST,
                         request_timeout_ms=60000)
    await p.start()
    futures = []
    try:
        for i in range(n):
            futures.append(await p.send(topic, key=record_key(i), value=record_value(codec, i, big),
                                        headers=record_headers(codec, i)))
        await p.flush()
        mds = await asyncio.gather(*futures)
    finally:
        await p.stop()
    produced = defaultdict(list)
    for i, md in enumerate(mds):
        produced[md.partition].append((md.offset, i))
    timings["produce_s"] = time.monotonic() - t0

    t0 = time.monotonic()
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                         auto_offset_reset="earliest", fetch_max_wait_ms=100)
    await c.start()
    consumed = defaultdict(list)
    try:
        tps = [TopicPartition(topic, part) for part in range(PARTITIONS)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        ends = await c.end_offsets(tps)
        deadline = time.monotonic() + CONSUME_TIMEOUT
        while time.monotonic() < deadline:
            batch = await c.getmany(timeout_ms=500, max_records=10000)
            for tp, recs in batch.items():
                for r in recs:
                    consumed[tp.partition].append((r.offset, _key_str(r.key), digest_value(r.value),
                                                   norm_headers(r.headers)))
            positions = [await c.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps)):
                break
    finally:
        await c.stop()
    timings["consume_s"] = time.monotonic() - t0
    return dict(produced), dict(consumed), timings


PY_CLIENTS = {
    "confluent-kafka": confluent_roundtrip,
    "kafka-python": kafka_python_roundtrip,
    "aiokafka": aiokafka_roundtrip,
}
