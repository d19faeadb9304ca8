//! raft-rs logs through slog; Weir logs through tracing. This drain forwards
//! each slog record to tracing with its level, message and key-value pairs, so
//! `RUST_LOG=raft=debug` works like every other target.

use slog::{Drain, Level, OwnedKVList, Record, KV};
use std::fmt::Write;

pub struct TracingDrain;

struct KvToString<'a>(&'a mut String);

impl slog::Serializer for KvToString<'_> {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut kv = String::new();
        let _ = record.kv().serialize(record, &mut KvToString(&mut kv));
        let _ = values.serialize(record, &mut KvToString(&mut kv));
        let msg = record.msg();
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(target: "raft", "{msg}{kv}"),
            Level::Warning => tracing::warn!(target: "raft", "{msg}{kv}"),
            Level::Info => tracing::info!(target: "raft", "{msg}{kv}"),
            Level::Debug => tracing::debug!(target: "raft", "{msg}{kv}"),
            Level::Trace => tracing::trace!(target: "raft", "{msg}{kv}"),
        }
        Ok(())
    }
}

/// A slog logger for one Raft group, tagged with its name.
pub fn logger(group: &str) -> slog::Logger {
    slog::Logger::root(TracingDrain.fuse(), slog::o!("group" => group.to_string()))
}
