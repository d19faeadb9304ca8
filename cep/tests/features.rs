//! SQL, windows, alerts, checkpoint/restore and robustness.
mod common;
use common::*;
use proptest::prelude::*;
use weir_cep::{parse_definition_json, parse_sql, Engine, Limits, OutputKind, SourceRecord};

const SQL: &str = "INSERT INTO alerts SELECT * FROM auth MATCH_RECOGNIZE (
  PARTITION BY user ORDER BY ts
  MEASURES S.user AS user, COUNT(F.*) AS fails, FIRST(F.ts) AS first_fail
  ONE ROW PER MATCH AFTER MATCH SKIP PAST LAST ROW
  PATTERN (F{3,} S) WITHIN INTERVAL '1' MINUTE
  DEFINE F AS type = 'login' AND NOT success, S AS type = 'login' AND success)";

fn login(user: &str, ok: bool, ts: i64) -> String {
    format!(r#"{{"user":"{user}","type":"login","success":{ok},"ts":{ts}}}"#)
}

#[test]
fn sql_match_recognize() {
    let def = parse_sql(SQL).unwrap_or_else(|e| panic!("{e}"));
    let mut e = Engine::new(Limits::default());
    e.register(def).unwrap_or_else(|e| panic!("{e}"));
    let evs = [
        login("a", false, 1000),
        login("a", false, 2000),
        login("a", false, 3000),
        login("a", true, 4000),
        login("b", false, 5000),
        login("b", false, 6000),
        login("b", true, 7000),
        // too slow: more than a minute
        login("c", false, 10_000),
        login("c", false, 20_000),
        login("c", false, 71_000),
        login("c", true, 72_000),
    ];
    let refs: Vec<&str> = evs.iter().map(|s| s.as_str()).collect();
    let mut out = feed(&mut e, "auth", &refs);
    out.extend(e.finish());
    assert_eq!(
        values(&out),
        vec![serde_json::json!({"user":"a","fails":3,"first_fail":1000})]
    );
    assert_eq!(out[0].topic, "alerts");
}

#[test]
fn sql_errors_have_positions() {
    let cases = [
        (
            "SELECT * FROM t MATCH_RECOGNIZE (PATTERN (A B) DEFINE A AS x = = 1)",
            "expected a value",
            63,
        ),
        (
            "SELECT * FROM t MATCH_RECOGNIZE (PATTERN (A{x}) DEFINE A AS true)",
            "expected",
            44,
        ),
        (
            "SELECT * FROM t MATCH_RECOGNIZE (PATTERN (A) DEFINE B AS true)",
            "not a variable",
            57,
        ),
        (
            "SELECT * FROM t MATCH_RECOGNIZE (PATTERN (A) AFTER MATCH SKIP TO FIRST Z)",
            "unknown step",
            62,
        ),
        (
            "SELECT * FROM t MATCH_RECOGNIZE (PATTERN (A) BOGUS)",
            "expected PARTITION BY",
            45,
        ),
        (
            "SELECT * FROM t\nMATCH_RECOGNIZE (PATTERN (A) DEFINE A AS nosuch(x))",
            "unknown function",
            57,
        ),
    ];
    for (sql, needle, offset) in cases {
        let err = parse_sql(sql)
            .err()
            .unwrap_or_else(|| panic!("{sql} should fail"));
        assert!(err.to_string().contains(needle), "{sql}: {err}");
        assert_eq!(err.position.map(|p| p.offset), Some(offset), "{sql}: {err}");
    }
    let err =
        parse_sql("SELECT * FROM t\nMATCH_RECOGNIZE (PATTERN (A) DEFINE A AS nosuch(x))").err();
    assert_eq!(
        err.and_then(|e| e.position).map(|p| (p.line, p.column)),
        Some((2, 42))
    );
}

#[test]
fn windows_tumbling_hopping_session() {
    let q = r#"{"id":"q","source":{"topic":"t"},"event_time":{"field":"ts"},
      "window":{"type":"tumbling","size":"10s"},"group_by":["user"],
      "aggregates":{"n":"count()","s":"sum(x)","a":"avg(x)","mn":"min(x)","mx":"max(x)",
        "p50":"percentile(x, 0.5)","d":"count_distinct(page)","top":"top_k(page, 2)"},
      "emit":{"topic":"stats"}}"#;
    let mut e = engine(&[q]);
    let evs = [
        r#"{"user":"u","x":1,"page":"a","ts":1000}"#,
        r#"{"user":"u","x":2,"page":"b","ts":2000}"#,
        r#"{"user":"u","x":3,"page":"a","ts":3000}"#,
        r#"{"user":"v","x":10,"page":"a","ts":4000}"#,
        r#"{"user":"u","x":5,"page":"c","ts":12000}"#,
    ];
    let out = feed(&mut e, "t", &evs);
    let v = values(&out);
    assert_eq!(v.len(), 2, "{v:?}");
    let u = v
        .iter()
        .find(|x| x["user"] == "u")
        .cloned()
        .unwrap_or_default();
    assert_eq!(u["window_start"], 0);
    assert_eq!(u["window_end"], 10000);
    assert_eq!(
        (u["n"].as_i64(), u["s"].as_i64(), u["a"].as_i64()),
        (Some(3), Some(6), Some(2)),
        "{u}"
    );
    assert_eq!(u["mn"], 1);
    assert_eq!(u["mx"], 3);
    let p50 = u["p50"].as_f64().unwrap_or(0.0);
    assert!((p50 - 2.0).abs() < 0.05, "{p50}");
    assert_eq!(u["d"], 2);
    assert_eq!(
        u["top"],
        serde_json::json!([{"value":"a","count":2},{"value":"b","count":1}])
    );
    assert!(out
        .iter()
        .all(|o| o.kind == OutputKind::WindowResult && o.topic == "stats"));

    let h = r#"{"id":"h","source":{"topic":"t"},"event_time":{"field":"ts"},
      "window":{"type":"hopping","size":"10s","slide":"5s"},"aggregates":{"n":"count()"},"emit":{"topic":"o"}}"#;
    let mut e = engine(&[h]);
    let mut out = feed(&mut e, "t", &[r#"{"ts":7000}"#, r#"{"ts":12000}"#]);
    out.extend(e.finish());
    let v: Vec<(i64, i64, i64)> = values(&out)
        .iter()
        .map(|x| {
            (
                x["window_start"].as_i64().unwrap_or(-1),
                x["window_end"].as_i64().unwrap_or(-1),
                x["n"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(v, vec![(0, 10000, 1), (5000, 15000, 2), (10000, 20000, 1)]);

    let s = r#"{"id":"s","source":{"topic":"t"},"event_time":{"field":"ts"},
      "window":{"type":"session","gap":"5s"},"group_by":["user"],"aggregates":{"n":"count()"},"emit":{"topic":"o"}}"#;
    let mut e = engine(&[s]);
    let mut out = feed(
        &mut e,
        "t",
        &[
            r#"{"user":"u","ts":1000}"#,
            r#"{"user":"u","ts":4000}"#,
            r#"{"user":"u","ts":20000}"#,
        ],
    );
    out.extend(e.finish());
    let v: Vec<(i64, i64, i64)> = values(&out)
        .iter()
        .map(|x| {
            (
                x["window_start"].as_i64().unwrap_or(-1),
                x["window_end"].as_i64().unwrap_or(-1),
                x["n"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(v, vec![(1000, 9000, 2), (20000, 25000, 1)]);
}

#[test]
fn window_late_events_and_allowed_lateness() {
    let q = r#"{"id":"q","source":{"topic":"t"},"event_time":{"field":"ts","allowed_lateness":"5s","late_topic":"late"},
      "window":{"type":"tumbling","size":"10s"},"aggregates":{"n":"count()"},"emit":{"topic":"o"}}"#;
    let mut e = engine(&[q]);
    let out = feed(
        &mut e,
        "t",
        &[
            r#"{"ts":1000}"#,
            r#"{"ts":11000}"#, // fires [0,10s) with n=1
            r#"{"ts":2000}"#,  // late but allowed: re-emits n=2
            r#"{"ts":16000}"#, // watermark 16s: [0,10s) purged
            r#"{"ts":3000}"#,  // too late
        ],
    );
    let kinds: Vec<(OutputKind, String)> = out
        .iter()
        .map(|o| {
            (
                o.kind.clone(),
                String::from_utf8_lossy(&o.value).to_string(),
            )
        })
        .collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert_eq!(values(&out[..2])[1]["n"], 2);
    assert_eq!(out[2].kind, OutputKind::Late);
    assert_eq!(out[2].topic, "late");
}

/// An event within the allowed lateness extends a partial match however the sweeps
/// fell: the sweep keeps runs that such an event can still extend.
#[test]
fn pattern_late_events_within_allowed_lateness_match_across_a_sweep() {
    let p = r#"{"id":"p","source":{"topic":"t"},"partition_by":"u",
      "event_time":{"field":"ts","max_out_of_orderness":"0s","allowed_lateness":"5s"},
      "steps":[{"name":"a","where":"x == 1"},{"name":"b","where":"x == 2"}],
      "within":"10s","emit":{"topic":"o","value":{"a":"a.ts","b":"b.ts"}}}"#;
    let mut e = engine(&[p]);
    let out = feed(
        &mut e,
        "t",
        &[
            r#"{"u":"A","x":1,"ts":0}"#,     // starts a run (and the first sweep)
            r#"{"u":"B","x":0,"ts":11000}"#, // watermark 11 s: a sweep is due
            r#"{"u":"B","x":0,"ts":12000}"#, // watermark 12 s
            r#"{"u":"A","x":2,"ts":8000}"#,  // 4 s late (allowed: 5 s), 8 s after `a`
        ],
    );
    assert_eq!(values(&out), vec![serde_json::json!({"a": 0, "b": 8000})]);
}

#[test]
fn anomaly_scores_and_alert_rules() {
    let q = r#"{"id":"q","source":{"topic":"t"},"time":"processing","window":{"type":"tumbling","size":"1s"},
      "group_by":["host"],"aggregates":[{"name":"z","fn":"zscore","field":"lat","threshold":3},
      {"name":"e","fn":"ewma","field":"lat","alpha":0.5}],"emit":{"topic":"stats"}}"#;
    let alert = r#"{"id":"a","source":{"definition":"q"},"condition":"z.anomalies > 0","severity":"critical",
      "dedup_key":"host","suppress":"1h","message":"latency anomaly","emit":{"topic":"alerts","webhook":"http://hooks.local/x"}}"#;
    let mut e = engine(&[q, alert]);
    let mut evs: Vec<String> = (0..20)
        .map(|i| format!(r#"{{"host":"h","lat":{},"_ts":{}}}"#, 10 + i % 2, i * 10))
        .collect();
    evs.push(r#"{"host":"h","lat":500,"_ts":300}"#.into());
    evs.push(r#"{"host":"h","lat":900,"_ts":400}"#.into());
    let refs: Vec<&str> = evs.iter().map(|s| s.as_str()).collect();
    feed(&mut e, "t", &refs);
    let out = e.on_processing_time(5000);
    let alerts: Vec<_> = out
        .iter()
        .filter(|o| matches!(o.kind, OutputKind::Alert { .. }))
        .collect();
    assert_eq!(alerts.len(), 1, "{out:?}");
    assert_eq!(
        alerts[0].kind,
        OutputKind::Alert {
            webhook: Some("http://hooks.local/x".into())
        }
    );
    let a: serde_json::Value = serde_json::from_slice(&alerts[0].value).unwrap_or_default();
    assert_eq!(a["severity"], "critical");
    assert_eq!(a["record"]["z"]["anomalies"], 2);
    // suppression: another anomalous window for the same host within the hour is suppressed
    let more: Vec<String> = (0..3)
        .map(|i| format!(r#"{{"host":"h","lat":{}}}"#, 5000 * (i + 1)))
        .collect();
    for (i, v) in more.iter().enumerate() {
        e.process(&SourceRecord {
            topic: "t",
            partition: 0,
            offset: 100 + i as i64,
            timestamp_ms: 6000,
            key: None,
            value: v.as_bytes(),
            headers: &[],
        });
    }
    let out = e.on_processing_time(8000);
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o.kind, OutputKind::Alert { .. }))
            .count(),
        0
    );
    assert_eq!(e.stats()[1].stats.suppressed, 1);

    // an alert rule directly over events
    let r = r#"{"id":"r","source":{"topic":"t"},"condition":"lat > 100","severity":"high","emit":{"topic":"alerts"}}"#;
    let mut e = engine(&[r]);
    let out = feed(&mut e, "t", &[r#"{"lat":5}"#, r#"{"lat":500}"#]);
    assert_eq!(out.len(), 1);
}

fn stream_for_checkpoint() -> Vec<(i32, String, i64)> {
    let mut x: u64 = 42;
    (0..600)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let user = x % 7;
            let ok = (x >> 10).is_multiple_of(3);
            let jitter = ((x >> 20) % 3000) as i64;
            (
                (x >> 40) as i32 % 2,
                format!(
                    r#"{{"user":"u{user}","type":"login","success":{ok},"ts":{},"lat":{}}}"#,
                    i * 1000 - jitter,
                    (x >> 30) % 100
                ),
                i * 1000,
            )
        })
        .collect()
}

#[test]
fn checkpoint_restore_equals_uninterrupted_run() {
    let defs = [
        r#"{"id": "brute-force", "source": {"topic": "auth"}, "partition_by": "user",
          "event_time": {"field": "ts", "max_out_of_orderness": "2s", "late_topic": "late"},
          "steps": [{"name": "fail", "where": "type == 'login' && !success", "times": {"min": 3}},
                    {"name": "ok", "where": "type == 'login' && success", "contiguity": "relaxed"}],
          "within": "60s", "skip": "past_last_event",
          "emit": {"topic": "alerts", "key": "user", "value": {"user": "ok.user", "fails": "count(fail)", "first_fail": "first(fail).ts"}}}"#,
        r#"{"id":"q","source":{"topic":"auth"},"event_time":{"field":"ts","max_out_of_orderness":"2s"},
          "window":{"type":"hopping","size":"30s","slide":"10s"},"group_by":["user"],
          "aggregates":{"n":"count()","p":"percentile(lat, 0.9)","d":"count_distinct(lat)","z":"zscore(lat)"},"emit":{"topic":"stats"}}"#,
        r#"{"id":"a","source":{"definition":"brute-force"},"condition":"fails >= 4","dedup_key":"user","suppress":"100s","emit":{"topic":"pager"}}"#,
    ];
    let stream = stream_for_checkpoint();
    let rec = |i: usize| {
        let (p, v, ts) = &stream[i];
        (*p, v.clone(), *ts, i as i64)
    };
    let run = |e: &mut Engine, range: std::ops::Range<usize>| {
        let mut out = Vec::new();
        for i in range {
            let (p, v, ts, off) = rec(i);
            out.extend(e.process(&SourceRecord {
                topic: "auth",
                partition: p,
                offset: off,
                timestamp_ms: ts,
                key: None,
                value: v.as_bytes(),
                headers: &[],
            }));
        }
        out
    };
    let mut whole = engine(&defs);
    let mut expected = run(&mut whole, 0..stream.len());
    expected.extend(whole.finish());
    assert!(expected.iter().any(|o| o.kind == OutputKind::Match));
    assert!(expected.iter().any(|o| o.kind == OutputKind::WindowResult));

    let mut first = engine(&defs);
    let mut got = run(&mut first, 0..300);
    let bytes = first.checkpoint();
    drop(first);
    let mut second = Engine::new(Limits::default());
    second.restore(&bytes).unwrap_or_else(|e| panic!("{e}"));
    // replay from an earlier point: duplicates at or below the checkpointed offsets are skipped
    got.extend(run(&mut second, 250..stream.len()));
    got.extend(second.finish());
    assert_eq!(got.len(), expected.len());
    let show = |o: &weir_cep::Output| {
        format!(
            "{} {:?} {}",
            o.definition_id,
            o.kind,
            String::from_utf8_lossy(&o.value)
        )
    };
    if let Some(i) = (0..got.len()).find(|&i| got[i] != expected[i]) {
        panic!(
            "output {i} differs:\n got  {}\n want {}",
            show(&got[i]),
            show(&expected[i])
        );
    }

    // A capture encoded only after the engine went on (as the broker's snapshot thread
    // does) holds the state at capture time: nothing it shares with the engine is
    // changed under it.
    let mut live = engine(&defs);
    let mut got = run(&mut live, 0..300);
    let captured = live.capture();
    let at_capture = live.checkpoint();
    let mut live_rest = run(&mut live, 300..stream.len());
    live_rest.extend(live.finish());
    assert_eq!(
        captured.encode(),
        at_capture,
        "the capture changed after it was taken"
    );
    let mut second = Engine::new(Limits::default());
    second
        .restore(&captured.encode())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut rest = run(&mut second, 300..stream.len());
    rest.extend(second.finish());
    assert_eq!(rest, live_rest);
    got.extend(rest);
    assert_eq!(got.len(), expected.len());
    assert!(
        got == expected,
        "restored from a late-encoded capture: outputs differ"
    );
    assert!(Engine::new(Limits::default()).restore(b"garbage").is_err());

    // Checkpoints written as JSON (before MessagePack) still restore: the same state
    // transcoded to JSON gives the same outputs from there on.
    let mut third = engine(&defs);
    let mut got = run(&mut third, 0..300);
    let packed = third.checkpoint();
    assert_ne!(
        packed.first(),
        Some(&b'{'),
        "checkpoints are MessagePack now"
    );
    let json = third.capture().encode_json();
    assert_eq!(json.first(), Some(&b'{'));
    let mut from_json = Engine::new(Limits::default());
    from_json.restore(&json).unwrap_or_else(|e| panic!("{e}"));
    got.extend(run(&mut from_json, 300..stream.len()));
    got.extend(from_json.finish());
    assert!(
        got == expected,
        "restored from a JSON checkpoint: outputs differ"
    );
    let mut torn = packed.clone();
    torn.truncate(packed.len() / 2);
    assert!(Engine::new(Limits::default()).restore(&torn).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn random_definitions_and_records_never_panic(s in ".{0,200}", v in prop::collection::vec(any::<u8>(), 0..60)) {
        let _ = parse_definition_json(&s);
        let _ = parse_sql(&s);
        let _ = weir_cep::expr::parse(&s);
        let mut e = Engine::new(Limits::default());
        let _ = e.register_text(&s);
        let _ = e.register_text(r#"{"id":"p","source":{"topic":"t"},"partition_by":"k","steps":[{"name":"a","where":"x > 1 || y matches 'a.*'"},{"name":"b","contiguity":"any","where":"len(z) > 0 || sum(a.x) > 2"}],"emit":{"topic":"o"}}"#);
        let _ = e.process(&SourceRecord { topic: "t", partition: 0, offset: 0, timestamp_ms: 0, key: Some(&v), value: &v, headers: &[] });
        let _ = e.process(&SourceRecord { topic: "t", partition: 0, offset: 1, timestamp_ms: 0, key: None, value: s.as_bytes(), headers: &[] });
        let _ = e.restore(&v);
        let _ = e.restore(s.as_bytes());
    }

    #[test]
    fn random_expressions_never_panic(s in "[a-z0-9 ()\\[\\]'.,=!<>&|+*/%-]{0,40}", x in any::<f64>(), t in "[a-z]{0,5}") {
        let def = serde_json::json!({"id":"p","source":{"topic":"t"},"steps":[{"name":"a","where": s}],"emit":{"topic":"o","value":{"v": s}}}).to_string();
        let mut e = Engine::new(Limits::default());
        if e.register_text(&def).is_ok() {
            let val = serde_json::json!({"a": x, "b": t, "x": [1, "a"], "n": {"m": x}}).to_string();
            let _ = e.process(&SourceRecord { topic: "t", partition: 0, offset: 0, timestamp_ms: 0, key: None, value: val.as_bytes(), headers: &[] });
        }
    }
}

/// The last offset per (topic, partition), with records of several partitions
/// interleaved and replayed: duplicates are skipped per partition, and the offsets
/// survive a checkpoint.
#[test]
fn offsets_per_partition_skip_replays() {
    let mut e = Engine::new(Limits::default());
    e.register_text(
        r#"{"id": "c", "source": {"topic": "a"}, "window": {"type": "tumbling", "size": "10s"},
            "aggregates": {"n": "count()"}, "emit": {"topic": "o"}}"#,
    )
    .unwrap_or_else(|err| panic!("{err}"));
    let v = login("u", true, 1);
    let feed = |e: &mut Engine, topic: &str, partition: i32, offset: i64| {
        e.process(&SourceRecord {
            topic,
            partition,
            offset,
            timestamp_ms: offset,
            key: None,
            value: v.as_bytes(),
            headers: &[],
        });
    };
    for (t, p, o) in [
        ("a", 0, 5),
        ("a", 0, 6),
        ("a", 1, 2),
        ("a", 0, 6),
        ("b", 0, 9),
        ("a", 1, 1),
        ("a", 0, 4),
        ("a", 0, 7),
        ("b", 0, 3),
        ("a", 1, 3),
        ("ab", 0, 1),
    ] {
        feed(&mut e, t, p, o);
    }
    let want = vec![
        ("a".to_string(), 0, 7),
        ("a".to_string(), 1, 3),
        ("ab".to_string(), 0, 1),
        ("b".to_string(), 0, 9),
    ];
    assert_eq!(e.offsets(), want);
    assert_eq!(e.stats()[0].stats.events_in, 5);
    let mut r = Engine::new(Limits::default());
    r.restore(&e.checkpoint())
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(r.offsets(), want);
    feed(&mut r, "a", 1, 3);
    feed(&mut r, "a", 1, 4);
    assert_eq!(r.offsets()[1], ("a".to_string(), 1, 4));
}

/// Where no definition reading a topic outputs whole records, its events keep only their
/// field values (projected), and a checkpoint holds those values by field path: they
/// restore into an engine that numbers its fields differently, late outputs still carry
/// the original record, and a definition that lists whole events keeps the records.
#[test]
fn projected_events_checkpoint_their_values_by_field_path() {
    let projected = r#"{"id":"p","source":{"topic":"auth"},"partition_by":"user",
      "event_time":{"field":"ts","max_out_of_orderness":"2s","late_topic":"late"},
      "steps":[{"name":"fail","where":"!success","times":{"min":2}},
               {"name":"ok","where":"success && _headers.via == 'vpn'","contiguity":"relaxed"}],
      "within":"60s","skip":"past_last_event",
      "emit":{"topic":"alerts","value":{"user":"ok.user","key":"first(fail)._key","fails":"count(fail)","via":"ok._headers.via","first":"first(fail).ts"}}}"#;
    let whole = r#"{"id":"w","source":{"topic":"auth"},"partition_by":"user",
      "event_time":{"field":"ts","max_out_of_orderness":"2s"},
      "steps":[{"name":"a","where":"!success"},{"name":"b","where":"success"}],"emit":{"topic":"all"}}"#;
    // Interned first and then removed: the engine that restores the checkpoint numbers
    // the pattern's fields differently from the one that wrote it.
    let other = r#"{"id":"x","source":{"topic":"other"},"steps":[{"name":"a","where":"zeta == 1 && eta == 2 && success"}],"emit":{"topic":"o"}}"#;
    let stream: Vec<(String, String, i64)> = (0..200i64)
        .map(|i| {
            let (round, u) = (i / 5, i % 5);
            // every 37th event is 10 s behind: late
            let ts = i * 1000 - if i % 37 == 36 { 10_000 } else { 0 };
            let ok = round % 3 == 2;
            (
                format!("u{u}"),
                format!(r#"{{"user":"u{u}","success":{ok},"ts":{ts},"ip":"10.9.8.7"}}"#),
                ts,
            )
        })
        .collect();
    let run = |e: &mut Engine, range| feed_keyed(e, &stream, range, 1);
    for defs in [vec![projected], vec![projected, whole]] {
        let mut uninterrupted = engine(&defs);
        let mut expected = run(&mut uninterrupted, 0..stream.len());
        expected.extend(uninterrupted.finish());
        let matches: Vec<serde_json::Value> = expected
            .iter()
            .filter(|o| o.definition_id == "p" && o.kind == OutputKind::Match)
            .map(|o| serde_json::from_slice(&o.value).unwrap_or_default())
            .collect();
        assert!(matches.len() > 10, "{matches:?}");
        assert!(
            matches.iter().all(|m| m["via"] == "vpn"
                && m["key"] == m["user"]
                && m["fails"].as_u64() >= Some(2)),
            "{matches:?}"
        );
        let late: Vec<_> = expected
            .iter()
            .filter(|o| o.kind == OutputKind::Late)
            .collect();
        assert!(!late.is_empty());
        for o in late {
            let i = stream
                .iter()
                .position(|(_, v, _)| v.as_bytes() == o.value.as_slice())
                .unwrap_or_else(|| panic!("late output is not a record of the stream: {o:?}"));
            assert_eq!(o.key.as_deref(), Some(stream[i].0.as_bytes()));
        }

        let mut first = engine(&[other]);
        assert!(first.remove("x"));
        for d in &defs {
            first.register_text(d).unwrap_or_else(|err| panic!("{err}"));
        }
        let mut got = run(&mut first, 0..100);
        let bytes = first.checkpoint();
        let holds_records = bytes.windows(8).any(|w| w == b"10.9.8.7");
        assert_eq!(
            holds_records,
            defs.len() == 2,
            "records are checkpointed exactly where a definition lists whole events"
        );
        let mut second = Engine::new(Limits::default());
        second.restore(&bytes).unwrap_or_else(|e| panic!("{e}"));
        got.extend(run(&mut second, 100..stream.len()));
        got.extend(second.finish());
        assert!(got == expected, "defs {}: restored run differs", defs.len());
    }
}
