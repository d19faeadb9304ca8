//! Random operation sequences against an in-memory model of the log.
mod common;
use common::*;
use proptest::prelude::*;
use weir_storage::{Log, LogConfig, StorageError};

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<(usize, usize)>), // batches of (records, value bytes)
    Read(f64, usize, bool),
    Truncate(f64),
    Roll,
    Reopen(bool),
    DeleteBefore(f64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec((1usize..5, 0usize..120), 1..4).prop_map(Op::Append),
        4 => (0.0f64..1.1, 0usize..1500, any::<bool>()).prop_map(|(a, b, c)| Op::Read(a, b, c)),
        1 => (0.0f64..1.1).prop_map(Op::Truncate),
        1 => Just(Op::Roll),
        1 => any::<bool>().prop_map(Op::Reopen),
        1 => (0.0f64..1.1).prop_map(Op::DeleteBefore),
    ]
}

#[derive(Default)]
struct Model {
    batches: Vec<(i64, i64, Vec<u8>)>,
    start: i64,
    end: i64,
}

impl Model {
    fn pick(&self, f: f64) -> i64 {
        // Mostly inside [start, end], sometimes just outside.
        let span = (self.end - self.start + 2) as f64;
        self.start - 1 + (f * span) as i64
    }
}

fn run(ops: Vec<Op>, segment_bytes: u64) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        index_interval_bytes: 64,
        ..small_config(segment_bytes)
    };
    let mut log = Some(Log::open(dir.path(), cfg.clone()).unwrap());
    let mut m = Model::default();
    let mut ts = 0i64;
    for op in ops {
        let l = log.as_ref().unwrap();
        match op {
            Op::Append(specs) => {
                let mut set = Vec::new();
                let mut bounds = Vec::new();
                for (n, v) in &specs {
                    let b = batch(*n, ts, *v);
                    ts += *n as i64;
                    bounds.push((set.len(), b.len(), *n as i64));
                    set.extend(b);
                }
                let info = l.append(&mut set, 3).unwrap();
                prop_assert_eq!(info.base_offset, m.end);
                for (at, len, n) in bounds {
                    m.batches
                        .push((m.end, m.end + n - 1, set[at..at + len].to_vec()));
                    m.end += n;
                }
                prop_assert_eq!(info.last_offset, m.end - 1);
            }
            Op::Read(f, max, min_one) => {
                let off = m.pick(f);
                let res = l.read(off, max, min_one);
                if off < m.start || off > m.end {
                    prop_assert!(
                        matches!(res, Err(StorageError::OffsetOutOfRange { .. })),
                        "offset {} in [{}, {}]",
                        off,
                        m.start,
                        m.end
                    );
                } else {
                    let r = res.unwrap();
                    let mut expect: Vec<&[u8]> = Vec::new();
                    let mut total = 0;
                    for (_, last, b) in &m.batches {
                        if *last < off {
                            continue;
                        }
                        if total + b.len() > max && !(min_one && expect.is_empty()) {
                            break;
                        }
                        total += b.len();
                        expect.push(b);
                    }
                    let got: Vec<&[u8]> = r.batches.iter().map(|b| &b[..]).collect();
                    prop_assert_eq!(
                        got.len(),
                        expect.len(),
                        "read({}, {}, {}) in [{}, {}]",
                        off,
                        max,
                        min_one,
                        m.start,
                        m.end
                    );
                    prop_assert!(got == expect);
                    prop_assert_eq!((r.log_start_offset, r.log_end_offset), (m.start, m.end));
                }
            }
            Op::Truncate(f) => {
                let off = m.pick(f).max(0);
                l.truncate_to(off).unwrap();
                if off < m.end {
                    if off <= m.start {
                        m.batches.clear();
                        m.start = off;
                        m.end = off;
                    } else {
                        let keep = m
                            .batches
                            .iter()
                            .position(|(_, last, _)| *last >= off)
                            .unwrap_or(m.batches.len());
                        m.end = m
                            .batches
                            .get(keep)
                            .map_or(off, |(base, _, _)| off.min(*base));
                        m.batches.truncate(keep);
                        if m.end < m.start {
                            m.batches.clear();
                            m.end = m.start;
                        }
                    }
                }
            }
            Op::Roll => l.roll().unwrap(),
            Op::Reopen(clean) => {
                let old = log.take().unwrap();
                if clean {
                    old.close().unwrap();
                    drop(old);
                } else {
                    std::mem::forget(old); // crash: no clean-shutdown marker
                }
                log = Some(Log::open(dir.path(), cfg.clone()).unwrap());
            }
            Op::DeleteBefore(f) => {
                let off = m.pick(f);
                let res = l.delete_before(off);
                if off > m.end || off < 0 {
                    prop_assert!(res.is_err());
                } else {
                    m.start = m.start.max(off);
                    prop_assert_eq!(res.unwrap(), m.start);
                    m.batches.retain(|(_, last, _)| *last >= m.start);
                }
            }
        }
        let l = log.as_ref().unwrap();
        prop_assert_eq!((l.log_start_offset(), l.log_end_offset()), (m.start, m.end));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_model(ops in proptest::collection::vec(op(), 1..40), seg in prop_oneof![Just(300u64), Just(900u64), Just(1u64 << 20)]) {
        run(ops, seg)?;
    }
}
