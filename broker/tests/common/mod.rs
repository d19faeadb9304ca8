//! A real `weir serve` on free loopback ports, for the binary's integration tests.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const WEIR: &str = env!("CARGO_BIN_EXE_weir");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub struct Server {
    pub child: Child,
    pub bootstrap: String,
    /// The HTTP listener (CEP API, ingest, /metrics).
    pub http: String,
    pub dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `weir serve` with a temporary data dir and waits until both its Kafka
/// and its HTTP listener accept connections.
pub fn start_server() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let bootstrap = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let child = Command::new(WEIR)
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--kafka-listen", &bootstrap, "--http-listen", &http])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn weir serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(&bootstrap).is_err() || TcpStream::connect(&http).is_err() {
        assert!(
            Instant::now() < deadline,
            "weir serve did not listen on {bootstrap} and {http}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Server {
        child,
        bootstrap,
        http,
        dir,
    }
}
