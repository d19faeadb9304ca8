"""Acceptance (b): kcat (Debian's 1.7.1 on librdkafka 2.0.2) lists metadata, produces with each codec and
consumes back exactly what it produced."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from kafkawire import KafkaConn, parse_batches
from util import create_topic, unique_topic

CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}

N = 2000
KCAT = shutil.which("kcat")


def kcat(*args, input: bytes | None = None, timeout: float = 60) -> bytes:
    assert KCAT, "kcat not installed: run tests/setup.sh"
    try:
        p = subprocess.run([KCAT, *args], input=input, capture_output=True, timeout=timeout,
                           stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"kcat {' '.join(args)} hung for {timeout}s; stderr: {(e.stderr or b'')[-2000:]!r}")
    assert p.returncode == 0, f"kcat {' '.join(args)} exited {p.returncode}; stderr:\n{p.stderr.decode(errors='replace')[-3000:]}"
    return p.stdout


def test_kcat_metadata(shared_broker):
    bootstrap = shared_broker.bootstrap
    topic = unique_topic("kcat-md")
    create_topic(bootstrap, topic, 3)
    md = json.loads(kcat("-L", "-b", bootstrap, "-J", "-t", topic, "-m", "10"))
    assert [b["name"] for b in md["brokers"]] == [bootstrap], md["brokers"]
    broker_id = md["brokers"][0]["id"]
    (t,) = md["topics"]
    assert t["topic"] == topic and "error" not in t, t
    assert sorted(p["partition"] for p in t["partitions"]) == [0, 1, 2]
    assert all(p["leader"] == broker_id for p in t["partitions"]), t["partitions"]
    # plain-text listing of all topics works too
    text = kcat("-L", "-b", bootstrap, "-m", "10").decode()
    assert f'topic "{topic}" with 3 partitions' in text, text[-2000:]


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_kcat_produce_consume(shared_broker, codec):
    bootstrap = shared_broker.bootstrap
    topic = unique_topic(f"kcat-{codec}")
    create_topic(bootstrap, topic, 2)
    lines = [f"key{i % 100}:{codec}-value-{i}" for i in range(N)]
    kcat("-P", "-b", bootstrap, "-t", topic, "-p", "0", "-K", ":", "-z", codec, "-H", "src=kcat",
         "-X", "linger.ms=20", input=("\n".join(lines) + "\n").encode())
    out = kcat("-C", "-b", bootstrap, "-t", topic, "-p", "0", "-o", "beginning", "-e", "-q",
               "-f", "%o\t%k\t%s\t%h\n").decode()
    got = out.splitlines()
    want = [f"{i}\tkey{i % 100}\t{codec}-value-{i}\tsrc=kcat" for i in range(N)]
    assert len(got) == N, f"kcat consumed {len(got)} records, expected {N}; first: {got[:3]}"
    diff = [(i, g, w) for i, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not diff, f"{len(diff)} records differ; first: {diff[:3]}"
    # kcat really compressed (librdkafka < 2.11.1 silently turns gzip/snappy/lz4 off when a broker
    # advertises Produce only from v3), and the broker kept the producer's codec (compression.type=producer)
    with KafkaConn.to(bootstrap) as c:
        batches = parse_batches(c.fetch(topic, 0, 0)["records"])
    assert batches and {b["attributes"] & 0x7 for b in batches} == {CODEC_IDS[codec]}, (
        f"batch codecs {sorted({b['attributes'] & 0x7 for b in batches})}, expected {CODEC_IDS[codec]} ({codec})")
    # partition 1 got nothing
    assert kcat("-C", "-b", bootstrap, "-t", topic, "-p", "1", "-o", "beginning", "-e", "-q") == b""
    # start in the middle of a batch, read a fixed count
    out = kcat("-C", "-b", bootstrap, "-t", topic, "-p", "0", "-o", "1234", "-c", "5", "-e", "-q", "-f", "%o:%s\n").decode()
    assert out.splitlines() == [f"{i}:{codec}-value-{i}" for i in range(1234, 1239)]


def test_kcat_all_partitions_json(shared_broker):
    bootstrap = shared_broker.bootstrap
    topic = unique_topic("kcat-json")
    create_topic(bootstrap, topic, 3)
    lines = [f"k{i}:v{i}" for i in range(300)]
    kcat("-P", "-b", bootstrap, "-t", topic, "-K", ":", input=("\n".join(lines) + "\n").encode())
    out = kcat("-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q", "-J").decode()
    msgs = [json.loads(l) for l in out.splitlines()]
    assert sorted((m["key"], m["payload"]) for m in msgs) == sorted((f"k{i}", f"v{i}") for i in range(300))
    for part in range(3):
        offs = [m["offset"] for m in msgs if m["partition"] == part]
        assert offs == list(range(len(offs))), f"partition {part}: offsets {offs[:10]}..."
        # the partitioner is deterministic: same key, same partition; order within a partition = input order
        idx = [int(m["payload"][1:]) for m in msgs if m["partition"] == part]
        assert idx == sorted(idx)
