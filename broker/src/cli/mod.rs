//! The client-side subcommands of `weir`. They speak the Kafka protocol through
//! [`crate::client`], so they work against Apache Kafka and Redpanda too.

pub mod bench;
pub mod cep;
pub mod cluster;
pub mod consume;
pub mod groups;
pub mod produce;
pub mod topics;

use crate::client::ClientConfig;
use std::io::Write;

/// Client settings shared by the CLI tools.
pub fn client_config() -> ClientConfig {
    ClientConfig {
        client_id: "weir-cli".into(),
        ..ClientConfig::default()
    }
}

/// Parses `KEY=VALUE`.
pub fn parse_config(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Outcome of writing to standard output.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    Written,
    /// The reader went away (EPIPE): stop quietly, like `head` expects.
    Closed,
}

/// Writes to stdout and flushes; a closed pipe is not an error.
pub fn write_stdout(bytes: &[u8]) -> anyhow::Result<Output> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(Output::Written),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(Output::Closed),
        Err(e) => Err(anyhow::anyhow!("cannot write to standard output: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_key_value() {
        assert_eq!(
            parse_config("retention.ms=100"),
            Ok(("retention.ms".into(), "100".into()))
        );
        assert_eq!(parse_config("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_config("a="), Ok(("a".into(), "".into())));
        assert!(parse_config("novalue").is_err());
        assert!(parse_config("=x").is_err());
    }
}
