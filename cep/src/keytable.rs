//! A pattern's per-key state table: a hash table keyed by [`KeyStr`] that can start
//! loading a key's bucket before the key is looked up ([`KeyTable::prefetch`]).
//!
//! With 100,000 keys the table is far larger than the cache, so every lookup misses
//! on its control bytes and its bucket. A lookup waits for those misses; a prefetch
//! issued an event earlier lets them overlap with handling that event. `hashbrown`
//! has no such call, so [`KeyTable::prefetch`] computes where a hash's probe starts
//! from its layout (control bytes at `ctrl`, bucket `i` just below at
//! `ctrl - (i + 1) * size`, the probe starting at `hash & (buckets - 1)`). A prefetch
//! is only a hint: if the layout ever differs, lookups get slower, never wrong; the
//! tests check the layout.

use crate::keystr::KeyStr;
use hashbrown::HashTable;
use std::hash::BuildHasher;

/// A key and its value, in this order (the key is compared first).
#[repr(C)]
pub(crate) struct Bucket<V> {
    pub key: KeyStr,
    pub val: V,
}

/// foldhash instead of std's SipHash (which was ~10% of the engine's time): it is
/// seeded at random per table, so keys chosen by a producer cannot be aimed at one
/// bucket without knowing the seed. Keys are inline when short ([`KeyStr`]).
pub(crate) struct KeyTable<V> {
    table: HashTable<Bucket<V>>,
    hasher: foldhash::fast::RandomState,
    /// The address of the control bytes (0 until a key is inserted), found from a
    /// bucket's address and index whenever a key is inserted (the only time the table
    /// can move).
    ctrl: usize,
}

impl<V> Default for KeyTable<V> {
    fn default() -> Self {
        KeyTable {
            table: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            ctrl: 0,
        }
    }
}

impl<V> KeyTable<V> {
    pub fn hash(&self, k: &str) -> u64 {
        self.hasher.hash_one(k)
    }

    /// Starts loading the control bytes and the first buckets `hash`'s probe looks at.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        let Some(home) = self.home_bucket(hash) else {
            return;
        };
        let size = std::mem::size_of::<Bucket<V>>();
        crate::prefetch(self.ctrl.wrapping_add(home) as *const u8);
        // The key is at or just after its home bucket (a bucket filled since is
        // skipped): buckets `home` and `home + 1`, which lie below it in memory.
        let hi = self.ctrl.wrapping_sub(home * size);
        let mut a = hi.wrapping_sub(2 * size) & !63;
        while a < hi {
            crate::prefetch(a as *const u8);
            a += 64;
        }
    }

    /// Starts loading the bucket at `index`.
    #[inline]
    pub fn prefetch_bucket(&self, index: usize) {
        if self.ctrl == 0 {
            return;
        }
        let size = std::mem::size_of::<Bucket<V>>();
        let hi = self.ctrl.wrapping_sub(index * size);
        let mut a = hi.wrapping_sub(size) & !63;
        while a < hi {
            crate::prefetch(a as *const u8);
            a += 64;
        }
    }

    /// The bucket where `hash`'s probe starts.
    fn home_bucket(&self, hash: u64) -> Option<usize> {
        if self.ctrl == 0 || self.table.num_buckets() == 0 {
            return None;
        }
        Some(hash as usize & (self.table.num_buckets() - 1))
    }

    /// The bucket index of `k`: stays valid until a key is inserted.
    pub fn find_index(&self, hash: u64, k: &str) -> Option<usize> {
        self.table.find_bucket_index(hash, |b| b.key.as_str() == k)
    }

    pub fn at_mut(&mut self, index: usize) -> Option<&mut Bucket<V>> {
        self.table.get_bucket_mut(index)
    }

    pub fn at(&self, index: usize) -> Option<&Bucket<V>> {
        self.table.get_bucket(index)
    }

    pub fn remove_at(&mut self, index: usize) -> Option<Bucket<V>> {
        self.table
            .get_bucket_entry(index)
            .ok()
            .map(|e| e.remove().0)
    }

    /// Inserts a key that is not in the table (the caller has looked it up).
    pub fn insert_new(&mut self, hash: u64, key: KeyStr, val: V) {
        let hasher = &self.hasher;
        let e = self.table.insert_unique(hash, Bucket { key, val }, |b| {
            hasher.hash_one(b.key.as_str())
        });
        let i = e.bucket_index();
        let addr = std::ptr::from_ref(e.get()) as usize;
        self.ctrl = addr + (i + 1) * std::mem::size_of::<Bucket<V>>();
    }

    pub fn insert(&mut self, key: KeyStr, val: V) {
        let h = self.hash(key.as_str());
        match self.find_index(h, key.as_str()) {
            Some(i) => {
                if let Some(b) = self.at_mut(i) {
                    b.val = val;
                }
            }
            None => self.insert_new(h, key, val),
        }
    }

    pub fn remove(&mut self, k: &str) -> Option<V> {
        let i = self.find_index(self.hash(k), k)?;
        self.remove_at(i).map(|b| b.val)
    }

    /// The indices of the occupied buckets, in the order [`KeyTable::iter`] visits them.
    pub fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.table.iter_buckets()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&KeyStr, &V)> {
        self.table.iter().map(|b| (&b.key, &b.val))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&KeyStr, &mut V)> {
        self.table.iter_mut().map(|b| (&b.key, &mut b.val))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.table.iter().map(|b| &b.val)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn clear(&mut self) {
        self.table.clear();
    }
}

impl<V> FromIterator<(KeyStr, V)> for KeyTable<V> {
    fn from_iter<I: IntoIterator<Item = (KeyStr, V)>>(iter: I) -> Self {
        let mut t = KeyTable::default();
        for (k, v) in iter {
            t.insert(k, v);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout [`KeyTable::prefetch`] assumes: bucket `i` at `ctrl - (i + 1) * size`,
    /// and most keys in or just after their home bucket. If hashbrown changes its
    /// layout, this fails (and prefetches would go to the wrong lines).
    #[test]
    fn prefetch_addresses_match_the_table_layout() {
        let mut t: KeyTable<[u64; 12]> = KeyTable::default();
        let size = std::mem::size_of::<Bucket<[u64; 12]>>();
        let n = 50_000;
        for i in 0..n {
            t.insert(KeyStr::from(format!("0\u{1}u{i}").as_str()), [i as u64; 12]);
        }
        let mut near_home = 0;
        for i in 0..n {
            let k = format!("0\u{1}u{i}");
            let h = t.hash(&k);
            let ix = t.find_index(h, &k).expect("inserted");
            let b = t.at(ix).expect("occupied");
            assert_eq!(b.val[0], i as u64);
            assert_eq!(std::ptr::from_ref(b) as usize, t.ctrl - (ix + 1) * size);
            let home = t.home_bucket(h).expect("not empty");
            if (ix.wrapping_sub(home) & (t.table.num_buckets() - 1)) <= 1 {
                near_home += 1;
            }
        }
        // Whatever the load factor (hashbrown's is at most 7/8), most keys sit in their
        // home bucket or the next one.
        assert!(near_home * 10 > n * 6, "{near_home} of {n} keys near home");
    }

    #[test]
    fn behaves_like_a_map() {
        let mut t: KeyTable<u32> = KeyTable::default();
        let mut m: std::collections::BTreeMap<String, u32> = Default::default();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for step in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = format!("k{}", x % 500);
            match x % 5 {
                0 => assert_eq!(t.remove(&k), m.remove(&k)),
                1 => {
                    // Removal by index, as the sweep does.
                    let ixs: Vec<usize> = t.indices().collect();
                    for i in ixs {
                        if t.at(i).is_some_and(|b| b.val % 3 == 0) {
                            assert!(t.remove_at(i).is_some());
                        }
                    }
                    m.retain(|_, v| *v % 3 != 0);
                }
                _ => {
                    t.insert(KeyStr::from(k.as_str()), step);
                    m.insert(k.clone(), step);
                }
            }
            let found = t.find_index(t.hash(&k), &k).and_then(|i| t.at(i));
            assert_eq!(found.map(|b| b.val), m.get(&k).copied());
            assert_eq!(t.len(), m.len());
        }
        let mut all: Vec<(String, u32)> = t.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        all.sort();
        assert_eq!(all, m.into_iter().collect::<Vec<_>>());
        let ixs: Vec<usize> = t.indices().collect();
        for i in ixs {
            assert!(t.remove_at(i).is_some());
        }
        assert_eq!(t.len(), 0);
    }
}
