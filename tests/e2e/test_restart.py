"""Acceptance (f): every record acknowledged with acks=all is still there after the broker restarts,
after a clean SIGTERM shutdown and after SIGKILL; offsets go on where they stopped."""

from __future__ import annotations

import signal
import threading
import time
from collections import defaultdict

import pytest
from confluent_kafka import Producer

from util import consume_partition, create_topic, produce_records, unique_topic

PARTITIONS = 4
N = 20000


def _read_all(bootstrap, topic):
    return {p: [(o, k, v) for o, k, v, _ in consume_partition(bootstrap, topic, p, 0, timeout=60)]
            for p in range(PARTITIONS)}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_acknowledged_records_survive_restart(broker, sig):
    topic = unique_topic(f"restart-{sig.name.lower()}")
    create_topic(broker.bootstrap, topic, PARTITIONS, config={"max.message.bytes": "2000000"})
    records = [(None, f"k{i % 50}".encode(), f"v{i}".encode() if i % 7 else None) for i in range(N)]
    res = produce_records(broker.bootstrap, topic, records, conf={"compression.type": "lz4", "linger.ms": 10})
    expect = defaultdict(list)
    for (part, off), (_, k, v) in zip(res, records):
        expect[part].append((off, k, v))
    expect = {p: sorted(expect.get(p, [])) for p in range(PARTITIONS)}

    rc = broker.stop(sig)
    if sig == signal.SIGTERM:
        assert rc == 0, f"clean shutdown exited with {rc}\n{broker.log_tail()}"
    else:
        assert rc == -signal.SIGKILL
    broker.start()

    got = _read_all(broker.bootstrap, topic)
    for p in range(PARTITIONS):
        same = got[p] == expect[p]   # a bool: no 5000-item diff from pytest
        assert same, (f"partition {p} after {sig.name}: {len(got[p])} records, expected {len(expect[p])}; "
                                     f"first difference at "
                                     f"{next((i for i, (a, b) in enumerate(zip(got[p], expect[p])) if a != b), min(len(got[p]), len(expect[p])))}")
    # appends go on at the old log end
    more = produce_records(broker.bootstrap, topic, [(p, b"after", f"after-{p}".encode()) for p in range(PARTITIONS)])
    assert more == [(p, len(expect[p])) for p in range(PARTITIONS)], f"offsets after restart: {more}"

    # and a second restart of the same kind changes nothing
    broker.restart(sig)
    got = _read_all(broker.bootstrap, topic)
    for p in range(PARTITIONS):
        same = got[p] == expect[p] + [(len(expect[p]), b"after", f"after-{p}".encode())]
        assert same, f"partition {p} after the 2nd restart: {len(got[p])} records, last {got[p][-2:]}"


def test_sigkill_during_production_keeps_every_acknowledged_record(broker):
    """SIGKILL while a producer is busy: whatever was acknowledged before the kill is there afterwards,
    at the offset its delivery report named. (Unacknowledged records may or may not be there.)"""
    topic = unique_topic("kill-busy")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    acked = {}
    lock = threading.Lock()
    stop = threading.Event()

    def produce():
        p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 2,
                      "message.timeout.ms": 5000, "retries": 0})
        i = 0
        while not stop.is_set():
            def cb(err, msg, i=i):
                if err is None:
                    with lock:
                        acked[i] = (msg.partition(), msg.offset())
            try:
                p.produce(topic, key=f"k{i % 50}".encode(), value=f"v{i}".encode(), on_delivery=cb)
                i += 1
            except BufferError:
                p.poll(0.01)
            if i % 200 == 0:
                p.poll(0.001)
        p.flush(10)

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 5000 and time.monotonic() < deadline:
        time.sleep(0.05)
    with lock:
        n_before = len(acked)
    assert n_before >= 5000, f"only {n_before} records acknowledged in 30s"
    broker.kill()
    with lock:
        snapshot = dict(acked)   # everything acknowledged before the kill returned
    stop.set()
    t.join(30)
    broker.start()

    got = {}
    for part in range(PARTITIONS):
        for o, _k, v, _ts in consume_partition(broker.bootstrap, topic, part, 0, timeout=60):
            got[(part, o)] = v
    missing = [(i, po) for i, po in sorted(snapshot.items()) if got.get(po) != f"v{i}".encode()]
    assert not missing, (f"{len(missing)} of {len(snapshot)} acknowledged records lost or changed after SIGKILL; "
                         f"first: {[(i, po, got.get(po)) for i, po in missing[:5]]}")
