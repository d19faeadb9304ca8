"""Acceptance (a): each real client creates an 8-partition topic with its own admin API, produces
100,000 records (keys, headers on every 10th, null value on every 100th, one 1 MiB record) with each
compression codec, consumes from the beginning, and gets exactly what it produced, in order, per partition."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from clients import PY_CLIENTS
from kafkawire import KafkaConn, parse_batches
from util import BIG_INDEX, BIG_SIZE, CODECS, N_RECORDS, NODE_DIR, big_value, record_timing, unique_topic, verify_roundtrip

N = int(os.environ.get("WEIR_E2E_RECORDS", N_RECORDS))


CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def _check_codec_used(bootstrap, topic, codec):
    """The batches the broker stores really use the codec (first fetch of each partition)."""
    seen = set()
    with KafkaConn.to(bootstrap) as c:
        for part in range(8):
            seen |= {b["attributes"] & 0x7 for b in parse_batches(c.fetch(topic, part, 0, max_bytes=256 * 1024)["records"])}
    want = CODEC_IDS[codec]
    # a client may send one incompressible batch (the 1 MiB record) uncompressed
    assert want in seen and seen <= {want, 0}, f"stored batch codecs {sorted(seen)}, expected {want} ({codec})"


def _report(client, codec, n, timings, total):
    parts = ", ".join(f"{k}={v:.1f}s" for k, v in timings.items())
    record_timing(f"roundtrip {client:15s} {codec:6s}", f"{n} records: {parts}, total={total:.1f}s "
                                                        f"({n / max(total, 1e-9):,.0f} rec/s)")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("client", list(PY_CLIENTS))
def test_python_client_roundtrip(bootstrap, client, codec):
    topic = unique_topic(f"rt-{client}-{codec}")
    big = big_value(codec, BIG_INDEX)
    t0 = time.monotonic()
    produced, consumed, timings = PY_CLIENTS[client](bootstrap, topic, codec, N, big)
    total = time.monotonic() - t0
    _report(client, codec, N, timings, total)
    verify_roundtrip(codec, N, produced, consumed, big)
    _check_codec_used(bootstrap, topic, codec)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("codec", CODECS)
def test_kafkajs_roundtrip(bootstrap, codec, tmp_path):
    topic = unique_topic(f"rt-kafkajs-{codec}")
    out_file = tmp_path / "kafkajs-result.json"
    args = {"bootstrap": bootstrap, "topic": topic, "codec": codec, "n": N,
            "bigIndex": BIG_INDEX, "bigSize": BIG_SIZE, "partitions": 8, "out": str(out_file)}
    t0 = time.monotonic()
    try:
        proc = subprocess.run(["node", str(NODE_DIR / "kafkajs_roundtrip.js")], cwd=NODE_DIR,
                              env={**os.environ, "WEIR_JS_ARGS": json.dumps(args), "KAFKAJS_NO_PARTITIONER_WARNING": "1"},
                              capture_output=True, timeout=540, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"kafkajs round trip timed out; stderr:\n{(e.stderr or b'').decode(errors='replace')[-4000:]}")
    total = time.monotonic() - t0
    out = out_file.read_text() if out_file.exists() else proc.stdout.decode(errors="replace")
    try:
        res = json.loads(out)
    except json.JSONDecodeError:
        pytest.fail(f"kafkajs script exited {proc.returncode} without JSON result: {out[-2000:]}\n"
                    f"stderr: {proc.stderr.decode(errors='replace')[-4000:]}")
    if "error" in res or proc.returncode != 0:
        pytest.fail(f"kafkajs round trip failed (exit {proc.returncode}): {res.get('error')}\n"
                    f"stderr: {proc.stderr.decode(errors='replace')[-4000:]}")
    produced = {int(p): [tuple(x) for x in lst] for p, lst in res["produced"].items()}
    consumed = {int(p): [(o, k, v, tuple(tuple(h) for h in hs)) for o, k, v, hs in lst]
                for p, lst in res["consumed"].items() if lst or int(p) in produced}
    _report("kafkajs", codec, N, res["timings"], total)
    verify_roundtrip(codec, N, produced, consumed, big_value(codec, BIG_INDEX))
    _check_codec_used(bootstrap, topic, codec)
