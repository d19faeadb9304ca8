"""Complex event processing on the broker (issue 6): the HTTP API and the engine stage.

Events are produced and alerts read with confluent-kafka (assign + seek to the beginning, no group
management). Each test has a broker of its own: the issue's pattern reads `auth` and writes `alerts`."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from util import wait_until

# The brute-force pattern, as in cep/tests/smoke.rs.
BRUTE_FORCE = r"""{"id": "brute-force", "source": {"topic": "auth"}, "partition_by": "user",
 "event_time": {"field": "ts", "max_out_of_orderness": "5s"},
 "steps": [{"name": "fail", "where": "type == 'login' && !success", "times": {"min": 3}},
           {"name": "ok", "where": "type == 'login' && success", "contiguity": "relaxed"}],
 "within": "60s", "skip": "past_last_event",
 "emit": {"topic": "alerts", "key": "user",
          "value": {"user": "ok.user", "fails": "count(fail)", "first_fail": "first(fail).ts"}}}"""

PATTERNS = "/api/cep/patterns"


def http(method: str, url: str, body: bytes | str | None = None, content_type: str = "application/json"):
    """(status, parsed JSON or None) without raising on 4xx/5xx."""
    if isinstance(body, str):
        body = body.encode()
    headers = {"Content-Type": content_type} if body is not None else {}
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    return status, (json.loads(raw) if raw else None)


def login(user: str, ok: bool, ts: int) -> dict:
    return {"user": user, "type": "login", "success": ok, "ts": ts}


def attempts(t0: int) -> list[dict]:
    """alice: 3 failures then a success; bob: 2 failures then a success; then an event far later
    that moves the watermark (max event time - 5s) past all of them."""
    return [login("alice", False, t0 + 1000), login("alice", False, t0 + 2000),
            login("alice", False, t0 + 3000), login("bob", False, t0 + 3500),
            login("bob", False, t0 + 3700), login("alice", True, t0 + 4000),
            login("bob", True, t0 + 4500), {"user": "zed", "type": "logout", "ts": t0 + 100_000}]


def produce(bootstrap: str, topic: str, events: list[dict]) -> None:
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    for e in events:
        p.produce(topic, key=e["user"].encode(), value=json.dumps(e).encode())
    assert p.flush(30) == 0, "produce did not complete"


def read_topic(bootstrap: str, topic: str) -> list[tuple[bytes | None, dict]]:
    """Every record of every partition of topic (empty if it does not exist), as (key, JSON value)."""
    from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "cep-e2e-unused", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "allow.auto.create.topics": False})
    try:
        md = c.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None or not md.partitions:
            return []
        out = []
        for p in md.partitions:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if hi <= lo:
                continue
            c.assign([TopicPartition(topic, p, OFFSET_BEGINNING)])
            got = 0
            deadline = time.monotonic() + 30
            while got < hi - lo and time.monotonic() < deadline:
                for m in c.consume(num_messages=1000, timeout=1.0):
                    if m.error():
                        continue
                    out.append((m.key(), json.loads(m.value())))
                    got += 1
            assert got == hi - lo, f"read {got} of {hi - lo} records of {topic}-{p}"
        return out
    finally:
        c.close()


def caught_up(broker, topic: str = "auth") -> bool:
    """The engine stage has read every record of topic."""
    status, stats = http("GET", broker.http_url + "/api/cep/stats")
    assert status == 200, stats
    rows = [s for s in stats["sources"] if s["topic"] == topic]
    return bool(rows) and all(s["position"] == s["high_watermark"] for s in rows)


def register(broker, text: str = BRUTE_FORCE, content_type: str = "application/json", base: str = PATTERNS):
    status, body = http("POST", broker.http_url + base, text, content_type)
    assert status == 201, body
    return body["id"]


def alerts_for(bootstrap: str, user: str) -> list[dict]:
    return [v for k, v in read_topic(bootstrap, "alerts") if v.get("user") == user]


def test_brute_force_pattern_alerts_once_for_alice(broker):
    assert register(broker) == "brute-force"
    status, listed = http("GET", broker.http_url + PATTERNS)
    assert status == 200 and [d["id"] for d in listed] == ["brute-force"], listed
    status, one = http("GET", broker.http_url + PATTERNS + "/brute-force")
    assert status == 200 and one["kind"] == "pattern" and one["sources"] == ["auth"] and not one["paused"], one

    produce(broker.bootstrap, "auth", attempts(0))
    alerts = wait_until(lambda: read_topic(broker.bootstrap, "alerts"), 30, "an alert in `alerts`")
    wait_until(lambda: caught_up(broker), 30, "the engine stage to read all of `auth`")
    time.sleep(0.5)
    alerts = read_topic(broker.bootstrap, "alerts")
    assert alerts == [(b"alice", {"user": "alice", "fails": 3, "first_fail": 1000})], alerts

    status, stats = http("GET", broker.http_url + "/api/cep/stats")
    row = next(d for d in stats["definitions"] if d["id"] == "brute-force")
    assert row["events_in"] >= 7 and row["outputs"] == 1, stats


def test_invalid_definitions_get_400_and_are_not_registered(broker):
    bad_json = BRUTE_FORCE.replace("type == 'login' && !success", "type == = 'login'").replace(
        '"brute-force"', '"bad-json"')
    status, body = http("POST", broker.http_url + PATTERNS, bad_json)
    assert status == 400, body
    assert "steps" in body["error"] and body["position"]["offset"] >= 0, body

    bad_sql = "SELECT * FROM t MATCH_RECOGNIZE (PATTERN (A) DEFINE B AS true)"
    status, body = http("POST", broker.http_url + PATTERNS, bad_sql, "application/sql")
    assert status == 400, body
    assert "not a variable" in body["error"] and body["position"]["offset"] == 57, body

    status, body = http("POST", broker.http_url + PATTERNS, "{not json")
    assert status == 400, body

    status, listed = http("GET", broker.http_url + PATTERNS)
    assert status == 200 and listed == [], listed
    assert http("GET", broker.http_url + PATTERNS + "/bad-json")[0] == 404

    # Taken id: 409, the first one stays.
    register(broker)
    status, body = http("POST", broker.http_url + PATTERNS, BRUTE_FORCE)
    assert status == 409, body
    assert [d["id"] for d in http("GET", broker.http_url + PATTERNS)[1]] == ["brute-force"]


def test_sql_pattern_under_analytics_queries(broker):
    sql = """INSERT INTO alerts SELECT * FROM auth MATCH_RECOGNIZE (
  PARTITION BY user ORDER BY ts
  MEASURES S.user AS user, COUNT(F.*) AS fails, FIRST(F.ts) AS first_fail
  ONE ROW PER MATCH AFTER MATCH SKIP PAST LAST ROW
  PATTERN (F{3,} S) WITHIN INTERVAL '1' MINUTE
  DEFINE F AS type = 'login' AND NOT success, S AS type = 'login' AND success)"""
    qid = register(broker, sql, "application/sql", base="/api/analytics/queries")
    status, listed = http("GET", broker.http_url + "/api/analytics/queries")
    assert status == 200 and [d["id"] for d in listed] == [qid], listed
    produce(broker.bootstrap, "auth", attempts(0))
    wait_until(lambda: alerts_for(broker.bootstrap, "alice"), 30, "the SQL pattern's alert")
    assert alerts_for(broker.bootstrap, "bob") == []


def test_pause_resume_delete(broker):
    register(broker)
    url = broker.http_url + PATTERNS + "/brute-force"
    assert http("POST", url + "/pause")[0] == 200
    assert http("GET", url)[1]["paused"] is True

    produce(broker.bootstrap, "auth", attempts(0))
    wait_until(lambda: caught_up(broker), 30, "the engine stage to read all of `auth`")
    time.sleep(1.0)
    assert read_topic(broker.bootstrap, "alerts") == []

    assert http("POST", url + "/resume")[0] == 200
    assert http("GET", url)[1]["paused"] is False
    produce(broker.bootstrap, "auth", attempts(1_000_000))
    wait_until(lambda: alerts_for(broker.bootstrap, "alice"), 30, "an alert after resume")
    wait_until(lambda: caught_up(broker), 30, "the engine stage to read all of `auth`")
    assert [v["first_fail"] for v in alerts_for(broker.bootstrap, "alice")] == [1_001_000]

    assert http("DELETE", url)[0] == 204
    assert http("GET", url)[0] == 404
    assert http("DELETE", url)[0] == 404
    assert http("POST", url + "/pause")[0] == 404
    produce(broker.bootstrap, "auth", attempts(2_000_000))
    time.sleep(1.5)
    assert len(alerts_for(broker.bootstrap, "alice")) == 1
    assert http("GET", broker.http_url + PATTERNS)[1] == []


def test_definitions_survive_restart(broker):
    register(broker)
    other = BRUTE_FORCE.replace('"brute-force"', '"gone"')
    register(broker, other)
    assert http("DELETE", broker.http_url + PATTERNS + "/gone")[0] == 204

    broker.restart()
    status, listed = http("GET", broker.http_url + PATTERNS)
    assert status == 200 and [d["id"] for d in listed] == ["brute-force"], listed

    produce(broker.bootstrap, "auth", attempts(0))
    wait_until(lambda: alerts_for(broker.bootstrap, "alice"), 30, "an alert after the restart")
    wait_until(lambda: caught_up(broker), 30, "the engine stage to read all of `auth`")
    time.sleep(0.5)
    assert [v for _, v in read_topic(broker.bootstrap, "alerts")] == [
        {"user": "alice", "fails": 3, "first_fail": 1000}]
