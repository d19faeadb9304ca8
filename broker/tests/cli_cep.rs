//! `weir cep` against a real `weir serve`: add (JSON and SQL), list, tail, rm, with `--http`.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{free_port, start_server, Server, WEIR};

const BRUTE: &str = r#"{"id": "brute-force", "source": {"topic": "auth"}, "partition_by": "user",
 "event_time": {"field": "ts", "max_out_of_orderness": "5s"},
 "steps": [{"name": "fail", "where": "type == 'login' && !success", "times": {"min": 3}},
           {"name": "ok", "where": "type == 'login' && success", "contiguity": "relaxed"}],
 "within": "60s", "skip": "past_last_event",
 "emit": {"topic": "alerts", "key": "user",
          "value": {"user": "ok.user", "fails": "count(fail)", "first_fail": "first(fail).ts"}}}"#;

const SQL: &str = "INSERT INTO sql_alerts SELECT * FROM auth MATCH_RECOGNIZE (
  PARTITION BY user ORDER BY ts
  MEASURES S.user AS user, COUNT(F.*) AS fails
  ONE ROW PER MATCH AFTER MATCH SKIP PAST LAST ROW
  PATTERN (F{3,} S) WITHIN INTERVAL '1' MINUTE
  DEFINE F AS type = 'login' AND NOT success, S AS type = 'login' AND success)";

fn start() -> Server {
    start_server()
}

impl Server {
    fn cep(&self, args: &[&str]) -> Output {
        Command::new(WEIR)
            .args(["cep", "--http", &self.http])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run weir cep")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cep(args);
        assert!(
            out.status.success(),
            "weir cep {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.cep(args);
        assert!(!out.status.success(), "weir cep {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write file");
        p.to_string_lossy().into_owned()
    }
}

fn login(user: &str, ok: bool, ts: i64) -> String {
    format!(r#"{{"user":"{user}","type":"login","success":{ok},"ts":{ts}}}"#)
}

#[test]
fn cep_add_list_tail_rm() {
    let s = start();
    let brute = s.file("brute.json", BRUTE);
    assert_eq!(s.ok(&["add", &brute]), "registered brute-force\n");
    let err = s.fails(&["add", &brute]);
    assert!(
        err.contains("409") && err.contains("already exists"),
        "{err}"
    );
    let bad = s.file(
        "bad.json",
        &BRUTE
            .replace("brute-force", "bad")
            .replace("!success", "!!"),
    );
    let err = s.fails(&["add", &bad]);
    assert!(err.contains("HTTP 400"), "{err}");
    let bad_sql = s.file(
        "bad.sql",
        "SELECT * FROM t MATCH_RECOGNIZE (PATTERN (A) DEFINE B AS true)",
    );
    let err = s.fails(&["add", &bad_sql]);
    assert!(err.contains("HTTP 400") && err.contains("offset"), "{err}");
    let sql = s.file("p.sql", SQL);
    let out = s.ok(&["add", &sql]);
    let sql_id = out
        .trim()
        .strip_prefix("registered ")
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    let list = s.ok(&["list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines[0], "ID\tKIND\tSTATE\tSOURCES", "{list}");
    assert_eq!(lines[1], "brute-force\tpattern\trunning\tauth", "{list}");
    assert!(
        lines[2].starts_with(&format!("{sql_id}\tpattern\trunning\tauth")),
        "{list}"
    );
    assert_eq!(lines.len(), 3, "{list}");

    // tail: subscribed (its stderr says so), then a match arrives as one JSON line.
    let mut tail = Command::new(WEIR)
        .args([
            "cep",
            "tail",
            "brute-force",
            "--count",
            "1",
            "--http",
            &s.http,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir cep tail");
    let mut stderr = BufReader::new(tail.stderr.take().expect("stderr"));
    let mut first = String::new();
    stderr.read_line(&mut first).expect("read tail stderr");
    assert!(
        first.contains("following the outputs of brute-force"),
        "{first}"
    );
    let events = [
        login("alice", false, 1000),
        login("alice", false, 2000),
        login("alice", false, 3000),
        login("alice", true, 4000),
        r#"{"user":"zed","type":"logout","ts":100000}"#.to_string(),
    ]
    .join("\n");
    let mut produce = Command::new(WEIR)
        .args(["--bootstrap", &s.bootstrap, "produce", "auth"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir produce");
    produce
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{events}\n").as_bytes())
        .expect("write events");
    let produced = produce.wait_with_output().expect("produce");
    assert!(
        produced.status.success(),
        "{}",
        String::from_utf8_lossy(&produced.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = tail.try_wait().expect("wait tail") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = tail.kill();
            panic!("weir cep tail did not print a match within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    tail.stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read tail stdout");
    assert!(status.success(), "tail failed; stdout {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON line");
    assert_eq!(v["pattern"], "brute-force", "{v}");
    assert_eq!(v["topic"], "alerts", "{v}");
    assert_eq!(
        v["value"],
        serde_json::json!({"user": "alice", "fails": 3, "first_fail": 1000}),
        "{v}"
    );

    assert_eq!(s.ok(&["rm", "brute-force"]), "removed brute-force\n");
    let err = s.fails(&["rm", "brute-force"]);
    assert!(err.contains("HTTP 404"), "{err}");
    let err = s.fails(&["tail", "brute-force"]);
    assert!(err.contains("HTTP 404"), "{err}");
    let list = s.ok(&["list"]);
    assert!(
        !list.contains("brute-force") && list.contains(&sql_id),
        "{list}"
    );
    // Nobody listening there.
    let out = Command::new(WEIR)
        .args([
            "cep",
            "list",
            "--http",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .output()
        .expect("run weir cep list");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot connect"),
        "{err}"
    );
}
