//! Table-driven semantic tests: each case is a pattern (JSON or SQL), a stream and the
//! expected matches, written as the `i` fields of the matched events by step.
mod common;
use common::*;
use weir_cep::{Engine, Limits, OutputKind, SourceRecord};

fn ev(i: usize, v: &str, n: i64) -> String {
    format!(r#"{{"i":{i},"v":"{v}","n":{n},"k":"x"}}"#)
}

/// Stream from a compact string: each char is an event `v`, n = position.
fn stream(s: &str) -> Vec<String> {
    s.chars()
        .enumerate()
        .map(|(i, c)| ev(i, &c.to_string(), i as i64))
        .collect()
}

fn pattern(steps: &str, extra: &str) -> String {
    format!(
        r#"{{"id":"p","source":{{"topic":"t"}},"partition_by":"k","steps":[{steps}]{extra},"emit":{{"topic":"out"}}}}"#
    )
}

/// Matches as strings like "a0 b2" (step name + i).
fn run(def: &str, s: &str) -> Vec<String> {
    let mut e = engine(&[def]);
    let evs = stream(s);
    let refs: Vec<&str> = evs.iter().map(|x| x.as_str()).collect();
    let mut out = feed(&mut e, "t", &refs);
    out.extend(e.finish());
    values(&out)
        .iter()
        .map(|v| {
            let mut items: Vec<(u64, String)> = Vec::new();
            if let Some(m) = v["events"].as_object() {
                for (step, evs) in m {
                    for x in evs.as_array().into_iter().flatten() {
                        items.push((x["i"].as_u64().unwrap_or(99), step.clone()));
                    }
                }
            }
            items.sort();
            items
                .iter()
                .map(|(i, s)| format!("{s}{i}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

const A: &str = r#"{"name":"a","where":"v == 'a'"}"#;

#[test]
fn contiguity_quantifiers_skip_table() {
    let b = |c: &str| format!(r#"{{"name":"b","where":"v == 'b'","contiguity":"{c}"}}"#);
    let cases: Vec<(String, &str, Vec<&str>)> = vec![
        // strict (next): b must follow a immediately
        (
            pattern(&format!("{A},{}", b("strict")), ""),
            "acab",
            vec!["a2 b3"],
        ),
        (
            pattern(&format!("{A},{}", b("strict")), ""),
            "abab",
            vec!["a0 b1", "a2 b3"],
        ),
        // relaxed (followedBy): first b after a
        (
            pattern(&format!("{A},{}", b("relaxed")), ""),
            "acbb",
            vec!["a0 b2"],
        ),
        // any (followedByAny): every later b
        (
            pattern(&format!("{A},{}", b("any")), ""),
            "acbb",
            vec!["a0 b2", "a0 b3"],
        ),
        // one_or_more with relaxed inner, then relaxed b (Flink docs example shape)
        (
            pattern(
                &format!(
                    r#"{{"name":"a","where":"v == 'a'","one_or_more":true}},{}"#,
                    b("relaxed")
                ),
                "",
            ),
            "aacb",
            vec!["a0 a1 b3", "a0 b3", "a1 b3"],
        ),
        // strict inner (consecutive)
        (
            pattern(
                &format!(
                    r#"{{"name":"a","where":"v == 'a'","one_or_more":true,"inner_contiguity":"strict"}},{}"#,
                    b("relaxed")
                ),
                "",
            ),
            "acab",
            vec!["a0 b3", "a2 b3"],
        ),
        // times exactly 2
        (
            pattern(
                &format!(
                    r#"{{"name":"a","where":"v == 'a'","times":2}},{}"#,
                    b("relaxed")
                ),
                "",
            ),
            "aaab",
            vec!["a0 a1 b3", "a1 a2 b3"],
        ),
        // times {min 2} with skip past_last_event: one match, the longest first
        (
            pattern(
                &format!(
                    r#"{{"name":"a","where":"v == 'a'","times":{{"min":2}}}},{}"#,
                    b("relaxed")
                ),
                r#","skip":"past_last_event""#,
            ),
            "aaab",
            vec!["a0 a1 a2 b3"],
        ),
        // optional step
        (
            pattern(
                &format!(
                    r#"{A},{{"name":"c","where":"v == 'c'","optional":true,"contiguity":"relaxed"}},{}"#,
                    b("relaxed")
                ),
                "",
            ),
            "acb",
            vec!["a0 b2", "a0 c1 b2"],
        ),
        // greedy loop: a 'x' event that matches both the loop and the next step stays in the loop
        (
            pattern(
                r#"{"name":"a","where":"v == 'a' || v == 'x'","one_or_more":true,"greedy":true},{"name":"b","where":"v == 'x' || v == 'b'","contiguity":"strict"}"#,
                r#","skip":"skip_to_next""#,
            ),
            "axb",
            vec!["a0 a1 b2", "a1 b2"],
        ),
        // reluctant loop: stops as soon as the next step can take the event
        (
            pattern(
                r#"{"name":"a","where":"v == 'a' || v == 'x'","one_or_more":true,"reluctant":true},{"name":"b","where":"v == 'x' || v == 'b'","contiguity":"strict"}"#,
                r#","skip":"skip_to_next""#,
            ),
            "axb",
            vec!["a0 b1", "a1 b2"],
        ),
        // notNext: a not immediately followed by c, then b
        (
            pattern(
                &format!(
                    r#"{A},{{"name":"c","where":"v == 'c'","not":true,"contiguity":"strict"}},{}"#,
                    b("relaxed")
                ),
                "",
            ),
            "acbab",
            vec!["a3 b4"],
        ),
        // notFollowedBy: no c between a and b
        (
            pattern(
                &format!(
                    r#"{A},{{"name":"c","where":"v == 'c'","not":true,"contiguity":"relaxed"}},{}"#,
                    b("relaxed")
                ),
                "",
            ),
            "axcbaxb",
            vec!["a4 b6"],
        ),
        // within: a and b at most 2s apart (events 1s apart)
        (
            pattern(&format!("{A},{}", b("relaxed")), r#","within":"2s""#),
            "accbab",
            vec!["a4 b5"],
        ),
        // skip strategies on "a+ b" over "aab"
        (
            pattern(
                &format!(
                    r#"{{"name":"a","where":"v == 'a'","one_or_more":true}},{}"#,
                    b("relaxed")
                ),
                r#","skip":"no_skip""#,
            ),
            "aab",
            vec!["a0 a1 b2", "a0 b2", "a1 b2"],
        ),
        (
            pattern(
                &format!(
                    r#"{{"name":"a","where":"v == 'a'","one_or_more":true}},{}"#,
                    b("relaxed")
                ),
                r#","skip":"skip_to_next""#,
            ),
            "aab",
            vec!["a0 a1 b2", "a1 b2"],
        ),
        (
            pattern(
                &format!(
                    r#"{{"name":"a","where":"v == 'a'","one_or_more":true}},{}"#,
                    b("relaxed")
                ),
                r#","skip":"skip_to_last:a""#,
            ),
            "aab",
            vec!["a0 a1 b2", "a1 b2"],
        ),
        (
            pattern(
                &format!(
                    r#"{{"name":"a","where":"v == 'a'","one_or_more":true}},{}"#,
                    b("relaxed")
                ),
                r#","skip":"skip_to_first:b""#,
            ),
            "aab",
            vec!["a0 a1 b2"],
        ),
        // references to earlier steps: b.n > first(a).n + 2
        (
            pattern(
                r#"{"name":"a","where":"v == 'a'"},{"name":"b","where":"v == 'b' && n > first(a).n + 2","contiguity":"any"}"#,
                "",
            ),
            "abbbb",
            vec!["a0 b3", "a0 b4"],
        ),
        // aggregates over a step inside a condition: sum of a.n so far
        (
            pattern(
                r#"{"name":"a","where":"v == 'a' && sum(a.n) <= 2","one_or_more":true,"inner_contiguity":"strict"},{"name":"b","where":"v == 'b'"}"#,
                "",
            ),
            "aaab",
            vec!["a2 b3"],
        ),
    ];
    let mut failures = Vec::new();
    for (i, (def, s, want)) in cases.iter().enumerate() {
        let mut got = run(def, s);
        got.sort();
        let mut want: Vec<String> = want.iter().map(|x| x.to_string()).collect();
        want.sort();
        if got != want {
            failures.push(format!(
                "case {i}: {def} over {s}: got {got:?}, want {want:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn expressions_table() {
    let cases = [
        ("v == 'a' && n >= 1", r#"{"v":"a","n":1}"#, true),
        ("v == 'a' && n >= 1", r#"{"v":"a","n":0}"#, false),
        ("!(v != 'a') || false", r#"{"v":"a"}"#, true),
        ("n * 2 + 1 == 7 && n % 2 == 1 && n / 2 == 1.5 && n - 4 == -1", r#"{"n":3}"#, true),
        ("v in ['x', 'y']", r#"{"v":"y"}"#, true),
        ("v not in ['x', 'y']", r#"{"v":"y"}"#, false),
        ("v contains 'ell' && v starts_with 'he' && v ends_with 'lo'", r#"{"v":"hello"}"#, true),
        ("v matches '^h.*o$' && !(v matches '^x')", r#"{"v":"hello"}"#, true),
        ("lower(v) == 'abc' && upper(v) == 'ABC' && len(v) == 3", r#"{"v":"aBc"}"#, true),
        ("abs(n) == 5", r#"{"n":-5}"#, true),
        ("geo.country == 'NL' && tags.1 == 'b'", r#"{"geo":{"country":"NL"},"tags":["a","b"]}"#, true),
        ("missing == null && !missing", r#"{}"#, true),
        ("_key == 'k1' && _partition == 3 && _offset == 0 && _timestamp == 42 && _headers.trace == 't1'", r#"{}"#, true),
        ("contains(v, 'b') && starts_with(v, 'a')", r#"{"v":"abc"}"#, true),
        ("x / 0 == null", r#"{"x":1}"#, true),
        ("s + 't' == 'st'", r#"{"s":"s"}"#, true),
    ];
    for (cond, value, want) in cases {
        let def = format!(
            r#"{{"id":"p","source":{{"topic":"t"}},"steps":[{{"name":"a","where":{}}}],"emit":{{"topic":"o"}}}}"#,
            serde_json::to_string(cond).unwrap_or_default()
        );
        let mut e = engine(&[&def]);
        let out = e.process(&SourceRecord {
            topic: "t",
            partition: 3,
            offset: 0,
            timestamp_ms: 42,
            key: Some(b"k1"),
            value: value.as_bytes(),
            headers: &[("trace", b"t1")],
        });
        assert_eq!(!out.is_empty(), want, "{cond} on {value}");
    }
}

#[test]
fn default_output_shape_and_emit_value() {
    let def = pattern(
        r#"{"name":"a","where":"v == 'a'","times":2},{"name":"b","where":"v == 'b'","contiguity":"relaxed"}"#,
        "",
    );
    let mut e = engine(&[&def]);
    let evs = stream("aab");
    let refs: Vec<&str> = evs.iter().map(|x| x.as_str()).collect();
    let out = feed(&mut e, "t", &refs);
    let v = values(&out);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["pattern"], "p");
    assert_eq!(v[0]["key"], "x");
    assert_eq!(v[0]["events"]["a"].as_array().map(|a| a.len()), Some(2));
    assert_eq!(v[0]["first_timestamp"], 0);
    assert_eq!(v[0]["last_timestamp"], 2000);
    assert_eq!(out[0].kind, OutputKind::Match);
    assert_eq!(out[0].key.as_deref(), Some(&b"x"[..]));

    let def = r#"{"id":"p","source":{"topic":"t"},"steps":[{"name":"a","times":3,"where":"v == 'a'"}],
      "emit":{"topic":"o","value":{"c":"count(a)","s":"sum(a.n)","avg":"avg(a.n)","mn":"min(a.n)","mx":"max(a.n)",
      "f":"first(a).n","l":"last(a).n","last_v":"a.v","nested":{"x":"n + 1"},"lit":5}}}"#;
    let mut e = engine(&[def]);
    let out = feed(
        &mut e,
        "t",
        &refs[..2]
            .iter()
            .chain([r#"{"i":2,"v":"a","n":7,"k":"x"}"#].iter())
            .cloned()
            .collect::<Vec<_>>(),
    );
    let v = values(&out);
    assert_eq!(
        v,
        vec![
            serde_json::json!({"c":3,"s":8,"avg":8.0/3.0,"mn":0,"mx":7,"f":0,"l":7,"last_v":"a","nested":{"x":8},"lit":5})
        ]
    );
}

#[test]
fn out_of_order_within_bound_matches_and_later_is_late() {
    let def = r#"{"id":"p","source":{"topic":"t"},"partition_by":"k",
      "event_time":{"field":"ts","max_out_of_orderness":"5s","late_topic":"late"},
      "steps":[{"name":"a","where":"v == 'a'"},{"name":"b","where":"v == 'b'"}],"emit":{"topic":"o"}}"#;
    let mut e = engine(&[def]);
    // b arrives before a but within 5s: after reordering, a (ts 1000) then b (ts 2000)
    let out = feed(
        &mut e,
        "t",
        &[
            r#"{"k":"x","v":"b","ts":2000}"#,
            r#"{"k":"x","v":"a","ts":1000}"#,
            r#"{"k":"x","v":"c","ts":9000}"#, // watermark 4000: releases a, b
            r#"{"k":"x","v":"a","ts":3000}"#, // 3000 < watermark 4000: late
        ],
    );
    let kinds: Vec<_> = out
        .iter()
        .map(|o| (o.kind.clone(), o.topic.clone()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (OutputKind::Match, "o".to_string()),
            (OutputKind::Late, "late".to_string())
        ]
    );
    assert_eq!(out[1].value, br#"{"k":"x","v":"a","ts":3000}"#.to_vec());
    let st = &e.stats()[0];
    assert_eq!(st.stats.late, 1);
}

#[test]
fn not_json_is_counted_and_dead_lettered() {
    let def = r#"{"id":"p","source":{"topic":"t","dead_letter":"dlq"},"steps":[{"name":"a"}],"emit":{"topic":"o"}}"#;
    let mut e = engine(&[def]);
    let out = feed(&mut e, "t", &["not json", "[1,2]", r#"{"ok":1}"#]);
    assert_eq!(
        out.iter()
            .filter(|o| o.kind == OutputKind::DeadLetter && o.topic == "dlq")
            .count(),
        2
    );
    assert_eq!(e.stats()[0].stats.not_json, 2);
}

#[test]
fn limits_evict_partial_matches() {
    let def = pattern(
        r#"{"name":"a","where":"v == 'a'"},{"name":"b","where":"v == 'b'","contiguity":"any"}"#,
        "",
    );
    let mut e = Engine::new(Limits {
        max_partial_matches_per_key: 3,
        ..Limits::default()
    });
    e.register_text(&def).unwrap_or_default();
    let evs = stream("aaaaa");
    let refs: Vec<&str> = evs.iter().map(|x| x.as_str()).collect();
    feed(&mut e, "t", &refs);
    let st = &e.stats()[0];
    assert_eq!(st.partial_matches, 3);
    assert_eq!(st.stats.evictions, 2);
}

#[test]
fn processing_time_within_expires_on_timer() {
    let def = r#"{"id":"p","source":{"topic":"t"},"time":"processing","steps":[{"name":"a","where":"v == 'a'"},{"name":"b","where":"v == 'b'","contiguity":"relaxed"}],"within":"10s","skip":"past_last_event","emit":{"topic":"o"}}"#;
    let mut e = engine(&[def]);
    feed(&mut e, "t", &[r#"{"v":"a"}"#]);
    assert_eq!(e.stats()[0].partial_matches, 1);
    e.on_processing_time(20_000);
    assert_eq!(e.stats()[0].partial_matches, 0);
}

#[test]
fn pause_resume_remove_definitions_sources() {
    let def = pattern(r#"{"name":"a","where":"v == 'a'"}"#, "");
    let mut e = engine(&[&def]);
    assert_eq!(e.sources(), vec!["t".to_string()]);
    assert!(e.pause("p"));
    assert!(feed(&mut e, "t", &[r#"{"v":"a","k":"x"}"#]).is_empty());
    assert!(e.definitions()[0].paused);
    assert!(e.resume("p"));
    let out = e.process(&SourceRecord {
        topic: "t",
        partition: 0,
        offset: 5,
        timestamp_ms: 0,
        key: None,
        value: br#"{"v":"a"}"#,
        headers: &[],
    });
    assert_eq!(out.len(), 1);
    assert!(e.register_text(&def).is_err(), "duplicate id");
    assert!(e.remove("p"));
    assert!(!e.remove("p"));
    assert!(e.sources().is_empty());
}

#[test]
fn invalid_definitions_name_the_problem() {
    let cases = [
        (
            pattern(r#"{"name":"a","where":"v == "}"#, ""),
            "steps[0].where",
        ),
        (
            pattern(r#"{"name":"a","where":"foo(v)"}"#, ""),
            "unknown function",
        ),
        (
            pattern(r#"{"name":"a","where":"v matches '('"}"#, ""),
            "invalid regex",
        ),
        (
            pattern(r#"{"name":"a","not":true},{"name":"b"}"#, ""),
            "first step cannot be negated",
        ),
        (
            pattern(r#"{"name":"a"},{"name":"b","not":true}"#, ""),
            "followed by a required step",
        ),
        (
            pattern(r#"{"name":"a"},{"name":"a"}"#, ""),
            "duplicate step name",
        ),
        (
            pattern(r#"{"name":"a","times":{"min":3,"max":2}}"#, ""),
            "invalid repetition",
        ),
        (
            pattern(r#"{"name":"a","contiguity":"loose"}"#, ""),
            "unknown contiguity",
        ),
        (
            pattern(r#"{"name":"a"}"#, r#","within":"5 parsecs""#),
            "within",
        ),
        (
            pattern(r#"{"name":"a"}"#, r#","skip":"skip_to_first:zz""#),
            "unknown step",
        ),
        (
            pattern(r#"{"name":"a","where":"count(zz) > 1"}"#, ""),
            "unknown step",
        ),
        (pattern(r#"{"name":"a","wher":"x"}"#, ""), "unknown field"),
    ];
    for (def, needle) in cases {
        let mut e = Engine::new(Limits::default());
        let err = e
            .register_text(&def)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains(needle),
            "{def}: {err:?} should mention {needle:?}"
        );
        assert!(e.definitions().is_empty());
    }
    let mut e = Engine::new(Limits::default());
    let err = e
        .register_text(&pattern(r#"{"name":"a","where":"v == 'a' && && n"}"#, ""))
        .err()
        .and_then(|e| e.position);
    assert_eq!(err.map(|p| (p.offset, p.line, p.column)), Some((12, 1, 13)));
}
