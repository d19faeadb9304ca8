"""/metrics: Prometheus counters and the per-API request-duration histogram move with real
traffic, and the histogram is well formed (cumulative buckets, +Inf equals the count)."""

from __future__ import annotations

import re
import urllib.request

from confluent_kafka import Producer

from util import consume_partition, create_topic, unique_topic

SAMPLE = re.compile(r'^(\w+)(?:\{([^}]*)\})?\s+(\S+)$')


def scrape(broker) -> dict:
    with urllib.request.urlopen(broker.http_url + "/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        samples[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return samples


def produce_histogram(samples: dict, api: str) -> list[tuple[float, float]]:
    out = []
    for (name, labels), v in samples.items():
        if name == "weir_request_duration_seconds_bucket" and f'api="{api}"' in labels:
            le = re.search(r'le="([^"]+)"', labels).group(1)
            out.append((float("inf") if le == "+Inf" else float(le), v))
    return sorted(out)


def test_request_duration_histogram_counts_real_requests(broker):
    bootstrap = broker.bootstrap
    topic = unique_topic("metrics")
    create_topic(bootstrap, topic, partitions=1)
    before = scrape(broker)
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    for i in range(20):
        p.produce(topic, value=b"v%d" % i)
        p.flush(30)
    assert len(consume_partition(bootstrap, topic, 0, 0)) == 20
    after = scrape(broker)

    count = ("weir_request_duration_seconds_count", 'api="Produce"')
    assert after[count] - before.get(count, 0) >= 20, "20 acknowledged produce requests must be counted"
    assert after[("weir_produced_batches_total", "")] - before[("weir_produced_batches_total", "")] >= 20
    for api in ("Produce", "Fetch", "other"):
        buckets = produce_histogram(after, api)
        assert len(buckets) == 17, f"{api}: {buckets}"
        values = [v for _, v in buckets]
        assert values == sorted(values), f"{api} buckets must be cumulative: {buckets}"
        assert buckets[-1][0] == float("inf")
        assert buckets[-1][1] == after[("weir_request_duration_seconds_count", f'api="{api}"')]
        assert after[("weir_request_duration_seconds_sum", f'api="{api}"')] >= 0
    # The produce requests above took real time, so the sum moved.
    s = ("weir_request_duration_seconds_sum", 'api="Produce"')
    assert after[s] > before.get(s, 0)
