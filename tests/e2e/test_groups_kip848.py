"""KIP-848 consumer groups (issue 4): librdkafka (confluent-kafka) consumers with
`group.protocol=consumer` against Weir's ConsumerGroupHeartbeat coordinator.

Three consumers on a 6-partition topic get 2 partitions each (no overlap, all 6 covered); one leaves
with close() and the other two get all 6; one of those is SIGKILLed and the survivor gets its
partitions after the (broker-side) session timeout. Every record is consumed exactly once: each
consumer commits what it processed before it acknowledges a revocation (in on_revoke), and the kill
happens once everything produced so far is consumed and committed.

The broker runs with group.consumer.session.timeout.ms=10000 and group.consumer.heartbeat.interval.ms=1000
(KIP-848 clients cannot set either: the coordinator decides).

Event log per consumer (CLOCK_MONOTONIC timestamps, comparable across processes):
  R t partition offset    record delivered       C t partition offset   offset committed
  A t p,p,...             partitions assigned     V t p,p,...            partitions revoked / lost
  E t message             error reported by the client
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from test_groups import committed, create_topic, produce
from util import unique_topic, wait_until

PARTITIONS = 6
SESSION_MS = 10000
BROKER_ARGS = ["--set", f"group.consumer.session.timeout.ms={SESSION_MS}",
               "--set", "group.consumer.heartbeat.interval.ms=1000"]

CONSUMER = r'''
import json, os, sys, time
from confluent_kafka import Consumer, KafkaException, TopicPartition

cfg = json.loads(sys.argv[1])
out = open(cfg["out"], "a")
topic = cfg["topic"]


def log(kind, *vals):
    out.write(" ".join([kind, repr(time.monotonic())] + [str(v) for v in vals]) + "\n")
    out.flush()


def parts(ps):
    return ",".join(str(p) for p in sorted(ps)) or "-"


pending = {}  # partition -> next offset to commit


def commit(only=None):
    offs = [TopicPartition(topic, p, o) for p, o in pending.items() if only is None or p in only]
    if not offs:
        return
    try:
        res = c.commit(offsets=offs, asynchronous=False)
        for tp in res:
            if tp.error is None:
                log("C", tp.partition, tp.offset)
                if pending.get(tp.partition) == tp.offset:
                    del pending[tp.partition]
            else:
                log("E", str(tp.error).replace(" ", "_"))
    except KafkaException as e:
        log("E", str(e).replace(" ", "_"))


def on_assign(consumer, ps):
    log("A", parts(p.partition for p in ps))


def on_revoke(consumer, ps):
    revoked = {p.partition for p in ps}
    commit(revoked)  # before the revocation is acknowledged to the coordinator
    for p in revoked:
        pending.pop(p, None)
    log("V", parts(revoked))


def on_lost(consumer, ps):
    for p in ps:
        pending.pop(p.partition, None)
    log("V", parts(p.partition for p in ps))


c = Consumer({"bootstrap.servers": cfg["bootstrap"], "group.id": cfg["group"], "client.id": cfg["name"],
              "group.protocol": "consumer", "enable.auto.commit": False, "auto.offset.reset": "earliest",
              "error_cb": lambda e: log("E", str(e).replace(" ", "_"))})
c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
since_commit = 0
while not os.path.exists(cfg["stop"]):
    m = c.poll(0.2)
    if m is None:
        commit()
        since_commit = 0
        continue
    if m.error():
        log("E", str(m.error()).replace(" ", "_"))
        continue
    log("R", m.partition(), m.offset())
    pending[m.partition()] = m.offset() + 1
    since_commit += 1
    if since_commit >= 25:
        commit()
        since_commit = 0
commit()
c.close()
log("X")
'''


class Member:
    def __init__(self, workdir: Path, bootstrap: str, topic: str, group: str, name: str):
        self.name = name
        self.out = workdir / f"{name}.log"
        self.stop_file = workdir / f"{name}.stop"
        self.err = workdir / f"{name}.stderr"
        script = workdir / "kip848_consumer.py"
        if not script.exists():
            script.write_text(CONSUMER)
        cfg = {"bootstrap": bootstrap, "topic": topic, "group": group, "name": name,
               "out": str(self.out), "stop": str(self.stop_file)}
        with open(self.err, "ab") as err:
            self.proc = subprocess.Popen([sys.executable, str(script), json.dumps(cfg)], stdout=subprocess.DEVNULL,
                                         stderr=err, stdin=subprocess.DEVNULL)

    def events(self):
        if not self.out.exists():
            return []
        out = []
        for line in self.out.read_text().splitlines():
            f = line.split(" ")
            if len(f) < 2:
                continue
            try:
                out.append((f[0], float(f[1]), f[2:]))
            except ValueError:
                continue
        return out

    def assignment(self) -> set:
        current = set()
        for k, _, v in self.events():
            if k in "AV" and v and v[0] != "-":
                ps = {int(x) for x in v[0].split(",")}
                current = current | ps if k == "A" else current - ps
        return current

    def records(self):
        return [(int(v[0]), int(v[1])) for k, _, v in self.events() if k == "R"]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout=60):
        self.stop_file.touch()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"consumer {self.name} did not stop within {timeout}s\n{self.stderr_tail()}")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stderr_tail(self):
        try:
            return self.err.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return ""


def all_records(members):
    return [r for m in members for r in m.records()]


def max_commits(members) -> dict[int, int]:
    best = {}
    for m in members:
        for k, _, v in m.events():
            if k == "C":
                best[int(v[0])] = max(best.get(int(v[0]), -1), int(v[1]))
    return best


def balanced(members, per: int) -> bool:
    asg = [m.assignment() for m in members]
    union = set().union(*asg)
    return all(len(a) == per for a in asg) and union == set(range(PARTITIONS)) \
        and sum(len(a) for a in asg) == PARTITIONS


def consumed_and_committed(members, counts) -> bool:
    got = set(all_records(members))
    want = {(p, o) for p, c in counts.items() for o in range(c)}
    return got >= want and all(max_commits(members).get(p, -1) == c for p, c in counts.items())


def diagnostics(members, broker) -> str:
    lines = []
    for m in members:
        lines.append(f"{m.name}: alive={m.alive()} assignment={sorted(m.assignment())} records={len(m.records())}"
                     f" errors={[v for k, _, v in m.events() if k == 'E'][:5]}\n{m.stderr_tail()[-1500:]}")
    return "\n".join(lines) + "\n" + broker.log_tail(40)


@pytest.mark.timeout(300)
def test_kip848_group_balances_survives_leave_and_sigkill(tmp_path, broker_factory):
    broker = broker_factory(extra_args=BROKER_ARGS)
    bootstrap = broker.bootstrap
    topic = unique_topic("kip848")
    group = unique_topic("g848")
    create_topic(bootstrap, topic)
    counts = Counter(produce(bootstrap, topic, 600))
    members = [Member(tmp_path, bootstrap, topic, group, f"c{i}") for i in range(3)]
    try:
        # 1. Three members: 2 partitions each, no overlap, everything consumed.
        try:
            wait_until(lambda: balanced(members, 2) and consumed_and_committed(members, counts), 90,
                       "three members with 2 partitions each, all records consumed")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{diagnostics(members, broker)}") from None
        asg = [m.assignment() for m in members]
        assert all(a.isdisjoint(b) for i, a in enumerate(asg) for b in asg[i + 1:]), asg

        # 2. One leaves with close(): the other two get all 6 and carry on.
        members[0].stop()
        rest = members[1:]
        try:
            wait_until(lambda: balanced(rest, 3), 60, "two members with 3 partitions each")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{diagnostics(members, broker)}") from None
        counts.update(produce(bootstrap, topic, 600))
        wait_until(lambda: consumed_and_committed(members, counts), 90, "records after the leave consumed")

        # 3. One is SIGKILLed: its partitions move to the survivor after the session timeout.
        victim, survivor = rest
        victim_parts = victim.assignment()
        victim.kill()
        killed_at = time.monotonic()
        counts.update(produce(bootstrap, topic, 600))
        try:
            wait_until(lambda: survivor.assignment() == set(range(PARTITIONS))
                       and consumed_and_committed(members, counts), 90,
                       "the survivor owning all partitions and consuming everything")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{diagnostics(members, broker)}") from None
        took_over = min(t for k, t, v in survivor.events()
                        if k == "A" and t > killed_at and set(map(int, v[0].split(","))) & victim_parts)
        assert took_over - killed_at >= SESSION_MS / 1000 * 0.8, \
            f"the victim's partitions moved {took_over - killed_at:.1f}s after the kill, before the session timeout"
        survivor.stop()
    finally:
        for m in members:
            if m.alive():
                m.proc.kill()
                m.proc.wait(10)
    # Exactly once: every record delivered once across the group.
    recs = all_records(members)
    dups = [r for r, n in Counter(recs).items() if n > 1]
    assert not dups, f"{len(dups)} records delivered more than once, e.g. {dups[:5]}"
    assert set(recs) == {(p, o) for p, c in counts.items() for o in range(c)}
    assert committed(bootstrap, group, topic) == dict(counts)
    errors = [(m.name, v) for m in members for k, _, v in m.events() if k == "E"]
    assert not [e for e in errors if "FENCED" in " ".join(e[1]) or "nknown" in " ".join(e[1])], errors[:5]
    # The group is listed with its type.
    from confluent_kafka.admin import AdminClient
    admin = AdminClient({"bootstrap.servers": bootstrap})
    listed = admin.list_consumer_groups().result(30)
    mine = [g for g in listed.valid if g.group_id == group]
    assert mine, [g.group_id for g in listed.valid]
    if getattr(mine[0], "type", None) is not None:
        assert str(mine[0].type).upper().endswith("CONSUMER"), mine[0].type


@pytest.mark.timeout(60)
def test_clients_cannot_produce_to_internal_topics(bootstrap):
    """Kafka refuses appends to internal topics from clients with INVALID_TOPIC_EXCEPTION (the
    coordinator still writes __consumer_offsets itself)."""
    from confluent_kafka import KafkaError, Producer
    p = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 10000, "retries": 0})
    results = []
    p.produce("__consumer_offsets", key=b"k", value=b"v", partition=0,
              on_delivery=lambda err, msg: results.append(err))
    p.flush(30)
    assert len(results) == 1 and results[0] is not None, results
    assert results[0].code() == KafkaError.TOPIC_EXCEPTION, results[0]
