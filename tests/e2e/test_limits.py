"""Acceptance (g): the topic config max.message.bytes is enforced with MESSAGE_TOO_LARGE; with
auto.create.topics.enable=false a missing topic is UNKNOWN_TOPIC_OR_PARTITION (and is not created),
while with the default a producer's Metadata request creates it (num.partitions from --set)."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import KafkaError, Producer

from kafkawire import KafkaConn, record_batch
from util import consume_partition, create_topic, produce_records, unique_topic

MESSAGE_TOO_LARGE = 10
UNKNOWN_TOPIC_OR_PARTITION = 3


def _produce_one(bootstrap, topic, value, **conf):
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0, "retries": 0,
                  "message.timeout.ms": 15000, **conf})
    out = []
    p.produce(topic, key=b"k", value=value, on_delivery=lambda err, msg: out.append((err, msg.offset())))
    assert p.flush(30) == 0, "no delivery report within 30s"
    return out[0]


def test_max_message_bytes_confluent(bootstrap):
    topic = unique_topic("maxbytes")
    create_topic(bootstrap, topic, config={"max.message.bytes": "10000"})
    err, _ = _produce_one(bootstrap, topic, b"x" * 20000)
    assert err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE, f"20 kB record to a 10 kB topic: {err}"
    err, off = _produce_one(bootstrap, topic, b"y" * 5000)
    assert err is None and off == 0, f"5 kB record: {err}, offset {off} (the rejected record must not take an offset)"
    recs = consume_partition(bootstrap, topic, 0, 0)
    assert [(o, v) for o, _k, v, _ in recs] == [(0, b"y" * 5000)]


def test_max_message_bytes_raw_and_kafka_python(bootstrap):
    from kafka import KafkaProducer
    from kafka.errors import MessageSizeTooLargeError

    topic = unique_topic("maxbytes-kp")
    create_topic(bootstrap, topic, config={"max.message.bytes": "10000"})
    with KafkaConn.to(bootstrap) as c:
        res = c.produce(topic, 0, record_batch([(b"k", b"z" * 20000)]))
        assert res[(topic, 0)]["error"] == MESSAGE_TOO_LARGE, res
        res = c.produce(topic, 0, record_batch([(b"k", b"z" * 9000)]))
        assert res[(topic, 0)]["error"] == 0 and res[(topic, 0)]["base_offset"] == 0, res
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", retries=0, max_request_size=1 << 20)
    try:
        fut = p.send(topic, key=b"k", value=b"w" * 20000, partition=0)
        with pytest.raises(MessageSizeTooLargeError):
            fut.get(timeout=30)
        md = p.send(topic, key=b"k", value=b"w" * 100, partition=0).get(timeout=30)
        assert md.offset == 1
    finally:
        p.close(timeout=10)


def test_auto_create_disabled(broker_factory):
    b = broker_factory(extra_args=["--set", "auto.create.topics.enable=false"])
    topic = unique_topic("missing")
    # librdkafka: delivery fails with unknown topic / partition
    err, _ = _produce_one(b.bootstrap, topic, b"v", **{"topic.metadata.propagation.max.ms": 2000})
    assert err is not None and err.code() in (KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART), (
        f"produce to a missing topic with auto-create off: {err}")
    with KafkaConn.to(b.bootstrap) as c:
        md = c.metadata([topic], version=4, allow_auto_create=True)
        assert md["topics"][topic]["error"] == UNKNOWN_TOPIC_OR_PARTITION, md
        res = c.produce(topic, 0, record_batch([(b"k", b"v")]))
        assert res[(topic, 0)]["error"] == UNKNOWN_TOPIC_OR_PARTITION, res
        # still not created by any of that
        md = c.metadata(None, version=1)
        assert topic not in md["topics"], f"{topic} was created although auto.create.topics.enable=false"
    # explicitly created topics work as usual
    create_topic(b.bootstrap, topic)
    err, off = _produce_one(b.bootstrap, topic, b"v")
    assert err is None and off == 0


def test_auto_create_enabled_uses_num_partitions(broker_factory):
    b = broker_factory(extra_args=["--set", "num.partitions=3"])
    topic = unique_topic("auto")
    res = produce_records(b.bootstrap, topic, [(None, f"k{i}".encode(), f"v{i}".encode()) for i in range(30)])
    assert {p for p, _ in res} <= {0, 1, 2}
    with KafkaConn.to(b.bootstrap) as c:
        md = c.metadata([topic])
        assert md["topics"][topic]["error"] == 0
        assert sorted(p["partition"] for p in md["topics"][topic]["partitions"]) == [0, 1, 2]
        # Metadata v4 with allow_auto_topic_creation=false does not create
        other = unique_topic("noauto")
        md = c.metadata([other], version=4, allow_auto_create=False)
        assert md["topics"][other]["error"] == UNKNOWN_TOPIC_OR_PARTITION
        time.sleep(0.2)
        assert other not in c.metadata(None)["topics"]
