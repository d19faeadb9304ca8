"""Admin APIs against the real `weir` binary, with confluent-kafka's AdminClient and kafka-python's
KafkaAdminClient: CreateTopics (validate_only, per-topic errors), DescribeConfigs, AlterConfigs,
IncrementalAlterConfigs, CreatePartitions, DeleteRecords (+ ListOffsets), DescribeCluster,
DescribeLogDirs, DeleteTopics; and that topics and configs survive a clean restart."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource,
                                   NewPartitions, NewTopic, OffsetSpec, ResourceType)
from kafka import KafkaConsumer
from kafka import TopicPartition as KTopicPartition
from kafka import errors as kerrors
from kafka.admin import ConfigResource as KConfigResource
from kafka.admin import KafkaAdminClient

from util import unique_topic

TIMEOUT = 30

# Every topic config Weir knows (topic_config::TOPIC_CONFIGS) with the broker default it falls back to.
TOPIC_DEFAULTS = {
    "cleanup.policy": "delete",
    "compression.type": "producer",
    "delete.retention.ms": "86400000",
    "flush.messages": "-1",
    "flush.ms": "-1",
    "index.interval.bytes": "4096",
    "max.message.bytes": "1048588",
    "message.timestamp.type": "CreateTime",
    "min.insync.replicas": "1",
    "retention.bytes": "-1",
    "retention.ms": "604800000",
    "segment.bytes": "1073741824",
    "segment.ms": "604800000",
}

# Kafka error codes.
UNKNOWN_TOPIC_OR_PARTITION = 3
INVALID_TOPIC_EXCEPTION = 17
INVALID_PARTITIONS = 37
INVALID_REPLICATION_FACTOR = 38
INVALID_CONFIG = 40
TOPIC_ALREADY_EXISTS = 36


# ---------------------------------------------------------------- helpers


def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "broker.address.family": "v4"})


def ok(fut):
    return fut.result(timeout=TIMEOUT)


def failure(fut) -> KafkaError:
    with pytest.raises(KafkaException) as ei:
        fut.result(timeout=TIMEOUT)
    return ei.value.args[0]


def describe_topic(a: AdminClient, topic: str) -> dict:
    res = ConfigResource(ResourceType.TOPIC, topic)
    return ok(a.describe_configs([res])[res])


def values(entries: dict) -> dict:
    return {k: e.value for k, e in entries.items()}


def dynamic(entries: dict) -> dict:
    return {k: e.value for k, e in entries.items() if e.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value}


def partition_count(a: AdminClient, topic: str) -> int:
    md = a.list_topics(topic, timeout=TIMEOUT)
    t = md.topics[topic]
    assert t.error is None, t.error
    return len(t.partitions)


def produce(bootstrap: str, topic: str, partition: int, n: int) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "broker.address.family": "v4", "linger.ms": 0})
    for i in range(n):
        p.produce(topic, value=f"v{i}".encode(), partition=partition)
        p.poll(0)
    assert p.flush(TIMEOUT) == 0


def offsets(a: AdminClient, topic: str, partition: int) -> tuple[int, int]:
    tp = TopicPartition(topic, partition)
    earliest = ok(a.list_offsets({tp: OffsetSpec.earliest()})[tp]).offset
    latest = ok(a.list_offsets({tp: OffsetSpec.latest()})[tp]).offset
    return earliest, latest


def kadmin(bootstrap: str) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=bootstrap, client_id="weir-e2e-admin", request_timeout_ms=TIMEOUT * 1000)


def kdescribe(ka: KafkaAdminClient, topic: str) -> dict:
    res = ka.describe_configs([KConfigResource("TOPIC", topic)], config_filter="all")
    return res["topic"][topic]


# ---------------------------------------------------------------- confluent-kafka


def test_confluent_create_topics(bootstrap):
    a = admin(bootstrap)
    t, v, bad_rf, bad_cfg, unknown_cfg = (unique_topic(p) for p in ("ca-create", "ca-validate", "ca-rf", "ca-cfg", "ca-unk"))

    futs = a.create_topics([NewTopic(t, num_partitions=3, replication_factor=1, config={"retention.ms": "3600000"})])
    assert ok(futs[t]) is None
    assert partition_count(a, t) == 3

    # validate_only: accepted, nothing created.
    futs = a.create_topics([NewTopic(v, num_partitions=2, replication_factor=1)], validate_only=True)
    assert ok(futs[v]) is None
    assert v not in a.list_topics(timeout=TIMEOUT).topics

    futs = a.create_topics([
        NewTopic(t, num_partitions=1, replication_factor=1),
        NewTopic(bad_rf, num_partitions=1, replication_factor=3),
        NewTopic(bad_cfg, num_partitions=1, replication_factor=1, config={"retention.ms": "soon"}),
        NewTopic(unknown_cfg, num_partitions=1, replication_factor=1, config={"no.such.config": "1"}),
    ])
    e = failure(futs[t])
    assert e.code() == KafkaError.TOPIC_ALREADY_EXISTS and "already exists" in e.str()
    e = failure(futs[bad_rf])
    assert e.code() == KafkaError.INVALID_REPLICATION_FACTOR and "replication factor 3" in e.str()
    e = failure(futs[bad_cfg])
    assert e.code() == KafkaError.INVALID_CONFIG and "retention.ms" in e.str()
    e = failure(futs[unknown_cfg])
    assert e.code() == KafkaError.INVALID_CONFIG and "no.such.config" in e.str()
    # The already-existing topic is untouched; the failed ones do not exist.
    assert partition_count(a, t) == 3
    names = a.list_topics(timeout=TIMEOUT).topics
    assert bad_rf not in names and bad_cfg not in names and unknown_cfg not in names

    # validate_only reports errors too.
    futs = a.create_topics([NewTopic(t, num_partitions=1, replication_factor=1)], validate_only=True)
    assert failure(futs[t]).code() == KafkaError.TOPIC_ALREADY_EXISTS

    assert ok(a.delete_topics([t])[t]) is None


def test_confluent_configs(bootstrap):
    a = admin(bootstrap)
    t = unique_topic("ca-configs")
    ok(a.create_topics([NewTopic(t, num_partitions=1, replication_factor=1, config={"retention.ms": "3600000"})])[t])

    entries = describe_topic(a, t)
    assert values(entries) == {**TOPIC_DEFAULTS, "retention.ms": "3600000"}
    assert dynamic(entries) == {"retention.ms": "3600000"}
    seg = entries["segment.bytes"]
    assert seg.source == ConfigSource.DEFAULT_CONFIG.value and seg.is_default
    assert not seg.is_read_only and not seg.is_sensitive

    # Broker resource: the [kafka] settings, read-only.
    res = ConfigResource(ResourceType.BROKER, "1")
    broker_entries = ok(a.describe_configs([res])[res])
    assert broker_entries["num.partitions"].value == "1"
    assert broker_entries["auto.create.topics.enable"].value == "true"
    assert all(e.is_read_only for e in broker_entries.values())

    # Unknown topic: an error for that resource alone.
    res = ConfigResource(ResourceType.TOPIC, unique_topic("ca-missing"))
    assert failure(a.describe_configs([res])[res]).code() == KafkaError.UNKNOWN_TOPIC_OR_PART

    # AlterConfigs replaces ALL of the topic's configs.
    res = ConfigResource(ResourceType.TOPIC, t, set_config={"segment.bytes": "1048576", "max.message.bytes": "2000000"})
    assert ok(a.alter_configs([res])[res]) is None
    assert dynamic(describe_topic(a, t)) == {"segment.bytes": "1048576", "max.message.bytes": "2000000"}
    assert values(describe_topic(a, t))["retention.ms"] == TOPIC_DEFAULTS["retention.ms"]

    # validate_only changes nothing; a bad value is INVALID_CONFIG.
    res = ConfigResource(ResourceType.TOPIC, t, set_config={"retention.ms": "1"})
    assert ok(a.alter_configs([res], validate_only=True)[res]) is None
    res = ConfigResource(ResourceType.TOPIC, t, set_config={"retention.ms": "soon"})
    assert failure(a.alter_configs([res])[res]).code() == KafkaError.INVALID_CONFIG
    assert dynamic(describe_topic(a, t)) == {"segment.bytes": "1048576", "max.message.bytes": "2000000"}

    # IncrementalAlterConfigs: SET / DELETE / APPEND per key, the rest unchanged.
    res = ConfigResource(ResourceType.TOPIC, t, incremental_configs=[
        ConfigEntry("retention.ms", "7200000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("segment.bytes", None, incremental_operation=AlterConfigOpType.DELETE),
        ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.APPEND),
    ])
    assert ok(a.incremental_alter_configs([res])[res]) is None
    assert dynamic(describe_topic(a, t)) == {"retention.ms": "7200000", "max.message.bytes": "2000000",
                                             "cleanup.policy": "delete,compact"}
    res = ConfigResource(ResourceType.TOPIC, t, incremental_configs=[
        ConfigEntry("cleanup.policy", "delete", incremental_operation=AlterConfigOpType.SUBTRACT)])
    assert ok(a.incremental_alter_configs([res])[res]) is None
    assert values(describe_topic(a, t))["cleanup.policy"] == "compact"

    # Unknown key -> INVALID_CONFIG with a message; validate_only changes nothing.
    res = ConfigResource(ResourceType.TOPIC, t, incremental_configs=[
        ConfigEntry("no.such.config", "1", incremental_operation=AlterConfigOpType.SET)])
    e = failure(a.incremental_alter_configs([res])[res])
    assert e.code() == KafkaError.INVALID_CONFIG and "no.such.config" in e.str()
    res = ConfigResource(ResourceType.TOPIC, t, incremental_configs=[
        ConfigEntry("retention.ms", "1", incremental_operation=AlterConfigOpType.SET)])
    assert ok(a.incremental_alter_configs([res], validate_only=True)[res]) is None
    assert values(describe_topic(a, t))["retention.ms"] == "7200000"

    ok(a.delete_topics([t])[t])


def test_confluent_partitions_records_cluster_delete(bootstrap):
    a = admin(bootstrap)
    t = unique_topic("ca-parts")
    ok(a.create_topics([NewTopic(t, num_partitions=2, replication_factor=1)])[t])

    # CreatePartitions: validate_only, growth, and per-topic errors.
    futs = a.create_partitions([NewPartitions(t, 5)], validate_only=True)
    assert ok(futs[t]) is None
    assert partition_count(a, t) == 2
    assert ok(a.create_partitions([NewPartitions(t, 5)])[t]) is None
    assert partition_count(a, t) == 5
    missing = unique_topic("ca-missing")
    futs = a.create_partitions([NewPartitions(t, 3), NewPartitions(missing, 3)])
    e = failure(futs[t])
    assert e.code() == KafkaError.INVALID_PARTITIONS and "must be larger" in e.str()
    assert failure(futs[missing]).code() == KafkaError.UNKNOWN_TOPIC_OR_PART

    # DeleteRecords, then ListOffsets shows the new low watermark.
    produce(bootstrap, t, 0, 10)
    produce(bootstrap, t, 4, 3)
    assert offsets(a, t, 0) == (0, 10)
    tp = TopicPartition(t, 0, 4)
    assert ok(a.delete_records([tp])[tp]).low_watermark == 4
    assert offsets(a, t, 0) == (4, 10)
    tp = TopicPartition(t, 4, -1)  # -1: up to the high watermark
    assert ok(a.delete_records([tp])[tp]).low_watermark == 3
    assert offsets(a, t, 4) == (3, 3)
    tp = TopicPartition(t, 0, 11)
    assert failure(a.delete_records([tp])[tp]).code() == KafkaError.OFFSET_OUT_OF_RANGE
    assert offsets(a, t, 0) == (4, 10)

    # DescribeCluster: this one broker is the whole cluster and its controller.
    cluster = ok(a.describe_cluster())
    assert cluster.cluster_id
    assert [(n.id, n.host, n.port) for n in cluster.nodes] == [(1, "127.0.0.1", int(bootstrap.rsplit(":", 1)[1]))]
    assert cluster.controller.id == 1

    # DeleteTopics.
    assert ok(a.delete_topics([t])[t]) is None
    assert t not in a.list_topics(timeout=TIMEOUT).topics
    assert failure(a.delete_topics([t])[t]).code() == KafkaError.UNKNOWN_TOPIC_OR_PART


# ---------------------------------------------------------------- kafka-python


def test_kafka_python_admin(bootstrap):
    ka = kadmin(bootstrap)
    try:
        t, v = unique_topic("kp-admin"), unique_topic("kp-validate")
        zero, rf, cfg = unique_topic("kp-zero"), unique_topic("kp-rf"), unique_topic("kp-cfg")

        res = ka.create_topics({v: {"num_partitions": 2, "replication_factor": 1}}, validate_only=True)
        assert [(x["name"], x["error_code"]) for x in res["topics"]] == [(v, 0)]
        assert v not in ka.list_topics()

        res = ka.create_topics({t: {"num_partitions": 2, "replication_factor": 1, "configs": {"retention.ms": "3600000"}}})
        created = res["topics"][0]
        assert (created["name"], created["error_code"], created["num_partitions"], created["replication_factor"]) == (t, 0, 2, 1)
        assert created["configs"]["retention.ms"]["value"] == "3600000"
        assert created["configs"]["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"
        assert created["configs"]["segment.bytes"]["config_source"] == "DEFAULT_CONFIG"
        assert t in ka.list_topics()

        res = ka.create_topics({
            t: {"num_partitions": 1, "replication_factor": 1},
            zero: {"num_partitions": 0, "replication_factor": 1},
            rf: {"num_partitions": 1, "replication_factor": 2},
            cfg: {"num_partitions": 1, "replication_factor": 1, "configs": {"cleanup.policy": "shred"}},
            "bad name!": {"num_partitions": 1, "replication_factor": 1},
        }, raise_errors=False)
        got = {x["name"]: x["error_code"] for x in res["topics"]}
        assert got == {t: TOPIC_ALREADY_EXISTS, zero: INVALID_PARTITIONS, rf: INVALID_REPLICATION_FACTOR,
                       cfg: INVALID_CONFIG, "bad name!": INVALID_TOPIC_EXCEPTION}
        assert all(x["error_message"] for x in res["topics"])
        with pytest.raises(kerrors.TopicAlreadyExistsError):
            ka.create_topics({t: {"num_partitions": 1, "replication_factor": 1}})

        # DescribeConfigs (all), IncrementalAlterConfigs, AlterConfigs.
        configs = kdescribe(ka, t)
        assert {k: c["value"] for k, c in configs.items()} == {**TOPIC_DEFAULTS, "retention.ms": "3600000"}
        assert configs["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"
        assert configs["segment.ms"]["config_source"] == "DEFAULT_CONFIG"
        assert configs["cleanup.policy"]["config_type"] == "LIST"

        res = ka.alter_configs([KConfigResource("TOPIC", t, {"cleanup.policy": ("APPEND", "compact"),
                                                             "retention.ms": ("DELETE", None),
                                                             "segment.bytes": "1048576"})], incremental=True)
        assert res == {"topic": {t: "OK"}}
        configs = kdescribe(ka, t)
        assert {k: c["value"] for k, c in configs.items() if c["config_source"] == "DYNAMIC_TOPIC_CONFIG"} == {
            "cleanup.policy": "delete,compact", "segment.bytes": "1048576"}

        res = ka.alter_configs([KConfigResource("TOPIC", t, {"no.such.config": "1"})], incremental=True, raise_on_unknown=False)
        assert res["topic"][t].startswith("[Error 40] InvalidConfigurationError") and "no.such.config" in res["topic"][t]

        # Non-incremental: kafka-python fills in the other modified keys itself.
        res = ka.alter_configs([KConfigResource("TOPIC", t, {"retention.ms": "5000"})], incremental=False)
        assert res == {"topic": {t: "OK"}}
        configs = kdescribe(ka, t)
        assert {k: c["value"] for k, c in configs.items() if c["config_source"] == "DYNAMIC_TOPIC_CONFIG"} == {
            "cleanup.policy": "delete,compact", "segment.bytes": "1048576", "retention.ms": "5000"}

        res = ka.describe_configs([KConfigResource("BROKER", "1")], config_filter="all")
        broker = res["broker"]["1"]
        assert broker["num.partitions"]["value"] == "1" and broker["num.partitions"]["read_only"]

        # CreatePartitions.
        ka.create_partitions({t: 4}, validate_only=True)
        assert len(ka.describe_topics([t])[0]["partitions"]) == 2
        ka.create_partitions({t: 4})
        assert len(ka.describe_topics([t])[0]["partitions"]) == 4
        with pytest.raises(kerrors.InvalidPartitionsError):
            ka.create_partitions({t: 3})

        # DeleteRecords, then ListOffsets (beginning_offsets) shows the new low watermark.
        produce(bootstrap, t, 1, 6)
        res = ka.delete_records({KTopicPartition(t, 1): 2})
        assert res[KTopicPartition(t, 1)]["low_watermark"] == 2
        consumer = KafkaConsumer(bootstrap_servers=bootstrap)
        try:
            tp = KTopicPartition(t, 1)
            assert consumer.beginning_offsets([tp]) == {tp: 2}
            assert consumer.end_offsets([tp]) == {tp: 6}
        finally:
            consumer.close()
        with pytest.raises(kerrors.OffsetOutOfRangeError):
            ka.delete_records({KTopicPartition(t, 1): 7})

        # DescribeCluster and DescribeLogDirs.
        cluster = ka.describe_cluster()
        assert cluster["controller_id"] == 1
        assert [(b["broker_id"], b["host"], b["port"]) for b in cluster["brokers"]] == [
            (1, "127.0.0.1", int(bootstrap.rsplit(":", 1)[1]))]
        assert cluster["cluster_id"]
        dirs = ka.describe_log_dirs({t: [0, 1]})
        assert len(dirs) == 1 and len(dirs[0]["log_dirs"]) == 1
        log_dir = dirs[0]["log_dirs"][0]
        assert log_dir["error_code"] == 0
        parts = {p["partition_index"]: p for topic in log_dir["topics"] if topic["name"] == t for p in topic["partitions"]}
        assert sorted(parts) == [0, 1]
        assert parts[0]["partition_size"] == 0 and parts[1]["partition_size"] > 0

        # DeleteTopics.
        res = ka.delete_topics([t])
        assert [(x["name"], x["error_code"]) for x in res["topics"]] == [(t, 0)]
        assert t not in ka.list_topics()
        with pytest.raises(kerrors.UnknownTopicOrPartitionError):
            ka.delete_topics([t])
    finally:
        ka.close()


# ---------------------------------------------------------------- restart


def test_topics_and_configs_survive_restart(broker):
    a = admin(broker.bootstrap)
    t, gone = unique_topic("rs-keep"), unique_topic("rs-gone")
    futs = a.create_topics([NewTopic(t, num_partitions=2, replication_factor=1, config={"retention.ms": "3600000"}),
                            NewTopic(gone, num_partitions=1, replication_factor=1)])
    ok(futs[t]), ok(futs[gone])
    res = ConfigResource(ResourceType.TOPIC, t, incremental_configs=[
        ConfigEntry("segment.bytes", "1048576", incremental_operation=AlterConfigOpType.SET)])
    ok(a.incremental_alter_configs([res])[res])
    ok(a.create_partitions([NewPartitions(t, 3)])[t])
    produce(broker.bootstrap, t, 2, 8)
    tp = TopicPartition(t, 2, 5)
    assert ok(a.delete_records([tp])[tp]).low_watermark == 5
    ok(a.delete_topics([gone])[gone])
    cluster_id = ok(a.describe_cluster()).cluster_id

    broker.restart()  # SIGTERM, expect exit 0, start again on the same data dir

    a = admin(broker.bootstrap)
    assert partition_count(a, t) == 3
    assert gone not in a.list_topics(timeout=TIMEOUT).topics
    assert dynamic(describe_topic(a, t)) == {"retention.ms": "3600000", "segment.bytes": "1048576"}
    assert offsets(a, t, 2) == (5, 8)
    assert ok(a.describe_cluster()).cluster_id == cluster_id
    # And it still takes admin changes.
    ok(a.create_partitions([NewPartitions(t, 4)])[t])
    assert partition_count(a, t) == 4
