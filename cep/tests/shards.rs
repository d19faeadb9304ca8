//! Engines as shards of one workload (`Engine::set_shard`): together they produce what
//! one engine does, and each record is processed by exactly one shard per definition.
use weir_cep::{Engine, Limits, Output, Shard, SourceRecord};

/// Arrival order (no event time): a pattern's result depends only on each key's
/// records in its partition, so splitting partitions over shards cannot change it.
const PATTERN: &str = r#"{"id": "brute-force", "source": {"topic": "auth"}, "partition_by": "user",
 "steps": [{"name": "fail", "where": "type == 'login' && !success", "times": {"min": 3}},
           {"name": "ok", "where": "type == 'login' && success", "contiguity": "relaxed"}],
 "within": "60s", "skip": "past_last_event",
 "emit": {"topic": "alerts", "key": "user", "value": {"user": "ok.user", "fails": "count(fail)"}}}"#;

const COUNT: &str = r#"{"id": "per-user", "source": {"topic": "auth"}, "event_time": {"field": "ts"},
 "window": {"type": "tumbling", "size": "10s"}, "group_by": ["user"],
 "aggregates": {"n": "count()"}, "emit": {"topic": "stats"}}"#;

const PARTITIONS: i32 = 7;

/// Deterministic events over `PARTITIONS` partitions, a user always in one partition.
fn events() -> Vec<(i32, Vec<u8>)> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..20_000u64)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let user = x % 300;
            let success = (x >> 20).is_multiple_of(4);
            let v = format!(
                r#"{{"user":"u{user}","type":"login","success":{success},"ts":{}}}"#,
                i * 10
            );
            ((user % PARTITIONS as u64) as i32, v.into_bytes())
        })
        .collect()
}

fn run(shard: Shard) -> (Vec<Output>, Engine) {
    let mut e = Engine::new(Limits::default());
    e.set_shard(shard);
    e.register_text(PATTERN)
        .unwrap_or_else(|err| panic!("{err}"));
    e.register_text(COUNT).unwrap_or_else(|err| panic!("{err}"));
    let mut out = Vec::new();
    for (i, (p, v)) in events().iter().enumerate() {
        out.extend(e.process(&SourceRecord {
            topic: "auth",
            partition: *p,
            offset: i as i64,
            timestamp_ms: i as i64,
            key: None,
            value: v,
            headers: &[],
        }));
    }
    out.extend(e.finish());
    (out, e)
}

fn sorted(outs: &[Output], definition: &str) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    let mut v: Vec<_> = outs
        .iter()
        .filter(|o| o.definition_id == definition)
        .map(|o| (o.key.clone(), o.value.clone()))
        .collect();
    v.sort();
    v
}

#[test]
fn shards_together_produce_what_one_engine_does() {
    let (whole, _) = run(Shard::default());
    assert!(sorted(&whole, "brute-force").len() > 100);
    assert!(sorted(&whole, "per-user").len() > 100);
    for count in [2u32, 3, 5] {
        let mut outs = Vec::new();
        let mut query_homes = 0;
        for index in 0..count {
            let (o, e) = run(Shard { index, count });
            let stats = e.stats();
            let count_in = stats
                .iter()
                .find(|s| s.id == "per-user")
                .map(|s| s.stats.events_in);
            if index == Shard::of_definition("per-user", count) {
                query_homes += 1;
                assert_eq!(
                    count_in,
                    Some(20_000),
                    "the query's home shard sees every record"
                );
            } else {
                assert_eq!(count_in, Some(0), "shard {index}/{count} ran the query");
                assert!(o.iter().all(|o| o.definition_id != "per-user"));
            }
            // The pattern sees exactly its partitions.
            for p in 0..PARTITIONS {
                let mine = Shard::of_partition(p, count) == index;
                let query_here = index == Shard::of_definition("per-user", count);
                assert_eq!(e.reads("auth", p), mine || query_here);
            }
            outs.extend(o);
        }
        assert_eq!(query_homes, 1);
        assert_eq!(
            sorted(&outs, "brute-force"),
            sorted(&whole, "brute-force"),
            "{count} shards"
        );
        assert_eq!(
            sorted(&outs, "per-user"),
            sorted(&whole, "per-user"),
            "{count} shards"
        );
    }
}

#[test]
fn the_shard_survives_a_restore_and_applies_to_restored_definitions() {
    let (_, e) = run(Shard::default());
    let bytes = e.checkpoint();
    let mut other = Engine::new(Limits::default());
    other.set_shard(Shard { index: 1, count: 2 });
    other.restore(&bytes).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(other.shard(), Shard { index: 1, count: 2 });
    assert!(other.reads("auth", 1) && other.reads("auth", 3));
    let query_here = Shard::of_definition("per-user", 2) == 1;
    assert_eq!(other.reads("auth", 0), query_here);
    assert!(!other.reads("other", 1));
}
