#!/usr/bin/env python3
"""HTTP ingest throughput beside the Kafka-protocol produce path, in the same run.

Starts one `weir serve` (WEIR_BIN, default target/release/weir) on free ports with a
fresh data dir, then:

* HTTP: POST /ingest/{topic} with NDJSON bodies of --per-request events (~--event-bytes
  each), from --connections keep-alive connections; every request is fsync'd before
  its answer (the ingest path always waits for durability, like acks=all).
* Kafka: `weir bench produce` with records of the same size, acks=all, the same number
  of records and --connections producers.

Usage (run with the e2e virtualenv's Python or any Python 3.10+; stdlib only):

    cargo build --release -p weir-broker --bin weir
    python3 benches/ingest_bench.py --events 400000 --per-request 1000 --connections 4
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(url: str, proc: subprocess.Popen) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            sys.exit(f"weir exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit("weir did not start")


def make_body(start: int, n: int, event_bytes: int) -> bytes:
    pad = "x" * max(0, event_bytes - 60)
    return "".join(json.dumps({"id": i, "user": f"u{i % 1000}", "pad": pad}) + "\n"
                   for i in range(start, start + n)).encode()


def http_run(port: int, topic: str, events: int, per: int, conns: int, event_bytes: int) -> float:
    requests = events // per
    bodies = [make_body(i * per, per, event_bytes) for i in range(min(requests, 64))]
    # Create the topic first so creation is not timed.
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("POST", f"/ingest/{topic}", bodies[0][: bodies[0].index(b"\n") + 1])
    assert c.getresponse().read() and True
    errors: list[str] = []
    counter = iter(range(requests))
    lock = threading.Lock()

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            conn.request("POST", f"/ingest/{topic}?key=user", bodies[i % len(bodies)],
                         {"Content-Type": "application/x-ndjson"})
            r = conn.getresponse()
            data = r.read()
            if r.status != 200:
                errors.append(f"{r.status} {data[:200]!r}")
                return

    threads = [threading.Thread(target=worker) for _ in range(conns)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    if errors:
        sys.exit(f"HTTP ingest failed: {errors[:3]}")
    return requests * per / elapsed


def kafka_run(weir: str, bootstrap: str, events: int, conns: int, record_bytes: int) -> tuple[float, str]:
    out = subprocess.run([weir, "bench", "produce", "--bootstrap", bootstrap, "--topic", "bench-kafka",
                          "--records", str(events), "--record-size", str(record_bytes), "--acks", "all",
                          "--producers", str(conns), "--no-baseline"],
                         capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    if out.returncode != 0:
        sys.exit(f"weir bench produce failed:\n{text}")
    # The table row: "produce  <records>  <records/s>  <MiB/s> ...".
    m = re.search(r"^produce\s+(\d+)\s+(\d+)", text, re.MULTILINE)
    rate = float(m.group(2)) if m else float("nan")
    return rate, text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--per-request", type=int, default=1000)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--event-bytes", type=int, default=100)
    args = ap.parse_args()
    weir = os.environ.get("WEIR_BIN", str(ROOT / "target" / "release" / "weir"))
    with tempfile.TemporaryDirectory() as tmp:
        kport, hport = free_port(), free_port()
        proc = subprocess.Popen([weir, "serve", "--data-dir", f"{tmp}/data", "--kafka-listen", f"127.0.0.1:{kport}",
                                 "--http-listen", f"127.0.0.1:{hport}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_health(f"http://127.0.0.1:{hport}", proc)
            sample = make_body(0, 1, args.event_bytes)
            record_bytes = len(sample) - 1
            http_rate = http_run(hport, "bench-http", args.events, args.per_request, args.connections, args.event_bytes)
            kafka_rate, kafka_text = kafka_run(weir, f"127.0.0.1:{kport}", args.events, args.connections, record_bytes)
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"events: {args.events} of {record_bytes} bytes, {args.connections} connections, "
          f"{args.per_request} events per HTTP request")
    print(f"HTTP ingest (NDJSON, fsync per request):   {http_rate:12,.0f} events/s")
    print(f"Kafka produce (weir bench produce, acks=all): {kafka_rate:12,.0f} records/s")
    print("--- weir bench produce output ---")
    print(kafka_text.strip())


if __name__ == "__main__":
    main()
