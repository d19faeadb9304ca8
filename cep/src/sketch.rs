//! Mergeable sketches: DDSketch (percentiles), HyperLogLog (distinct counts), SpaceSaving
//! (top-k).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

/// DDSketch with 1% relative accuracy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DDSketch {
    pos: BTreeMap<i32, u64>,
    neg: BTreeMap<i32, u64>,
    zero: u64,
    count: u64,
}

const ALPHA: f64 = 0.01;

fn gamma() -> f64 {
    (1.0 + ALPHA) / (1.0 - ALPHA)
}

impl DDSketch {
    pub fn add(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        self.count += 1;
        if x.abs() < 1e-9 {
            self.zero += 1;
            return;
        }
        let idx = (x.abs().ln() / gamma().ln()).ceil() as i32;
        let m = if x > 0.0 {
            &mut self.pos
        } else {
            &mut self.neg
        };
        *m.entry(idx).or_insert(0) += 1;
    }
    pub fn merge(&mut self, o: &DDSketch) {
        for (k, v) in &o.pos {
            *self.pos.entry(*k).or_insert(0) += v;
        }
        for (k, v) in &o.neg {
            *self.neg.entry(*k).or_insert(0) += v;
        }
        self.zero += o.zero;
        self.count += o.count;
    }
    pub fn count(&self) -> u64 {
        self.count
    }
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let g = gamma();
        let rank = (q.clamp(0.0, 1.0) * (self.count - 1) as f64).floor() as u64;
        let mut seen = 0u64;
        let val = |i: i32| 2.0 * g.powi(i) / (g + 1.0);
        for (k, v) in self.neg.iter().rev() {
            seen += v;
            if seen > rank {
                return Some(-val(*k));
            }
        }
        seen += self.zero;
        if seen > rank {
            return Some(0.0);
        }
        for (k, v) in &self.pos {
            seen += v;
            if seen > rank {
                return Some(val(*k));
            }
        }
        self.pos.keys().next_back().map(|k| val(*k))
    }
}

pub fn hash64(s: &str) -> u64 {
    // SipHash with fixed keys: stable across processes (checkpoints stay valid).
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x5745_4952, 0x0043_4550);
    s.hash(&mut h);
    h.finish()
}

/// HyperLogLog (precision 12, ~1.6% error), exact while small (sparse list of hashes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hll {
    sparse: Vec<u64>,
    dense: Vec<u8>,
}

const P: u32 = 12;
const M: usize = 1 << P;
const SPARSE_MAX: usize = 256;

impl Hll {
    pub fn add_hash(&mut self, h: u64) {
        if self.dense.is_empty() {
            if let Err(i) = self.sparse.binary_search(&h) {
                self.sparse.insert(i, h);
            }
            if self.sparse.len() > SPARSE_MAX {
                self.dense = vec![0; M];
                for h in std::mem::take(&mut self.sparse) {
                    Self::set(&mut self.dense, h);
                }
            }
        } else {
            Self::set(&mut self.dense, h);
        }
    }
    fn set(dense: &mut [u8], h: u64) {
        let idx = (h >> (64 - P)) as usize;
        let rest = (h << P) | (1 << (P - 1));
        let rho = rest.leading_zeros() as u8 + 1;
        if let Some(r) = dense.get_mut(idx) {
            if *r < rho {
                *r = rho;
            }
        }
    }
    pub fn merge(&mut self, o: &Hll) {
        for h in &o.sparse {
            self.add_hash(*h);
        }
        if !o.dense.is_empty() {
            if self.dense.is_empty() {
                self.dense = vec![0; M];
                for h in std::mem::take(&mut self.sparse) {
                    Self::set(&mut self.dense, h);
                }
            }
            for (a, b) in self.dense.iter_mut().zip(o.dense.iter()) {
                *a = (*a).max(*b);
            }
        }
    }
    pub fn estimate(&self) -> f64 {
        if self.dense.is_empty() {
            return self.sparse.len() as f64;
        }
        let m = M as f64;
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let mut sum = 0.0;
        let mut zeros = 0;
        for r in &self.dense {
            sum += 2f64.powi(-(*r as i32));
            if *r == 0 {
                zeros += 1;
            }
        }
        let e = alpha * m * m / sum;
        if e <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            e
        }
    }
}

/// SpaceSaving top-k: counts are exact while fewer than `capacity` distinct items are seen.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TopK {
    items: Vec<(String, u64)>,
    capacity: usize,
}

impl TopK {
    pub fn new(k: usize) -> TopK {
        TopK {
            items: Vec::new(),
            capacity: (k * 10).clamp(16, 1000),
        }
    }
    pub fn add(&mut self, s: &str, n: u64) {
        if let Some(e) = self.items.iter_mut().find(|e| e.0 == s) {
            e.1 += n;
            return;
        }
        if self.items.len() < self.capacity {
            self.items.push((s.to_string(), n));
            return;
        }
        if let Some(min) = self.items.iter_mut().min_by_key(|e| e.1) {
            *min = (s.to_string(), min.1 + n);
        }
    }
    pub fn top(&self, k: usize) -> Vec<(String, u64)> {
        let mut v = self.items.clone();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(k);
        v
    }
}
