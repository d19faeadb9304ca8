//! # weir-cep: complex event processing and streaming analytics for Weir
//!
//! The engine is independent of networking and of the broker: the broker hands it records
//! ([`SourceRecord`]) from the topics in [`Engine::sources`] and writes the [`Output`]s it
//! returns (webhook delivery of alerts is the broker's job; alert outputs carry the URL).
//!
//! ## API
//! * [`Engine::new`]`(`[`Limits`]`)`; [`Engine::register`]`(`[`Definition`]`)` (or
//!   [`Engine::register_text`] for JSON or SQL text) returns the id; nothing is registered on
//!   error. [`Engine::remove`], [`Engine::pause`], [`Engine::resume`],
//!   [`Engine::definitions`] (id, kind, source topics, paused, JSON), [`Engine::sources`].
//! * [`Engine::process`]`(&SourceRecord) -> Vec<Output>`: one record. Records at or below the
//!   last processed offset of their (topic, partition) are replay duplicates and ignored.
//! * [`Engine::on_processing_time`]`(now_ms)`: timers (processing-time windows fire,
//!   processing-time partial matches older than `within` expire).
//! * [`Engine::finish`]: end of a bounded input (releases buffered events, fires windows,
//!   abandons partial matches and releases matches they held back).
//! * [`Engine::stats`]: per definition events in, outputs, partial matches held, keys,
//!   open windows, evictions, late, not-JSON, invalid event time, suppressed alerts.
//! * [`Engine::checkpoint`]` -> Vec<u8>` / [`Engine::restore`] (or [`Engine::capture`] then
//!   [`Captured::encode`], to encode on another thread): the full state (definitions,
//!   partial matches, held matches, reorder buffers, windows, anomaly history, alert
//!   suppression, watermarks, per-source-partition offsets) as JSON bytes. Checkpoint
//!   together with the outputs; after a restore, replay from [`Engine::offsets`] (or
//!   earlier: duplicates are skipped) and the outputs are exactly the remaining ones.
//! * [`parse_definition_json`], [`parse_sql`].
//! * [`alloc::Allocator`]: the global allocator the engine is tuned for (mimalloc v2 with
//!   its next free block prefetched); the `weir` binary and the benchmarks use it.
//!
//! ## Events
//! A record value must be a JSON object (else it is counted as `not_json` and, with
//! `source.dead_letter`, copied to that topic as a `DeadLetter` output). Fields are paths
//! (`a.b.0`); `_key`, `_timestamp`, `_partition`, `_offset`, `_topic` and `_headers.NAME`
//! come from the record. Only fields some definition uses are materialised.
//!
//! ## Time
//! With `event_time` (`{"field": "ts", "max_out_of_orderness": "5s", "allowed_lateness":
//! "0s", "late_topic": "late"}`; no field: the record timestamp), the watermark of a
//! definition is the largest event time seen (over all its source partitions) minus the
//! bound. Patterns buffer events and match them in event-time order (ties: arrival order)
//! once the watermark reaches them; an event older than `watermark - allowed_lateness` is
//! late (counted, and sent to `late_topic` as a `Late` output); one between that and the
//! watermark is matched at once, out of order, and can extend any partial match it is
//! `within` of (partial matches are kept `allowed_lateness` past their `within`, as
//! windows are). Windows fire when the watermark passes their
//! end, are kept `allowed_lateness` longer (a late-but-allowed event re-emits the updated
//! result) and are then purged; events for purged windows are late. Without `event_time`
//! (or with `"time": "processing"`), events are handled in arrival order and their time is
//! the record timestamp made monotonic (max so far), advanced further by
//! `on_processing_time`.
//!
//! ## Patterns (Flink CEP semantics where the spec is silent)
//! Steps run in order. Each has `where` (default true), a quantifier (`times`: n or
//! `{min, max}`, `one_or_more`, `optional`), `greedy` or `reluctant`, `contiguity` (how its
//! first event follows the previous step's last: `strict` = Flink `next`, `relaxed` =
//! `followedBy`, `any` = `followedByAny`; default strict) and `inner_contiguity` (between its
//! own repetitions; default relaxed as in Flink's `times`/`oneOrMore`). `"not": true`
//! makes a step negated: strict = `notNext`, relaxed = `notFollowedBy`; it cannot be first,
//! must be followed by a required step, and has no quantifier. State is per source
//! partition and `partition_by` value.
//!
//! The matches are exactly the event sequences e1..en of one key (with a step for each,
//! steps non-decreasing) such that (this is what `tests/differential.rs` checks against a
//! brute-force enumeration):
//! 1. each step's count is within its quantifier; negated steps take no event;
//! 2. each event satisfies its step's condition, evaluated with the events before it;
//! 3. between consecutive taken events e_j, e_j+1 (step t): strict: nothing in between;
//!    relaxed: no event in between satisfies t's condition; any: no constraint. The kind is
//!    t's `inner_contiguity` if e_j is also at t, else t's `contiguity`;
//! 4. greedy step s left after e_j (count below max): the event right after e_j does not
//!    satisfy s's condition;
//! 5. reluctant step s repeated at e_j+1 while its count is at least min: e_j+1 does not
//!    satisfy the next step's condition;
//! 6. a negated step k between taken events L and F: `notNext`: the event right after L
//!    does not satisfy k; `notFollowedBy`: no event strictly between L and F does;
//! 7. `within`: last time - first time < within.
//!
//! A match is complete when its last step reached its min and every later step is optional;
//! it is emitted when its last event is processed (trailing loops emit each extension).
//! Matches completing on the same event are ordered by (first event, last event, events).
//! `skip`: `no_skip` emits all; `skip_to_next` drops partial matches (and later matches)
//! that start at the emitted match's first event; `past_last_event` those starting at or
//! before its last event; `skip_to_first:S` / `skip_to_last:S` those starting before the
//! first / last event of step S (nothing if that is the match's first event or S is absent).
//! As in Flink, with these three a match is held back while a partial match that started
//! earlier is alive (it could complete and prune it), so the emitted set equals: all matches
//! sorted by (first, last, events), each kept unless an earlier kept one pruned its start.
//! `within` bounds that delay.
//!
//! Without `emit.value`, an output is `{"pattern", "key", "events": {step: [event...]},
//! "first_timestamp", "last_timestamp"}`; with it, each entry is an expression evaluated over
//! the match. Output key: `emit.key` (expression) or the partition key.
//!
//! ## Expressions
//! Field paths, literals (`'s'`, `"s"`, numbers, `true`, `false`, `null`, `[..]`),
//! `== != < <= > >=` (also SQL `=` `<>`), `&& || !` (also `and or not`), `+ - * / %` (`+`
//! concatenates strings; division by zero is null), `x in [..]`, `not in`, `contains`,
//! `starts_with`, `ends_with`, `matches` (regex), `like`, `lower`, `upper`, `len`, `abs`.
//! Step references: `s.x` (last event of step s; inside s's own `where`: the current
//! event), `first(s).x`, `last(s).x` (also `first(s.x)`), and aggregates over a step's events
//! `count(s)`, `sum(s.x)`, `avg`, `min`, `max` (inside s's own `where` they include the
//! current event, as in SQL's running semantics). Missing fields are null; `null`, `false`,
//! 0, "" and [] are falsy. Mixed-type comparisons are false. A step name shadows a field of
//! the same name. Errors give the byte offset, line and column.
//!
//! ## SQL
//! See [`sql`]: `MATCH_RECOGNIZE` compiles to the same pattern definition (variables are
//! strict, quantifiers greedy unless followed by `?`).
//!
//! ## Windowed queries
//! `{"id", "source": {"topic"}, "where"?, "event_time"? | "time": "processing", "window":
//! {"type": "tumbling"|"hopping"|"session", "size", "slide", "gap"}, "group_by": [expr..],
//! "aggregates": {"name": "count()" | "sum(x)" | "avg(x)" | "min(x)" | "max(x)" |
//! "percentile(x, 0.99)" | "count_distinct(x)" | "top_k(x, 5)" | "zscore(x, threshold,
//! history)" | "ewma(x, alpha, threshold)"} (or a list of `{"name", "fn", "field", "p", "k",
//! "threshold", "alpha"}`), "emit": {"topic"}}`. One `WindowResult` per window and group:
//! `{"window_start", "window_end", group fields..., aggregates...}`, key = group values
//! joined by `,`, timestamp = window end. percentile uses a DDSketch (1% relative error),
//! count_distinct a HyperLogLog (exact up to 256 values, then ~1.6%), top_k SpaceSaving.
//! `zscore` scores each value against the group's last `history` values (default 100),
//! `ewma` against an exponentially weighted mean/variance; both persist across windows and
//! report `{"score", "max_abs_score", "anomalies", "mean"|"ewma"}`.
//!
//! ## Alert rules
//! `{"id", "source": {"topic"} | {"definition": "id"}, "condition", "severity",
//! "dedup_key"?, "suppress"?, "message"?, "emit": {"topic", "webhook"?}}`. Over a
//! definition, the condition sees each of its outputs' JSON values. After an alert for a
//! dedup key, more for that key within `suppress` are dropped (counted). Output kind
//! `Alert { webhook }`, value `{"rule", "severity", "dedup_key", "timestamp", "message",
//! "webhook", "record"}`.
//!
//! ## Limits
//! [`Limits`] bounds partial matches per key, events per partial match, keys per pattern,
//! groups per query and buffered events; the oldest state is evicted and counted.

pub mod alert;
pub mod alloc;
pub mod clock;
pub mod def;
pub mod emit;
pub mod engine;
pub mod error;
pub mod event;
pub mod expr;
mod flatjson;
pub mod keystr;
mod keytable;
pub mod patrt;
pub mod pattern;
pub mod sketch;
pub mod sql;
pub mod value;
pub mod window;

/// A hint to load the cache line at `p` (no effect on other targets).
#[inline(always)]
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch is only a hint: it never faults and does not read or write
        // memory as far as the program can observe, whatever `p` points to; `sse` is
        // part of the x86_64 baseline.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

pub use def::{parse_definition_json, Definition};
pub use emit::{Output, OutputKind};
pub use engine::{Captured, DefinitionInfo, DefinitionStats, Engine, Limits, Shard, Stats};
pub use error::{CepError, Position};
pub use event::SourceRecord;
pub use sql::parse_sql;

#[cfg(test)]
mod tests {
    #[test]
    fn engine_is_send() {
        fn is_send<T: Send>() {}
        is_send::<crate::Engine>();
        is_send::<crate::Captured>();
    }
}
