use super::*;
use mem::MemSink;
use std::sync::atomic::AtomicBool;

mod mem {
    use crate::sink::{IngestRecord, Sink, SinkError};
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// A sink in memory; `fail_next` makes appends fail.
    #[derive(Default)]
    pub struct MemSink {
        pub topics: Mutex<BTreeMap<String, Vec<IngestRecord>>>,
        pub fail_next: Mutex<usize>,
    }

    impl MemSink {
        pub fn values(&self, topic: &str) -> Vec<String> {
            let topics = self.topics.lock().unwrap();
            topics.get(topic).map_or(Vec::new(), |rs| {
                rs.iter()
                    .map(|r| String::from_utf8_lossy(&r.value).into_owned())
                    .collect()
            })
        }
    }

    impl Sink for MemSink {
        fn append(
            &self,
            topic: &str,
            records: Vec<IngestRecord>,
        ) -> Result<Vec<(i32, i64)>, SinkError> {
            let mut fail = self.fail_next.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                return Err(SinkError::Unavailable("injected".into()));
            }
            let mut topics = self.topics.lock().unwrap();
            let log = topics.entry(topic.to_string()).or_default();
            let base = log.len() as i64;
            let n = records.len();
            log.extend(records);
            Ok((0..n).map(|i| (0, base + i as i64)).collect())
        }

        fn end_offsets(&self, topic: &str) -> Result<Vec<i64>, SinkError> {
            Ok(vec![self
                .topics
                .lock()
                .unwrap()
                .get(topic)
                .map_or(0, |l| l.len() as i64)])
        }
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    sink: Arc<MemSink>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            sink: Arc::new(MemSink::default()),
        }
    }
    fn log(&self) -> PathBuf {
        self.dir.path().join("app.log")
    }
    fn config(&self) -> FileCollectorConfig {
        serde_json::from_value(serde_json::json!({
            "path": format!("{}/*.log", self.dir.path().display()),
            "topic": "logs",
        }))
        .unwrap()
    }
    fn tailer(&self, config: FileCollectorConfig) -> Tailer {
        Tailer::new(
            config,
            self.sink.clone(),
            self.dir.path().join("ckpt/c.json"),
        )
        .unwrap()
    }
    fn append(&self, path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }
}

fn lines(range: std::ops::Range<usize>) -> String {
    range.map(|i| format!("line {i}\n")).collect()
}

fn expected(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("line {i}")).collect()
}

fn poll(t: &mut Tailer) -> PollStats {
    t.poll(&AtomicBool::new(false)).unwrap()
}

#[test]
fn follows_appends_and_waits_for_complete_lines() {
    let fx = Fixture::new();
    fx.append(&fx.log(), &lines(0..3));
    let mut t = fx.tailer(fx.config());
    assert_eq!(poll(&mut t).records, 3);
    fx.append(&fx.log(), "line 3\nline 4 is ");
    poll(&mut t);
    assert_eq!(fx.sink.values("logs"), expected(0..4));
    fx.append(&fx.log(), "partial\n\n");
    poll(&mut t);
    let mut want = expected(0..4);
    want.push("line 4 is partial".into());
    assert_eq!(fx.sink.values("logs"), want);
}

#[test]
fn rename_and_recreate_rotation() {
    let fx = Fixture::new();
    fx.append(&fx.log(), &lines(0..10));
    let mut t = fx.tailer(fx.config());
    poll(&mut t);
    // Lines written just before the rotation are only in the renamed file.
    fx.append(&fx.log(), &lines(10..15));
    std::fs::rename(fx.log(), fx.dir.path().join("app.log.1")).unwrap();
    fx.append(&fx.log(), &lines(15..20));
    poll(&mut t);
    assert_eq!(fx.sink.values("logs"), expected(0..20));
    fx.append(&fx.log(), &lines(20..25));
    poll(&mut t);
    assert_eq!(fx.sink.values("logs"), expected(0..25));
    // The renamed file's checkpoint was dropped once it was read to its end.
    assert_eq!(t.checkpoint.files.len(), 1);
}

#[test]
fn copytruncate_rotation() {
    let fx = Fixture::new();
    fx.append(&fx.log(), &lines(0..10));
    let mut t = fx.tailer(fx.config());
    poll(&mut t);
    fx.append(&fx.log(), &lines(10..12));
    poll(&mut t);
    std::fs::copy(fx.log(), fx.dir.path().join("app.log.1.gz-not-matched")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(fx.log())
        .unwrap()
        .set_len(0)
        .unwrap();
    fx.append(&fx.log(), &lines(12..15));
    poll(&mut t);
    assert_eq!(fx.sink.values("logs"), expected(0..15));
}

#[test]
fn restart_resumes_from_the_checkpoint() {
    let fx = Fixture::new();
    fx.append(&fx.log(), &lines(0..5));
    let mut t = fx.tailer(fx.config());
    poll(&mut t);
    drop(t);
    fx.append(&fx.log(), &lines(5..8));
    let mut t = fx.tailer(fx.config());
    poll(&mut t);
    assert_eq!(fx.sink.values("logs"), expected(0..8));
    let on_disk = Checkpoint::load(&fx.dir.path().join("ckpt/c.json")).unwrap();
    assert_eq!(
        on_disk.files.values().next().unwrap().offset,
        std::fs::metadata(fx.log()).unwrap().len()
    );
    assert!(!fx.dir.path().join("ckpt/c.json.tmp").exists());
}

#[test]
fn failed_appends_are_retried_without_loss_or_duplicates() {
    let fx = Fixture::new();
    fx.append(&fx.log(), &lines(0..5));
    let mut t = fx.tailer(fx.config());
    *fx.sink.fail_next.lock().unwrap() = 1;
    assert!(t.poll(&AtomicBool::new(false)).is_err());
    poll(&mut t);
    assert_eq!(fx.sink.values("logs"), expected(0..5));
}

#[test]
fn a_pending_batch_is_settled_on_restart() {
    // Crash after the sink acknowledged but before the checkpoint was written.
    let fx = Fixture::new();
    fx.append(&fx.log(), &lines(0..5));
    let mut t = fx.tailer(fx.config());
    poll(&mut t);
    fx.append(&fx.log(), &lines(5..8));
    let ckpt = fx.dir.path().join("ckpt/c.json");
    let committed = Checkpoint::load(&ckpt).unwrap();
    let (key, state) = committed
        .files
        .iter()
        .next()
        .map(|(k, s)| (k.clone(), s.clone()))
        .unwrap();
    let len = std::fs::metadata(fx.log()).unwrap().len();
    let intent = Intent {
        file: key,
        path: state.path.clone(),
        from: state.offset,
        to: len,
        topic: "logs".into(),
        records: 3,
        end_offsets_before: vec![5],
    };
    // Appended, checkpoint not yet written.
    fx.sink
        .append(
            "logs",
            (5..8)
                .map(|i| IngestRecord {
                    key: None,
                    value: format!("line {i}").into_bytes(),
                    partition: None,
                })
                .collect(),
        )
        .unwrap();
    Checkpoint {
        pending: Some(intent.clone()),
        ..committed.clone()
    }
    .store(&ckpt)
    .unwrap();
    let mut t = fx.tailer(fx.config());
    poll(&mut t);
    assert_eq!(fx.sink.values("logs"), expected(0..8));
    // Intent written, crash before the append: the lines are read again.
    fx.append(&fx.log(), &lines(8..10));
    let committed = Checkpoint::load(&ckpt).unwrap();
    let state = committed.files.values().next().unwrap().clone();
    let intent = Intent {
        from: state.offset,
        to: std::fs::metadata(fx.log()).unwrap().len(),
        records: 2,
        end_offsets_before: vec![8],
        ..intent
    };
    Checkpoint {
        pending: Some(intent),
        ..committed
    }
    .store(&ckpt)
    .unwrap();
    let mut t = fx.tailer(fx.config());
    poll(&mut t);
    assert_eq!(fx.sink.values("logs"), expected(0..10));
}

#[test]
fn json_format_with_schema_transforms_and_dead_letters() {
    let fx = Fixture::new();
    let mut config = fx.config();
    config.format = FileFormat::Json;
    config.pipeline = serde_json::from_value(serde_json::json!({
        "transforms": [{"op": "mask", "field": "card", "keep_last": 4}],
        "schema": {"type": "object", "required": ["id"]},
        "dead_letter_topic": "dead",
        "key_field": "id",
    }))
    .unwrap();
    fx.append(
        &fx.log(),
        "{\"id\": 1, \"card\": \"12345678\"}\n{\"card\": \"1\"}\nnot json\n",
    );
    let mut t = fx.tailer(config);
    let stats = poll(&mut t);
    assert_eq!((stats.records, stats.dead_letters), (1, 2));
    assert_eq!(
        fx.sink.values("logs"),
        vec![r#"{"card":"****5678","id":1}"#.to_string()]
    );
    let dead = fx.sink.values("dead");
    assert!(dead[0].contains("missing required property"), "{dead:?}");
    assert!(dead[1].contains("invalid JSON"), "{dead:?}");
    assert_eq!(
        fx.sink.topics.lock().unwrap()["logs"][0].key.as_deref(),
        Some(&b"1"[..])
    );
}

#[test]
fn lines_format_refuses_transforms() {
    let fx = Fixture::new();
    let mut config = fx.config();
    config
        .pipeline
        .transforms
        .push(crate::transform::Transform::Drop { field: "x".into() });
    assert!(config.normalize().is_err());
}
