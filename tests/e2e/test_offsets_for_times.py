"""Acceptance (d): ListOffsets by timestamp (offsets_for_times) returns the first offset whose timestamp
is >= the target, across batch boundaries, with -1 when no record is that late; earliest/latest too."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from kafkawire import KafkaConn
from util import create_topic, produce_records, unique_topic


@pytest.fixture(scope="module")
def timed_topic(shared_broker):
    """One partition; offsets 0..29 at base + 1000*i in three batches of ten, then a fourth batch
    (offsets 30..32) with timestamps out of order: base+40000, base+35000, base+45000."""
    bootstrap = shared_broker.bootstrap
    topic = unique_topic("times")
    create_topic(bootstrap, topic)
    base = (int(time.time() * 1000) - 3_600_000) // 1000 * 1000
    for lo in (0, 10, 20):
        res = produce_records(bootstrap, topic, [(0, b"k", f"v{i}".encode(), base + 1000 * i) for i in range(lo, lo + 10)],
                              conf={"linger.ms": 500})
        assert [o for _, o in res] == list(range(lo, lo + 10))
    res = produce_records(bootstrap, topic, [(0, b"k", b"v30", base + 40000), (0, b"k", b"v31", base + 35000),
                                             (0, b"k", b"v32", base + 45000)], conf={"linger.ms": 500})
    assert [o for _, o in res] == [30, 31, 32]
    return bootstrap, topic, base


# (target - base, expected offset, expected timestamp - base or None)
CASES = [
    (-100_000, 0, 0),
    (0, 0, 0),
    (1, 1, 1000),
    (5000, 5, 5000),
    (5500, 6, 6000),
    (9001, 10, 10000),     # first record of the second batch
    (10000, 10, 10000),
    (19999, 20, 20000),
    (29000, 29, 29000),
    (29001, 30, 40000),    # into the out-of-order batch: its first record (ts 40000) is the first >= target
    (36000, 30, 40000),
    (41000, 32, 45000),
    (45000, 32, 45000),
]


def test_offsets_for_times_confluent(timed_topic):
    bootstrap, topic, base = timed_topic
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused-times", "enable.auto.commit": False})
    try:
        for delta, want, _ in CASES:
            (tp,) = c.offsets_for_times([TopicPartition(topic, 0, base + delta)], timeout=10)
            assert tp.error is None and tp.offset == want, f"offsets_for_times(base{delta:+d}) = {tp.offset}, expected {want}"
        (tp,) = c.offsets_for_times([TopicPartition(topic, 0, base + 45001)], timeout=10)
        assert tp.offset == -1, f"no record that late: expected -1 (end), got {tp.offset}"
        assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, 33)
    finally:
        c.close()


def test_offsets_for_times_kafka_python(timed_topic):
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP

    bootstrap, topic, base = timed_topic
    tp = KTP(topic, 0)
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        for delta, want, want_ts in CASES:
            r = c.offsets_for_times({tp: base + delta})[tp]
            assert r is not None and (r.offset, r.timestamp) == (want, base + want_ts), (
                f"offsets_for_times(base{delta:+d}) = {r}, expected offset {want} timestamp base+{want_ts}")
        assert c.offsets_for_times({tp: base + 45001})[tp] is None
        assert c.beginning_offsets([tp])[tp] == 0
        assert c.end_offsets([tp])[tp] == 33
    finally:
        c.close()


def test_list_offsets_raw_v1(timed_topic):
    bootstrap, topic, base = timed_topic
    with KafkaConn.to(bootstrap) as c:
        for delta, want, want_ts in CASES:
            assert c.list_offsets(topic, 0, base + delta) == (0, base + want_ts, want), f"ListOffsets(base{delta:+d})"
        assert c.list_offsets(topic, 0, base + 45001) == (0, -1, -1)
        assert c.list_offsets(topic, 0, -2)[::2] == (0, 0)
        assert c.list_offsets(topic, 0, -1)[::2] == (0, 33)
