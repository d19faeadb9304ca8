"""A 3-node Weir cluster on loopback: three real `weir serve` processes replicating with Raft.

- acks=all survives SIGKILL of a partition leader: a new leader takes over, the producer carries on,
  every acknowledged record is read back exactly once and in order, and the restarted node catches up
  to byte-identical segment data.
- A leader cut off from both followers (TCP relays between the nodes) stops acknowledging; the majority
  elects a new leader; after healing, the old leader's uncommitted tail is gone and nothing acknowledged
  is lost.
- A rolling restart of all three nodes under load loses no acknowledged record.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import subprocess

from conftest import Broker, weir_bin
from netsplit import Relay
from util import free_port, record_timing, unique_topic, wait_until


class Cluster:
    def __init__(self, root: Path, relays: bool = False, n: int = 3, extra_args: tuple = ()):
        self.raft_ports = {i: free_port() for i in range(1, n + 1)}
        self.relays: dict[tuple[int, int], Relay] = {}
        if relays:
            for i in self.raft_ports:
                for j in self.raft_ports:
                    if i != j:
                        self.relays[(i, j)] = Relay(self.raft_ports[j]).start()
        self.nodes: dict[int, Broker] = {}
        self._admins: dict[int | None, AdminClient] = {}
        # Clients reach each node through a relay too, so that a split can cut a node off from
        # clients as well (a host on the wrong side of a network partition).
        self.client_relays: dict[int, Relay] = {}
        for i in self.raft_ports:
            peers = []
            for j, port in self.raft_ports.items():
                if relays and i != j:
                    port = self.relays[(i, j)].port
                peers.append(f"{j}=127.0.0.1:{port}")
            args = ["--node-id", str(i), "--raft-listen", f"127.0.0.1:{self.raft_ports[i]}",
                    "--peers", ",".join(peers),
                    "--set", "default.replication.factor=3", "--set", "min.insync.replicas=2", *extra_args]
            kafka_port = free_port()
            advertised = None
            if relays:
                self.client_relays[i] = Relay(kafka_port).start()
                advertised = f"127.0.0.1:{self.client_relays[i].port}"
            self.nodes[i] = Broker(root / f"node{i}", extra_args=args, kafka_port=kafka_port,
                                   advertised_kafka=advertised)

    def start(self):
        for b in self.nodes.values():
            b.start(wait=False)
        for b in self.nodes.values():
            b.wait_ready()
        return self

    def stop(self):
        for b in self.nodes.values():
            try:
                b.stop()
            except AssertionError:
                pass
        for r in list(self.relays.values()) + list(self.client_relays.values()):
            r.set_cut(True)

    def address(self, node: int) -> str:
        if node in self.client_relays:
            return f"127.0.0.1:{self.client_relays[node].port}"
        return self.nodes[node].bootstrap

    def bootstrap(self, exclude: int | None = None) -> str:
        return ",".join(self.address(i) for i, b in self.nodes.items() if i != exclude and b.running)

    def admin(self, exclude: int | None = None) -> AdminClient:
        # One long-lived client per view: destroying a librdkafka admin client while
        # one of its coordinator lookups is pending can abort the whole process
        # (rd_kafka_enq_once_del_source_return: eonce->refcnt > 0, librdkafka 2.x).
        if exclude not in self._admins:
            self._admins[exclude] = AdminClient({"bootstrap.servers": self.bootstrap(exclude)})
        return self._admins[exclude]

    def leader_of(self, topic: str, partition: int, via: int | None = None, exclude: int | None = None) -> int:
        bootstrap = self.address(via) if via else self.bootstrap(exclude)
        md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
        return md.topics[topic].partitions[partition].leader

    def wait_leaders(self, topic: str, partitions: int, exclude: int | None = None, timeout: float = 30):
        def ok():
            md = self.admin(exclude).list_topics(topic, timeout=10)
            t = md.topics.get(topic)
            if t is None or t.error is not None or len(t.partitions) != partitions:
                return False
            return all(p.leader > 0 and p.leader != exclude for p in t.partitions.values())
        wait_until(ok, timeout, f"every partition of {topic} to have a leader")

    def isolate(self, node: int, cut: bool = True, clients: bool = False):
        """Cuts `node` off from the other nodes (and from clients too with `clients`)."""
        for (i, j), r in self.relays.items():
            if node in (i, j):
                r.set_cut(cut)
        if clients or not cut:
            self.client_relays[node].set_cut(cut)

    def segment_bytes(self, node: int, topic: str, partition: int) -> bytes:
        d = self.nodes[node].data_dir / f"{topic}-{partition}"
        return b"".join(p.read_bytes() for p in sorted(d.glob("*.log")))

    def assert_no_panic(self):
        for b in self.nodes.values():
            b.assert_no_panic()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path).start()
    yield c
    c.stop()
    c.assert_no_panic()


@pytest.fixture
def split_cluster(tmp_path):
    c = Cluster(tmp_path, relays=True).start()
    yield c
    c.stop()
    c.assert_no_panic()


def create(cluster: Cluster, topic: str, partitions: int):
    admin = cluster.admin()
    futures = admin.create_topics([NewTopic(topic, partitions, 3)], operation_timeout=30)
    futures[topic].result(30)
    cluster.wait_leaders(topic, partitions)


class SequenceProducer(threading.Thread):
    """Writes 0, 1, 2, ... round-robin over the partitions with acks=all until stopped."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, idempotent: bool = True):
        super().__init__(daemon=True)
        self.topic, self.partitions = topic, partitions
        self.producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                                  "enable.idempotence": idempotent, "linger.ms": 5,
                                  "message.timeout.ms": 120000, "topic.metadata.refresh.interval.ms": 1000})
        self.acked: list[tuple[int, int, int, float]] = []
        # value -> when it was handed to the client (acks of records sent after a kill
        # can only come from a new leader; acks received earlier may reach the
        # callback later, so the ack time alone cannot tell).
        self.sent_at: dict[int, float] = {}
        self.errors: list[str] = []
        self.sent = 0
        self.stop_event = threading.Event()

    def _cb(self, err, msg):
        if err is not None:
            self.errors.append(str(err))
        else:
            self.acked.append((msg.partition(), msg.offset(), int(msg.value()), time.monotonic()))

    def run(self):
        i = 0
        while not self.stop_event.is_set():
            try:
                self.producer.produce(self.topic, str(i).encode(), partition=i % self.partitions, on_delivery=self._cb)
                self.sent_at[i] = time.monotonic()
                i += 1
            except BufferError:
                self.producer.poll(0.05)
                continue
            if i % 200 == 0:
                self.producer.poll(0.01)
            else:
                self.producer.poll(0)
        self.sent = i
        self.producer.flush(120)

    def finish(self):
        self.stop_event.set()
        self.join(180)


def read_all(bootstrap: str, topic: str, partitions: int, expect: int, timeout: float = 60):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_topic("reader"), "enable.auto.commit": False,
                  "topic.metadata.refresh.interval.ms": 1000})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got: dict[int, list[tuple[int, int]]] = {p: [] for p in range(partitions)}
    n = 0
    deadline = time.monotonic() + timeout
    while n < expect and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        got[m.partition()].append((m.offset(), int(m.value())))
        n += 1
    c.close()
    return got


def verify_exactly_once(acked, got):
    values = [v for recs in got.values() for _, v in recs]
    assert len(values) == len(set(values)), "a record was read twice"
    by_offset = {(p, o): v for p, recs in got.items() for o, v in recs}
    missing = [(p, o, v) for p, o, v, _ in acked if by_offset.get((p, o)) != v]
    assert not missing, f"{len(missing)} acknowledged records not read back where acknowledged: {missing[:5]}"
    for p, recs in got.items():
        offsets = [o for o, _ in recs]
        assert offsets == sorted(offsets), f"partition {p} read out of order"
        # Records of one partition were produced in increasing order.
        vals = [v for _, v in recs]
        assert vals == sorted(vals), f"partition {p}: values out of order"


def wait_identical(cluster: Cluster, topic: str, partitions: int, timeout: float = 60):
    def same():
        for p in range(partitions):
            blobs = {cluster.segment_bytes(i, topic, p) for i in cluster.nodes}
            if len(blobs) != 1:
                return False
        return True
    wait_until(same, timeout, "every replica's segment data to be byte-identical")


def test_acks_all_survives_sigkill_of_a_leader(cluster):
    topic, partitions = unique_topic("seq"), 6
    create(cluster, topic, partitions)
    producer = SequenceProducer(cluster.bootstrap(), topic, partitions)
    producer.start()
    wait_until(lambda: len(producer.acked) > 2000, 30, "records acknowledged before the kill")
    victim = cluster.leader_of(topic, 0)
    led = {p for p in range(partitions) if cluster.leader_of(topic, p) == victim}
    killed_at = time.monotonic()
    cluster.nodes[victim].kill()
    def after_kill():
        return [t for p, _, v, t in list(producer.acked)
                if p in led and producer.sent_at.get(v, 0) > killed_at]
    wait_until(after_kill, 60, "an acknowledgement from a new leader of the victim's partitions")
    first = min(after_kill())
    record_timing("cluster failover (SIGKILL of leader -> first acks=all ack on a new leader)",
                  f"{(first - killed_at) * 1000:.0f} ms")
    time.sleep(2)
    producer.finish()
    assert not producer.errors, producer.errors[:5]
    assert len(producer.acked) == producer.sent
    new_leader = cluster.leader_of(topic, 0, exclude=victim)
    assert new_leader not in (victim, -1)

    got = read_all(cluster.bootstrap(exclude=victim), topic, partitions, len(producer.acked))
    verify_exactly_once(producer.acked, got)
    assert sum(len(r) for r in got.values()) == len(producer.acked)

    cluster.nodes[victim].start()
    wait_identical(cluster, topic, partitions)
    # Leadership returns to the preferred (first) replicas once the node caught up.
    md = cluster.admin().list_topics(topic, timeout=10).topics[topic]
    preferred = {p: md.partitions[p].replicas[0] for p in range(partitions)}
    assert victim in preferred.values()
    wait_until(lambda: all(cluster.leader_of(topic, p) == preferred[p] for p in range(partitions)), 60,
               "leadership to move back to the preferred replicas")
    info = subprocess.run([str(weir_bin()), "--bootstrap", cluster.address(victim), "cluster", "info"],
                          capture_output=True, text=True, timeout=30)
    assert info.returncode == 0, info.stderr
    assert info.stdout.count("Broker: ") == 3 and "Without leader: 0" in info.stdout, info.stdout
    # Each node leads two of the six partitions again.
    assert info.stdout.count(f"Leader of: ") == 3


def test_isolated_leader_stops_acknowledging_and_its_tail_is_truncated(split_cluster):
    c = split_cluster
    topic = unique_topic("iso")
    create(c, topic, 1)
    before = SequenceProducer(c.bootstrap(), topic, 1, idempotent=False)
    before.start()
    wait_until(lambda: len(before.acked) > 500, 30, "records acknowledged before the split")
    before.finish()
    assert not before.errors
    old = c.leader_of(topic, 0)
    c.isolate(old)
    # Writes sent to the cut-off leader are never acknowledged.
    lonely = Producer({"bootstrap.servers": c.address(old), "acks": "all", "message.timeout.ms": 8000,
                       "enable.idempotence": False})
    lonely_acks, lonely_errors = [], []
    for i in range(100):
        lonely.produce(topic, f"lonely-{i}".encode(), partition=0,
                       on_delivery=lambda e, m: (lonely_errors if e else lonely_acks).append(m))
    # The majority elects a new leader meanwhile.
    wait_until(lambda: c.leader_of(topic, 0, exclude=old) not in (old, -1), 30, "a new leader in the majority")
    lonely.flush(30)
    assert not lonely_acks, f"a cut-off leader acknowledged {len(lonely_acks)} acks=all writes"
    assert lonely_errors
    # Now the old leader's host is cut off from clients too: they move to the majority.
    c.isolate(old, clients=True)
    after = SequenceProducer(c.bootstrap(exclude=old), topic, 1, idempotent=False)
    after.start()
    wait_until(lambda: len(after.acked) > 500, 30, "records acknowledged by the new leader")
    after.finish()
    assert not after.errors
    c.isolate(old, cut=False)
    wait_identical(c, topic, 1)
    # The cut-off leader had written the lonely records; rejoining dropped them.
    assert "truncating a divergent raft tail" in c.nodes[old].log_text(), "the old leader never wrote a tail"
    acked = before.acked + after.acked
    got = read_all(c.bootstrap(), topic, 1, len(acked))
    # Both producers counted from 0: check each acknowledged (offset, value) pair.
    by_offset = {o: v for o, v in got[0]}
    for p, o, v, _ in acked:
        assert by_offset.get(o) == v, f"acknowledged record at offset {o} lost"
    assert len(got[0]) == len(acked), "records other than the acknowledged ones were committed"


def test_rolling_restart_under_load(cluster):
    topic, partitions = unique_topic("roll"), 6
    create(cluster, topic, partitions)
    producer = SequenceProducer(cluster.bootstrap(), topic, partitions)
    producer.start()
    wait_until(lambda: len(producer.acked) > 1000, 30, "records acknowledged before the restarts")
    for node in cluster.nodes.values():
        node.restart()
        cluster.wait_leaders(topic, partitions)
        n = len(producer.acked)
        wait_until(lambda: len(producer.acked) > n + 500, 60, "progress after a restart")
    producer.finish()
    assert not producer.errors, producer.errors[:5]
    got = read_all(cluster.bootstrap(), topic, partitions, len(producer.acked))
    verify_exactly_once(producer.acked, got)
    assert sum(len(r) for r in got.values()) == len(producer.acked)


def test_min_insync_replicas_refuses_acks_all_but_not_acks_1(cluster):
    from confluent_kafka import KafkaError
    topic = unique_topic("isr")
    admin = cluster.admin()
    admin.create_topics([NewTopic(topic, 1, 3, config={"min.insync.replicas": "3"})])[topic].result(30)
    cluster.wait_leaders(topic, 1)
    leader = cluster.leader_of(topic, 0)
    follower = next(i for i in cluster.nodes if i != leader)
    cluster.nodes[follower].kill()
    time.sleep(3)  # the leader notices within an election timeout

    def produce(acks):
        p = Producer({"bootstrap.servers": cluster.bootstrap(exclude=follower), "acks": acks,
                      "message.timeout.ms": 4000, "retries": 0})
        results = []
        p.produce(topic, b"x", partition=0, on_delivery=lambda e, m: results.append(e))
        p.flush(10)
        return results

    assert [e.code() if e else None for e in produce("all")] == [KafkaError.NOT_ENOUGH_REPLICAS]
    assert produce("1") == [None]


def group_coordinator(cluster: Cluster, group: str, exclude: int | None = None) -> int:
    """The node id FindCoordinator (v1, over a raw connection) names for `group`, asked of the
    running nodes in turn. Not through librdkafka's admin client: destroying it, or its lookups
    while a node is dead, aborted the whole test process (rd_kafka_enq_once_del_source_return:
    eonce->refcnt > 0)."""
    from kafkawire import KafkaConn, i8, string

    def found():
        for i, b in cluster.nodes.items():
            if i == exclude or not b.running:
                continue
            try:
                with KafkaConn.to(cluster.address(i), timeout=5) as conn:
                    r = conn.request(10, 1, string(group) + i8(0))
                    r.i32()  # throttle_time_ms
                    error, _message, node = r.i16(), r.string(), r.i32()
            except OSError:
                continue
            # Coordinator moving or loading: ask again.
            if error == 0 and node != exclude:
                return node
        return None
    return wait_until(found, 60, f"a coordinator for group {group}")


def consume_in_group(bootstrap: str, group: str, topic: str, count: int, timeout: float = 60):
    """Reads `count` records as a member of `group`, commits synchronously and leaves."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "topic.metadata.refresh.interval.ms": 1000,
                  "session.timeout.ms": 6000})
    c.subscribe([topic])
    got: list[tuple[int, int, int]] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        got.append((m.partition(), m.offset(), int(m.value())))
    assert len(got) == count, f"read {len(got)} of {count} records in group {group}"
    committed = None
    while committed is None and time.monotonic() < deadline:
        try:
            committed = c.commit(asynchronous=False)
        except Exception:  # coordinator moving: librdkafka finds the new one
            time.sleep(0.5)
    assert committed is not None, "the offset commit never succeeded"
    c.close()
    # Partitions this member read nothing from have no position to commit (-1001).
    return got, {tp.partition: tp.offset for tp in committed if tp.offset >= 0}


def test_consumer_group_offsets_survive_sigkill_of_their_coordinator(cluster):
    """__consumer_offsets is replicated and the coordinator follows its partition's leader: after a
    SIGKILL of the group's coordinator another node coordinates it with every committed offset."""
    topic, partitions, total = unique_topic("grp"), 3, 600
    create(cluster, topic, partitions)
    p = Producer({"bootstrap.servers": cluster.bootstrap(), "acks": "all"})
    for i in range(total):
        p.produce(topic, str(i).encode(), partition=i % partitions)
    assert p.flush(30) == 0

    group = unique_topic("group")
    first, committed = consume_in_group(cluster.bootstrap(), group, topic, 300)
    # The positions after the first 300 records are committed.
    assert sum(committed.values()) == 300, committed

    coordinator = group_coordinator(cluster, group)
    cluster.nodes[coordinator].kill()
    new_coordinator = group_coordinator(cluster, group, exclude=coordinator)
    assert new_coordinator != coordinator

    rest, committed_after = consume_in_group(cluster.bootstrap(exclude=coordinator), group, topic, 300)
    # The second member starts exactly where the first committed: nothing read twice, nothing skipped.
    for part in range(partitions):
        offsets = sorted(o for q, o, _ in rest if q == part)
        if offsets:
            assert offsets[0] == committed.get(part, 0), (part, offsets[:3], committed)
    values = sorted(v for _, _, v in first + rest)
    assert values == list(range(total))
    # A partition the second member read nothing from keeps the first member's commit.
    committed_after = {**committed, **committed_after}
    assert sum(committed_after.values()) == total

    # The killed node comes back; the group's offsets are the same whichever node coordinates.
    cluster.nodes[coordinator].start()
    group_coordinator(cluster, group)
    c = Consumer({"bootstrap.servers": cluster.bootstrap(), "group.id": group})
    got = c.committed([TopicPartition(topic, q) for q in range(partitions)], timeout=30)
    c.close()
    assert {tp.partition: tp.offset for tp in got} == committed_after


def offsets_partition(group: str, partitions: int = 16) -> int:
    """Kafka's partition of __consumer_offsets for `group`: abs(String.hashCode) % partitions."""
    h = 0
    for unit in group.encode("utf-16-be").hex(" ", 2).split():
        h = (31 * h + int(unit, 16)) & 0xFFFFFFFF
    if h >= 1 << 31:
        h -= 1 << 32
    return 0 if h == -(1 << 31) else abs(h) % partitions


def test_group_coordination_follows_offsets_partition_leaders(cluster):
    """Every node leads some of __consumer_offsets' partitions, and a group's coordinator is the
    leader of the group's partition."""
    cluster.wait_leaders("__consumer_offsets", 16)
    md = cluster.admin().list_topics("__consumer_offsets", timeout=10).topics["__consumer_offsets"]
    assert {p.leader for p in md.partitions.values()} == set(cluster.nodes)
    assert all(len(p.replicas) == 3 for p in md.partitions.values())
    topic = unique_topic("coord")
    create(cluster, topic, 1)
    for i in range(4):
        group = unique_topic(f"g{i}")
        c = Consumer({"bootstrap.servers": cluster.bootstrap(), "group.id": group})
        c.commit(offsets=[TopicPartition(topic, 0, 7)], asynchronous=False)
        c.close()
        leader = cluster.leader_of("__consumer_offsets", offsets_partition(group))
        assert group_coordinator(cluster, group) == leader


def reassign(cluster: Cluster, topic: str, partition: int, replicas: list[int] | None):
    """AlterPartitionReassignments through kafka-python's admin client (a real Kafka admin)."""
    from kafka import KafkaAdminClient
    from kafka import TopicPartition as KTP
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap())
    try:
        return admin.alter_partition_reassignments({KTP(topic, partition): replicas})
    finally:
        admin.close()


def ongoing(cluster: Cluster) -> dict:
    from kafka import KafkaAdminClient
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap())
    try:
        return admin.list_partition_reassignments()
    finally:
        admin.close()


def replicas_of(cluster: Cluster, topic: str, partition: int) -> list[int]:
    md = cluster.admin().list_topics(topic, timeout=10)
    return list(md.topics[topic].partitions[partition].replicas)


def test_reassignment_raises_the_replication_factor_and_moves_replicas(cluster):
    """AlterPartitionReassignments: RF 1 -> 3 (new replicas copy the log, then vote), after which
    the original replica's node can be killed without losing a record; then RF 3 -> 2 moves the
    partition off a node, whose copy is deleted, and the remaining copies stay byte-identical."""
    topic = unique_topic("reassign")
    admin = cluster.admin()
    # min.insync.replicas=1 so that acks=all works with the single replica it starts with.
    admin.create_topics([NewTopic(topic, 1, 1, config={"min.insync.replicas": "1"})])[topic].result(30)
    cluster.wait_leaders(topic, 1)
    [original] = replicas_of(cluster, topic, 0)
    p = Producer({"bootstrap.servers": cluster.bootstrap(), "acks": "all"})
    for i in range(500):
        p.produce(topic, str(i).encode(), partition=0)
    assert p.flush(30) == 0

    # Bad targets are refused with a reason and change nothing.
    from kafka.errors import InvalidReplicationAssignmentError
    result = reassign(cluster, topic, 0, [original, 99])
    assert list(result.values()) == [InvalidReplicationAssignmentError], result
    assert replicas_of(cluster, topic, 0) == [original]

    everyone = [original] + [n for n in cluster.nodes if n != original]
    result = reassign(cluster, topic, 0, everyone)
    assert list(result.values()) == [None], result
    wait_until(lambda: not ongoing(cluster) and sorted(replicas_of(cluster, topic, 0)) == sorted(everyone),
               60, "the replication factor to reach 3")
    wait_identical(cluster, topic, 1)

    # The new replicas are voters: with the original node gone, acks=all still commits.
    cluster.nodes[original].kill()
    cluster.wait_leaders(topic, 1, exclude=original)
    p = Producer({"bootstrap.servers": cluster.bootstrap(exclude=original), "acks": "all",
                  "message.timeout.ms": 30000})
    for i in range(500, 600):
        p.produce(topic, str(i).encode(), partition=0)
    assert p.flush(40) == 0
    got = read_all(cluster.bootstrap(exclude=original), topic, 1, 600)
    assert [v for _, v in got[0]] == list(range(600))
    cluster.nodes[original].start()
    cluster.wait_leaders(topic, 1)

    # RF 3 -> 2: the dropped node's replica leaves the group and its files go.
    dropped = everyone[-1]
    keep = [n for n in everyone if n != dropped]
    assert list(reassign(cluster, topic, 0, keep).values()) == [None]
    wait_until(lambda: not ongoing(cluster) and sorted(replicas_of(cluster, topic, 0)) == sorted(keep),
               60, "the replication factor to drop to 2")
    wait_until(lambda: not (cluster.nodes[dropped].data_dir / f"{topic}-0").exists(), 30,
               "the dropped replica's files removed")
    p = Producer({"bootstrap.servers": cluster.bootstrap(), "acks": "all"})
    for i in range(600, 700):
        p.produce(topic, str(i).encode(), partition=0)
    assert p.flush(30) == 0
    def same():
        blobs = {cluster.segment_bytes(n, topic, 0) for n in keep}
        return len(blobs) == 1
    wait_until(same, 30, "the remaining replicas byte-identical")
    got = read_all(cluster.bootstrap(), topic, 1, 700)
    assert [v for _, v in got[0]] == list(range(700))


def weir_cli(cluster: Cluster, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(weir_bin()), "--bootstrap", cluster.bootstrap(), *args],
                          capture_output=True, text=True, timeout=timeout)


def test_add_node_and_remove_node(cluster, tmp_path):
    """`weir cluster add-node` admits a fourth node started with --join (it copies the metadata log,
    becomes a controller voter, and new topics place replicas on it); `weir cluster remove-node`
    moves every replica off it and takes it out, losing no record."""
    raft_port = free_port()
    peers = ",".join(f"{i}=127.0.0.1:{p}" for i, p in cluster.raft_ports.items()) + f",4=127.0.0.1:{raft_port}"
    node4 = Broker(tmp_path / "node4", extra_args=[
        "--node-id", "4", "--raft-listen", f"127.0.0.1:{raft_port}", "--peers", peers, "--join",
        "--set", "default.replication.factor=3", "--set", "min.insync.replicas=2"])
    node4.start(wait=False)
    cluster.nodes[4] = node4
    # Not a member until admitted: clients are not told about it.
    time.sleep(1)
    md = cluster.admin().list_topics(timeout=10)
    assert 4 not in md.brokers

    r = weir_cli(cluster, "cluster", "add-node", "--id", "4", "--raft", f"127.0.0.1:{raft_port}")
    assert r.returncode == 0, r.stderr
    node4.wait_ready()
    wait_until(lambda: 4 in cluster.admin().list_topics(timeout=10).brokers, 30, "node 4 listed as a broker")

    # New topics use the fourth node; it serves produce and fetch like the others.
    topic, partitions = unique_topic("grow"), 8
    create(cluster, topic, partitions)
    md = cluster.admin().list_topics(topic, timeout=10).topics[topic]
    on4 = [p.id for p in md.partitions.values() if 4 in p.replicas]
    assert on4, "no replica placed on the new node"
    p = Producer({"bootstrap.servers": cluster.bootstrap(), "acks": "all"})
    for i in range(800):
        p.produce(topic, str(i).encode(), partition=i % partitions)
    assert p.flush(30) == 0

    # Removing it moves its replicas elsewhere first.
    r = weir_cli(cluster, "cluster", "remove-node", "4")
    assert r.returncode == 0, r.stderr
    assert "removed it from the cluster" in r.stdout
    md = cluster.admin().list_topics(topic, timeout=10)
    assert all(4 not in q.replicas for q in md.topics[topic].partitions.values())
    wait_until(lambda: 4 not in cluster.admin().list_topics(timeout=10).brokers, 30, "node 4 gone from the brokers")
    wait_until(lambda: not any((node4.data_dir / f"{topic}-{q}").exists() for q in on4), 30,
               "node 4's replicas deleted")
    got = read_all(cluster.bootstrap(exclude=4), topic, partitions, 800)
    assert sorted(v for recs in got.values() for _, v in recs) == list(range(800))
    # A node that was removed is refused as a member again only through add-node.
    r = weir_cli(cluster, "cluster", "remove-node", "4")
    assert r.returncode != 0 and "not a member" in r.stderr, r.stderr

    # The controller quorum is back to three voters: with node 4 stopped and one more node
    # killed, two of three still commit metadata (two of four would not).
    node4.stop()
    del cluster.nodes[4]
    victim = next(i for i in (1, 2, 3) if i != cluster.admin().list_topics(timeout=10).controller_id)
    cluster.nodes[victim].kill()
    after = unique_topic("after")
    def created():
        admin = cluster.admin(exclude=victim)  # destroyed only after its request ended
        futures = admin.create_topics([NewTopic(after, 1, 2)], operation_timeout=10, request_timeout=15)
        try:
            futures[after].result()
            return True
        except Exception as e:  # TOPIC_ALREADY_EXISTS after a retried attempt also counts
            return "already exists" in str(e)
    wait_until(created, 60, "a topic created with two of the three remaining voters")
    cluster.nodes[victim].start()


def test_replica_behind_the_leaders_log_start_catches_up(tmp_path):
    """A replica that was down while retention deleted the records it lacks restarts its log at the
    leader's log start (a Raft snapshot without data, as a Kafka follower truncates to the leader's
    log start) and then copies the rest: it leads again with every retained record, in order."""
    c = Cluster(tmp_path, extra_args=("--set", "log.retention.check.interval.ms=300")).start()
    try:
        topic = unique_topic("behind")
        admin = c.admin()
        admin.create_topics([NewTopic(topic, 1, 3, config={"segment.bytes": "8192", "retention.bytes": "16384"})])[
            topic].result(30)
        c.wait_leaders(topic, 1)
        preferred = replicas_of(c, topic, 0)[0]
        wait_until(lambda: c.leader_of(topic, 0) == preferred, 30, "the preferred replica leading")
        c.nodes[preferred].kill()
        c.wait_leaders(topic, 1, exclude=preferred)
        p = Producer({"bootstrap.servers": c.bootstrap(exclude=preferred), "acks": "all", "linger.ms": 0,
                      "batch.num.messages": 10})
        for i in range(3000):
            p.produce(topic, f"{i:08d}".encode() + b"x" * 92, partition=0)
            if i % 100 == 0:
                p.flush(30)
        assert p.flush(30) == 0
        leader = c.leader_of(topic, 0, exclude=preferred)
        first_base = lambda node: min(int(f.stem) for f in (c.nodes[node].data_dir / f"{topic}-0").glob("*.log"))
        wait_until(lambda: first_base(leader) > 0, 30, "retention to delete the leader's first segments")

        c.nodes[preferred].start()
        # Leadership returns to the preferred replica once it has caught up.
        wait_until(lambda: c.leader_of(topic, 0) == preferred, 90, "the restarted replica leading again")
        assert "restarting the log at the leader's" in c.nodes[preferred].log_path.read_text()
        assert first_base(preferred) > 0
        cons = Consumer({"bootstrap.servers": c.bootstrap(), "group.id": unique_topic("r"),
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
        cons.assign([TopicPartition(topic, 0, -2)])  # OFFSET_BEGINNING: the log start
        values = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not values or values[-1] != 2999):
            m = cons.poll(0.5)
            if m is None or m.error():
                continue
            values.append(int(m.value()[:8]))
        cons.close()
        assert values and values[-1] == 2999
        assert values == list(range(values[0], 3000)), "records missing or out of order after the log start"
    finally:
        c.stop()
        c.assert_no_panic()


def test_http_ingest_on_any_node_reaches_every_partition_committed(cluster):
    """POST /ingest on one node: records for partitions other nodes lead are forwarded to their
    leaders, the answer comes once every record is committed by a majority, and unkeyed records
    go to partitions the receiving node leads."""
    import json
    import urllib.request
    topic, partitions = unique_topic("ingest"), 6
    create(cluster, topic, partitions)
    node = 1
    md = cluster.admin().list_topics(topic, timeout=10).topics[topic]
    led_here = {p.id for p in md.partitions.values() if p.leader == node}
    assert led_here and len(led_here) < partitions, "the test needs partitions led here and elsewhere"

    def post(lines: list[dict], query: str = "") -> dict:
        body = "\n".join(json.dumps(x) for x in lines).encode()
        req = urllib.request.Request(f"{cluster.nodes[node].http_url}/ingest/{topic}{query}", data=body,
                                     method="POST", headers={"Content-Type": "application/x-ndjson"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200
            return json.loads(r.read())

    keyed = post([{"user": f"u{i}", "n": i} for i in range(600)], "?key=user")
    assert keyed["count"] == 600
    assert {o["partition"] for o in keyed["offsets"]} == set(range(partitions))
    unkeyed = post([{"n": 600 + i} for i in range(60)])
    assert {o["partition"] for o in unkeyed["offsets"]} <= led_here
    c = Consumer({"bootstrap.servers": cluster.bootstrap(), "group.id": unique_topic("r"),
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    seen = {}
    deadline = time.monotonic() + 60
    while len(seen) < 660 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        seen[json.loads(m.value())["n"]] = (m.partition(), m.offset())
    c.close()
    assert sorted(seen) == list(range(660))
    # Every answered offset is where the record is.
    for i, o in enumerate(keyed["offsets"] + unkeyed["offsets"]):
        assert seen[i] == (o["partition"], o["offset"])


def init_producer_id(address: str) -> tuple[int, int, int]:
    """InitProducerId v1 (no transactional id) sent to one node: (error, producer id, epoch)."""
    from kafkawire import KafkaConn, i32, string
    with KafkaConn.to(address) as conn:
        r = conn.request(22, 1, string(None) + i32(60000))
        r.i32()  # throttle_time_ms
        return r.i16(), r.i64(), r.i16()


def test_producer_ids_are_unique_across_nodes_and_restarts(cluster):
    """Every node hands out producer ids from a block of its own (taken through the metadata log),
    so idempotent producers that asked different nodes never share an id, and a restarted node does
    not hand out ids of its previous block again. Two idempotent producers that share an id would
    corrupt each other's sequence numbers (OUT_OF_ORDER_SEQUENCE_NUMBER, or a batch taken for a
    duplicate and dropped)."""
    seen = []
    for _round in range(2):
        for node in cluster.nodes:
            for _ in range(3):
                err, pid, epoch = init_producer_id(cluster.address(node))
                assert err == 0 and pid >= 0 and epoch == 0, (node, err, pid, epoch)
                seen.append((node, pid))
    cluster.nodes[2].restart()
    for _ in range(3):
        err, pid, _epoch = init_producer_id(cluster.address(2))
        assert err == 0, err
        seen.append((2, pid))
    pids = [p for _, p in seen]
    assert len(set(pids)) == len(pids), f"a producer id was handed out twice: {seen}"

    # Real idempotent producers bootstrapped to different nodes write one partition together.
    topic = unique_topic("pids")
    create(cluster, topic, 1)
    acked, errors = [], []
    producers = []
    for node in cluster.nodes:
        p = Producer({"bootstrap.servers": cluster.address(node), "enable.idempotence": True,
                      "acks": "all", "linger.ms": 5, "message.timeout.ms": 60000})
        producers.append((node, p))
    for i in range(200):
        for node, p in producers:
            p.produce(topic, value=str(node * 100000 + i).encode(), partition=0,
                      on_delivery=lambda err, msg: (errors if err else acked).append(err or int(msg.value())))
        for _, p in producers:
            p.poll(0)
    for _, p in producers:
        assert p.flush(60) == 0
    assert not errors, errors[:5]
    got = read_all(cluster.bootstrap(), topic, 1, len(acked))
    values = [v for _offset, v in got[0]]
    assert len(values) == 600 and sorted(values) == sorted(acked), (len(values), len(acked))
    for node in cluster.nodes:
        mine = [v for v in values if v // 100000 == node]
        assert mine == sorted(mine) and len(mine) == 200, f"producer via node {node}: {mine[:10]}"
