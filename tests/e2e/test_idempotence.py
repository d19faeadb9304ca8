"""Acceptance (e): an idempotent librdkafka producer whose produce responses get lost (connection dropped
after the broker appended the batch, see faultproxy.py) retries, and the log holds every record exactly
once, in production order per partition."""

from __future__ import annotations

import time
from collections import defaultdict

from confluent_kafka import Producer

from faultproxy import FaultProxy
from util import consume_partition, create_topic, unique_topic

N = 5000
PARTITIONS = 3


def test_idempotent_producer_retries_write_no_duplicates(broker_factory):
    b = broker_factory(start=False)
    # lose the response of produce requests 3, 8, 15, 24, 35, ... (at most 6 drops)
    proxy = FaultProxy(b.kafka_port, drop_produce=lambda n: n >= 3 and n in {3, 8, 15, 24, 35, 48}).start()
    try:
        b.advertised_kafka = proxy.address
        b.start()
        topic = unique_topic("idem")
        create_topic(proxy.address, topic, PARTITIONS)

        p = Producer({
            "bootstrap.servers": proxy.address,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "batch.num.messages": 100,
            "max.in.flight.requests.per.connection": 5,
            "message.timeout.ms": 60000,
            "retry.backoff.ms": 50,
            "reconnect.backoff.ms": 50,
        })
        delivered = {}
        errors = []

        def cb(i, err, msg):
            if err is not None:
                errors.append((i, str(err)))
            else:
                delivered[i] = (msg.partition(), msg.offset())

        t0 = time.monotonic()
        for i in range(N):
            p.produce(topic, key=f"k{i % 97}".encode(), value=f"v{i}".encode(),
                      on_delivery=lambda err, msg, i=i: cb(i, err, msg))
            if i % 100 == 99:
                p.poll(0.01)   # spread the records over many produce requests
        left = p.flush(90)
        elapsed = time.monotonic() - t0
        assert left == 0, f"{left} records undelivered; errors {errors[:5]}"
        assert not errors, f"delivery errors with an idempotent producer: {errors[:5]}"
        assert proxy.dropped >= 3, (f"fault injection did not happen (produce requests {proxy.produce_requests}, "
                                    f"dropped {proxy.dropped}): the test proves nothing")
        assert len(delivered) == N

        by_part = defaultdict(list)
        for i, (part, off) in delivered.items():
            by_part[part].append((off, i))
        seen = []
        for part in range(PARTITIONS):
            recs = consume_partition(b.bootstrap, topic, part, 0, timeout=60)
            got = [(o, int(v.decode()[1:])) for o, _k, v, _ts in recs]
            seen += [i for _, i in got]
            # exactly the delivered records, at the offsets the delivery reports named
            same = got == sorted(by_part[part])   # (a bool: keeps pytest from printing 5000-item diffs)
            assert same, (
                f"partition {part}: log differs from delivery reports; first differences: "
                f"{[(g, e) for g, e in zip(got, sorted(by_part[part])) if g != e][:5]}, "
                f"log has {len(got)} records, {len(by_part[part])} delivered")
            # production order
            in_order = [i for _, i in got] == sorted(i for _, i in got)
            assert in_order, f"partition {part}: out of production order"
            # dense offsets from 0: no gaps and no duplicate appends
            dense = [o for o, _ in got] == list(range(len(got)))
            assert dense, f"partition {part}: offsets not dense from 0"
        exactly_once = sorted(seen) == list(range(N))
        assert exactly_once, "some value is missing or duplicated"
        print(f"idempotence: {N} records, {proxy.produce_requests} produce requests, {proxy.dropped} responses "
              f"dropped, {elapsed:.1f}s")
    finally:
        proxy.stop()
