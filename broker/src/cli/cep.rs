//! `weir cep`: register, list, remove and follow CEP definitions through the
//! broker's HTTP API (`--http HOST:PORT`, default `127.0.0.1:8080`).
//!
//! * `weir cep add FILE`: a pattern, windowed query or alert rule in JSON, or a
//!   `MATCH_RECOGNIZE` statement when the file ends in `.sql` (or does not start
//!   with `{`). Prints the id.
//! * `weir cep list`: one line per definition: id, kind, state, source topics.
//! * `weir cep rm ID`.
//! * `weir cep tail ID [--count N]`: follows `GET /api/cep/matches?pattern=ID` and
//!   prints each output as one JSON line, until interrupted (or N outputs).

use crate::cep::httpc::{self, SseParser};
use crate::cli::{write_stdout, Output};
use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use serde_json::Value;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Args, Debug)]
pub struct CepArgs {
    /// The broker's HTTP listener (HOST:PORT, or http://HOST:PORT).
    #[arg(
        long,
        global = true,
        env = "WEIR_HTTP",
        default_value = "127.0.0.1:8080"
    )]
    pub http: String,
    #[command(subcommand)]
    pub command: CepCommand,
}

#[derive(Subcommand, Debug)]
pub enum CepCommand {
    /// Register a definition from a file (JSON, or SQL MATCH_RECOGNIZE for .sql).
    Add { file: PathBuf },
    /// List the registered definitions.
    List,
    /// Delete a definition.
    Rm { id: String },
    /// Follow a definition's outputs live (one JSON line each).
    Tail {
        id: String,
        /// Stop after this many outputs.
        #[arg(long)]
        count: Option<u64>,
    },
}

/// `HOST:PORT` from `--http` (an `http://` prefix and trailing `/` allowed).
fn authority(http: &str) -> anyhow::Result<String> {
    let a = http
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/');
    if a.is_empty() || a.contains('/') || a.starts_with("https://") {
        bail!("--http expects HOST:PORT, got {http:?}");
    }
    Ok(if a.contains(':') {
        a.to_string()
    } else {
        format!("{a}:80")
    })
}

/// The error message of a failed API call.
fn failure(what: &str, r: &httpc::Response) -> anyhow::Error {
    let detail = serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| {
            let mut m = v.get("error")?.as_str()?.to_string();
            if let Some(p) = v.get("position") {
                m.push_str(&format!(" (at {p})"));
            }
            Some(m)
        })
        .unwrap_or_else(|| r.text());
    anyhow!("{what}: HTTP {}: {}", r.status, detail.trim())
}

pub async fn run(args: CepArgs) -> anyhow::Result<()> {
    let host = authority(&args.http)?;
    match args.command {
        CepCommand::Add { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let sql = file
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("sql"))
                || !text.trim_start().starts_with('{');
            let ct = if sql {
                "application/sql"
            } else {
                "application/json"
            };
            let r = httpc::request(
                &host,
                "POST",
                "/api/cep/patterns",
                Some((ct, text.as_bytes())),
                TIMEOUT,
            )
            .await?;
            if !r.is_success() {
                return Err(failure(&format!("registering {}", file.display()), &r));
            }
            let id = serde_json::from_slice::<Value>(&r.body)
                .ok()
                .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_string))
                .ok_or_else(|| anyhow!("unexpected answer {:?}", r.text()))?;
            write_stdout(format!("registered {id}\n").as_bytes())?;
        }
        CepCommand::List => {
            let r = httpc::request(&host, "GET", "/api/cep/patterns", None, TIMEOUT).await?;
            if !r.is_success() {
                return Err(failure("listing definitions", &r));
            }
            let v: Value = serde_json::from_slice(&r.body)
                .with_context(|| format!("unexpected answer {:?}", r.text()))?;
            let mut out = String::from("ID\tKIND\tSTATE\tSOURCES\n");
            for d in v.as_array().into_iter().flatten() {
                let sources: Vec<&str> = d["sources"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                out.push_str(&format!(
                    "{}\t{}\t{}\t{}\n",
                    d["id"].as_str().unwrap_or("?"),
                    d["kind"].as_str().unwrap_or("?"),
                    if d["paused"].as_bool().unwrap_or(false) {
                        "paused"
                    } else {
                        "running"
                    },
                    if sources.is_empty() {
                        "-".to_string()
                    } else {
                        sources.join(",")
                    }
                ));
            }
            write_stdout(out.as_bytes())?;
        }
        CepCommand::Rm { id } => {
            let path = format!("/api/cep/patterns/{}", httpc::encode_segment(&id));
            let r = httpc::request(&host, "DELETE", &path, None, TIMEOUT).await?;
            if !r.is_success() {
                return Err(failure(&format!("deleting {id}"), &r));
            }
            write_stdout(format!("removed {id}\n").as_bytes())?;
        }
        CepCommand::Tail { id, count } => tail(&host, &id, count).await?,
    }
    Ok(())
}

async fn tail(host: &str, id: &str, count: Option<u64>) -> anyhow::Result<()> {
    let path = format!("/api/cep/matches?pattern={}", httpc::encode_segment(id));
    let mut parser = SseParser::default();
    let mut error_body = Vec::new();
    let mut printed = 0u64;
    let mut announced = false;
    let mut write_error = None;
    if count == Some(0) {
        return Ok(());
    }
    let status = httpc::exchange(host, "GET", &path, None, |status, bytes| {
        if status != 200 {
            error_body.extend_from_slice(bytes);
            return ControlFlow::Continue(());
        }
        if !announced {
            announced = true;
            eprintln!("following the outputs of {id} (Ctrl-C to stop)");
        }
        for data in parser.push(bytes) {
            match write_stdout(format!("{data}\n").as_bytes()) {
                Ok(Output::Written) => {}
                Ok(Output::Closed) => return ControlFlow::Break(()),
                Err(e) => {
                    write_error = Some(e);
                    return ControlFlow::Break(());
                }
            }
            printed += 1;
            if count.is_some_and(|c| printed >= c) {
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })
    .await?;
    if let Some(e) = write_error {
        return Err(e);
    }
    if status != 200 {
        let r = httpc::Response {
            status,
            body: error_body,
        };
        return Err(failure(&format!("following {id}"), &r));
    }
    if count.is_some_and(|c| printed < c) {
        bail!("the stream ended after {printed} outputs");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_addresses() {
        assert_eq!(authority("127.0.0.1:8080").unwrap(), "127.0.0.1:8080");
        assert_eq!(authority("http://h:1/").unwrap(), "h:1");
        assert_eq!(authority("h").unwrap(), "h:80");
        assert!(authority("").is_err());
        assert!(authority("h:1/x").is_err());
    }
}
