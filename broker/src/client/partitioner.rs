//! Kafka's default partitioner: murmur2 of the key for keyed records (so keys land
//! on the same partitions as with the Java client), sticky for null keys (a
//! partition is kept until its batch is sent, then another one is picked).

/// Kafka's `Utils.murmur2` (seed 0x9747b28c), bit for bit.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner gives a non-null key.
pub fn partition_for_key(key: &[u8], partitions: usize) -> i32 {
    if partitions == 0 {
        return 0;
    }
    ((murmur2(key) & 0x7fff_ffff) as usize % partitions) as i32
}

/// Picks partitions for records; null keys stick to one partition until
/// [`Partitioner::batch_sent`] says its batch left.
#[derive(Debug)]
pub struct Partitioner {
    partitions: usize,
    sticky: Option<i32>,
    rng: u64,
}

impl Partitioner {
    pub fn new(partitions: usize) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x853c_49e6_748f_ea9b)
            ^ u64::from(std::process::id()).rotate_left(32);
        Partitioner {
            partitions: partitions.max(1),
            sticky: None,
            rng: seed | 1,
        }
    }

    pub fn partitions(&self) -> usize {
        self.partitions
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn partition(&mut self, key: Option<&[u8]>) -> i32 {
        match key {
            Some(k) => partition_for_key(k, self.partitions),
            None => match self.sticky {
                Some(p) => p,
                None => {
                    let p = (self.next_random() % self.partitions as u64) as i32;
                    self.sticky = Some(p);
                    p
                }
            },
        }
    }

    /// The batch of `partition` was sent: if it was the sticky one, pick another
    /// (different when there is a choice) for the next null-key records.
    pub fn batch_sent(&mut self, partition: i32) {
        if self.sticky == Some(partition) {
            let next = if self.partitions > 1 {
                let r = (self.next_random() % (self.partitions as u64 - 1)) as i32;
                if r >= partition {
                    r + 1
                } else {
                    r
                }
            } else {
                0
            };
            self.sticky = Some(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cases of Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (input, expected) in cases {
            assert_eq!(
                murmur2(input),
                expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn keys_are_stable_and_in_range() {
        for n in 1..20 {
            for k in ["a", "b", "user-42", ""] {
                let p = partition_for_key(k.as_bytes(), n);
                assert!((0..n as i32).contains(&p));
                assert_eq!(p, partition_for_key(k.as_bytes(), n));
            }
        }
        // toPositive(murmur2("foobar")) % 10 as the Java client computes it.
        assert_eq!(
            partition_for_key(b"foobar", 10),
            ((-790332482i32 & 0x7fffffff) % 10)
        );
    }

    #[test]
    fn null_keys_stick_until_batch_sent() {
        let mut p = Partitioner::new(4);
        let first = p.partition(None);
        assert_eq!(p.partition(None), first);
        p.batch_sent((first + 1) % 4);
        assert_eq!(
            p.partition(None),
            first,
            "another partition's batch does not move the sticky one"
        );
        p.batch_sent(first);
        let second = p.partition(None);
        assert_ne!(second, first);
        assert!((0..4).contains(&second));
        let mut one = Partitioner::new(1);
        assert_eq!(one.partition(None), 0);
        one.batch_sent(0);
        assert_eq!(one.partition(None), 0);
    }
}
