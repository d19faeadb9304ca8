mod common;
use common::*;

#[test]
fn brute_force_example() {
    let def = r#"{"id": "brute-force", "source": {"topic": "auth"}, "partition_by": "user",
 "event_time": {"field": "ts", "max_out_of_orderness": "5s"},
 "steps": [{"name": "fail", "where": "type == 'login' && !success", "times": {"min": 3}},
           {"name": "ok", "where": "type == 'login' && success", "contiguity": "relaxed"}],
 "within": "60s", "skip": "past_last_event",
 "emit": {"topic": "alerts", "key": "user",
          "value": {"user": "ok.user", "fails": "count(fail)", "first_fail": "first(fail).ts"}}}"#;
    let mut e = engine(&[def]);
    let mut out = feed(
        &mut e,
        "auth",
        &[
            r#"{"user":"a","type":"login","success":false,"ts":1000}"#,
            r#"{"user":"a","type":"login","success":false,"ts":2000}"#,
            r#"{"user":"b","type":"login","success":false,"ts":2500}"#,
            r#"{"user":"a","type":"login","success":false,"ts":3000}"#,
            r#"{"user":"a","type":"login","success":false,"ts":4000}"#,
            r#"{"user":"a","type":"login","success":true,"ts":5000}"#,
        ],
    );
    out.extend(e.finish());
    let v = values(&out);
    println!("{v:?}");
    assert_eq!(
        v,
        vec![serde_json::json!({"user":"a","fails":4,"first_fail":1000})]
    );
    assert_eq!(out[0].key.as_deref(), Some(&b"a"[..]));
}
