#![allow(dead_code)]
use weir_cep::{Engine, Limits, Output, SourceRecord};

pub fn engine(defs: &[&str]) -> Engine {
    let mut e = Engine::new(Limits::default());
    for d in defs {
        e.register_text(d)
            .unwrap_or_else(|err| panic!("register failed: {err}"));
    }
    e
}

/// Feeds JSON values (topic, partition 0, offsets in order, timestamp = index * 1000 unless
/// the value has "_ts").
pub fn feed(e: &mut Engine, topic: &str, values: &[&str]) -> Vec<Output> {
    let mut out = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let ts = serde_json::from_str::<serde_json::Value>(v)
            .ok()
            .and_then(|j| j.get("_ts").and_then(|t| t.as_i64()))
            .unwrap_or(i as i64 * 1000);
        out.extend(e.process(&SourceRecord {
            topic,
            partition: 0,
            offset: i as i64,
            timestamp_ms: ts,
            key: None,
            value: v.as_bytes(),
            headers: &[],
        }));
    }
    out
}

pub fn values(out: &[Output]) -> Vec<serde_json::Value> {
    out.iter()
        .map(|o| serde_json::from_slice(&o.value).unwrap_or(serde_json::Value::Null))
        .collect()
}

/// Feeds `stream[range]` ((key, value, timestamp) each) to topic `auth`, offset = index,
/// partition = index mod `partitions`, each record with the header `via: vpn`.
pub fn feed_keyed(
    e: &mut Engine,
    stream: &[(String, String, i64)],
    range: std::ops::Range<usize>,
    partitions: usize,
) -> Vec<Output> {
    let headers: [(&str, &[u8]); 1] = [("via", b"vpn")];
    let mut out = Vec::new();
    for i in range {
        let (key, v, ts) = &stream[i];
        out.extend(e.process(&SourceRecord {
            topic: "auth",
            partition: (i % partitions.max(1)) as i32,
            offset: i as i64,
            timestamp_ms: *ts,
            key: Some(key.as_bytes()),
            value: v.as_bytes(),
            headers: &headers,
        }));
    }
    out
}
