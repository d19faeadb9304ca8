#!/usr/bin/env python3
"""CEP end-to-end latency: from producing the event that completes a match to the match
being read by a consumer from the output topic.

Starts one `weir serve` (WEIR_BIN, default target/release/weir) on free ports with a fresh
data dir, registers the issue's brute-force pattern (3+ failed logins then a success, per
user, within 60 s) with event time from `ts` and `max_out_of_orderness` 0 s (so a match is
released as soon as its last event is read; with a bound of B the latency grows by B), and:

* a producer process (confluent-kafka, linger.ms=1) sends --rate events/s, open loop in
  1 ms ticks, over --keys users (75% failures, 25% successes); each event carries its
  send time in microseconds (`sent_us`);
* a consumer process (confluent-kafka, fetch.wait.max.ms=1) reads the output topic; each
  match carries the `sent_us` of its last event (`ok.sent_us`), so latency = read time -
  sent_us (both processes on this machine's clock).

The first --warmup seconds are not counted. Prints p50/p90/p99/p99.9/max, the number of
matches, the achieved produce rate, the stage's stats, and the checkpoint topic's size.

    cargo build --release -p weir-broker --bin weir
    tests/.venv/bin/python benches/cep_latency.py --rate 50000 --duration 20
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pattern(source: str, sink: str) -> str:
    return json.dumps({
        "id": "latency", "source": {"topic": source}, "partition_by": "user",
        "event_time": {"field": "ts", "max_out_of_orderness": "0s"},
        "steps": [{"name": "fail", "where": "type == 'login' && !success", "times": {"min": 3}},
                  {"name": "ok", "where": "type == 'login' && success", "contiguity": "relaxed"}],
        "within": "60s", "skip": "past_last_event",
        "emit": {"topic": sink, "key": "user",
                 "value": {"user": "ok.user", "fails": "count(fail)", "sent_us": "ok.sent_us"}}})


def producer(bootstrap: str, topic: str, rate: int, duration: float, keys: int, out) -> None:
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "acks": 1,
                  "queue.buffering.max.messages": 1_000_000})
    rnd = random.Random(7)
    users = [f"u{i}" for i in range(keys)]
    per_tick = rate / 1000.0
    sent = 0
    t0 = time.monotonic()
    owed = 0.0
    tick = 0
    while True:
        now = time.monotonic()
        if now - t0 >= duration:
            break
        due_ticks = int((now - t0) * 1000)
        while tick <= due_ticks:
            owed += per_tick
            tick += 1
        n = int(owed)
        owed -= n
        for _ in range(n):
            u = users[rnd.randrange(keys)]
            ok = rnd.random() < 0.25
            us = time.time_ns() // 1000
            v = ('{"user":"%s","type":"login","success":%s,"ts":%d,"sent_us":%d}'
                 % (u, "true" if ok else "false", us // 1000, us))
            while True:
                try:
                    p.produce(topic, key=u.encode(), value=v.encode())
                    break
                except BufferError:
                    p.poll(0.001)
            sent += 1
        p.poll(0)
        nxt = t0 + (tick) / 1000.0
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    p.flush(30)
    out.put(("produced", sent, time.monotonic() - t0))


def consumer(bootstrap: str, topic: str, stop_at: float, warmup_until_us: int, out) -> None:
    from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "cep-latency", "enable.auto.commit": False,
                  "fetch.wait.max.ms": 1, "fetch.min.bytes": 1, "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    lat = []
    total = 0
    while time.time() < stop_at:
        m = c.poll(0.05)  # returns as soon as a record is there (consume() waits for a full batch)
        if m is not None:
            if m.error():
                continue
            now_us = time.time_ns() // 1000
            total += 1
            sent = json.loads(m.value()).get("sent_us")
            if isinstance(sent, int) and sent >= warmup_until_us:
                lat.append((now_us - sent, sent))
    c.close()
    out.put(("latencies", total, lat))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=50_000)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--keep", action="store_true", help="keep the broker's data dir and log")
    ap.add_argument("--timeline", action="store_true",
                    help="also print, per second of send time, the matches' p50/p99/max latency "
                         "(periodic spikes point at snapshots, a rising line at the stage falling behind)")
    ap.add_argument("--bin", default=os.environ.get("WEIR_BIN", str(ROOT / "target" / "release" / "weir")))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cep-latency-"))
    kport, hport = free_port(), free_port()
    bootstrap, http = f"127.0.0.1:{kport}", f"http://127.0.0.1:{hport}"
    log = open(work / "broker.log", "wb")
    proc = subprocess.Popen([args.bin, "serve", "--data-dir", str(work / "data"), "--kafka-listen", bootstrap,
                             "--http-listen", f"127.0.0.1:{hport}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(http + "/health", timeout=1).read()
                break
            except Exception:  # noqa: BLE001
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"weir did not start; see {work / 'broker.log'}")
                time.sleep(0.05)
        from confluent_kafka.admin import AdminClient, NewTopic
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for f in admin.create_topics([NewTopic("lat-auth", 1, 1), NewTopic("lat-alerts", 1, 1)]).values():
            f.result(30)
        req = urllib.request.Request(http + "/api/cep/patterns", data=pattern("lat-auth", "lat-alerts").encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=30).read()

        q: mp.Queue = mp.Queue()
        start = time.time()
        warm_us = int((start + args.warmup) * 1e6)
        cons = mp.Process(target=consumer, args=(bootstrap, "lat-alerts", start + args.duration + 3, warm_us, q))
        cons.start()
        time.sleep(0.5)
        prod = mp.Process(target=producer, args=(bootstrap, "lat-auth", args.rate, args.duration, args.keys, q))
        prod.start()
        results = dict((r[0], r[1:]) for r in (q.get(timeout=args.duration + 120) for _ in range(2)))
        prod.join()
        cons.join()
        sent, secs = results["produced"]
        total, pairs = results["latencies"]
        lat = sorted(d for d, _ in pairs)

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p / 100.0 * len(lat)))] / 1000.0 if lat else float("nan")

        stats = json.loads(urllib.request.urlopen(http + "/api/cep/stats", timeout=10).read())
        row = stats["definitions"][0]
        ck = sum(f.stat().st_size for f in (work / "data" / "__cep_checkpoints-0").glob("*.log"))
        print(f"produced {sent} events in {secs:.1f} s ({sent / secs:,.0f} events/s, target {args.rate:,}), "
              f"{args.keys} keys; {total} matches read, {len(lat)} after the {args.warmup:.0f} s warm-up")
        print(f"end-to-end latency ms: p50 {pct(50):.2f}  p90 {pct(90):.2f}  p99 {pct(99):.2f}  "
              f"p99.9 {pct(99.9):.2f}  max {lat[-1] / 1000.0 if lat else float('nan'):.2f}")
        if args.timeline and pairs:
            first = min(t for _, t in pairs) // 1_000_000
            buckets: dict[int, list[int]] = {}
            for d, t in pairs:
                buckets.setdefault(t // 1_000_000 - first, []).append(d)
            for sec in sorted(buckets):
                b = sorted(buckets[sec])
                utc = time.strftime("%H:%M:%S", time.gmtime(first + sec))
                print(f"  second {sec:3d} ({utc} UTC): {len(b):6d} matches, p50 {b[len(b) // 2] / 1000:8.2f} ms, "
                      f"p99 {b[min(len(b) - 1, int(0.99 * len(b)))] / 1000:8.2f} ms, max {b[-1] / 1000:8.2f} ms")
        print(f"stage: events_in {row['events_in']} matches_out {row['matches_out']} "
              f"partial_matches {row['partial_matches']} lag {row['lag']}; checkpoint log {ck / 1e6:.1f} MB")
        return 0
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
