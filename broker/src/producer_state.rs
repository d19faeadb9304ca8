//! Idempotent producer state per partition (KIP-98): the last five batches of
//! each producer id, so a retried batch is answered with its original offset
//! and a gap in sequence numbers is refused.

use kafka_protocol::error::ResponseError;
use std::collections::{HashMap, VecDeque};
use weir_protocol::records::BatchHeader;

/// How many batches per producer are remembered; Kafka clients keep at most
/// five requests in flight with idempotence on, so five is enough to detect
/// every retry.
const REMEMBERED_BATCHES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchSeq {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
}

#[derive(Debug, Clone, Default)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchSeq>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// New and in order: append it.
    Append,
    /// Already appended at this base offset: acknowledge without appending.
    Duplicate { base_offset: i64 },
}

#[derive(Debug, Default, Clone)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
}

fn last_seq_of(h: &BatchHeader) -> i32 {
    // Sequences wrap around at i32::MAX, as in Kafka.
    let last = i64::from(h.base_sequence) + i64::from(h.last_offset_delta);
    (last % (i64::from(i32::MAX) + 1)) as i32
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

impl ProducerStates {
    /// Checks a batch of an idempotent producer against what was appended before.
    pub fn check(&self, h: &BatchHeader) -> Result<SeqCheck, (ResponseError, String)> {
        let Some(entry) = self.producers.get(&h.producer_id) else {
            return if h.base_sequence == 0 {
                Ok(SeqCheck::Append)
            } else {
                Err((
                    ResponseError::OutOfOrderSequenceNumber,
                    format!(
                        "producer {} is unknown here and its first sequence is {}, not 0",
                        h.producer_id, h.base_sequence
                    ),
                ))
            };
        };
        if h.producer_epoch < entry.epoch {
            return Err((
                ResponseError::InvalidProducerEpoch,
                format!(
                    "producer {} epoch {} is older than the current epoch {}",
                    h.producer_id, h.producer_epoch, entry.epoch
                ),
            ));
        }
        if h.producer_epoch > entry.epoch {
            return if h.base_sequence == 0 {
                Ok(SeqCheck::Append)
            } else {
                Err((
                    ResponseError::OutOfOrderSequenceNumber,
                    format!(
                        "producer {} new epoch {} must start at sequence 0, not {}",
                        h.producer_id, h.producer_epoch, h.base_sequence
                    ),
                ))
            };
        }
        let last = last_seq_of(h);
        if let Some(dup) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == h.base_sequence && b.last_seq == last)
        {
            return Ok(SeqCheck::Duplicate {
                base_offset: dup.base_offset,
            });
        }
        match entry.batches.back() {
            Some(prev) if next_seq(prev.last_seq) == h.base_sequence => Ok(SeqCheck::Append),
            None if h.base_sequence == 0 => Ok(SeqCheck::Append),
            Some(prev) => Err((
                ResponseError::OutOfOrderSequenceNumber,
                format!(
                    "producer {} sent sequence {} after {}: expected {}",
                    h.producer_id,
                    h.base_sequence,
                    prev.last_seq,
                    next_seq(prev.last_seq)
                ),
            )),
            None => Err((
                ResponseError::OutOfOrderSequenceNumber,
                format!(
                    "producer {} epoch {} must start at sequence 0",
                    h.producer_id, h.producer_epoch
                ),
            )),
        }
    }

    /// Records an appended batch.
    pub fn record(&mut self, h: &BatchHeader, base_offset: i64) {
        if !h.has_producer_id() {
            return;
        }
        let entry = self.producers.entry(h.producer_id).or_default();
        if h.producer_epoch != entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(BatchSeq {
            first_seq: h.base_sequence,
            last_seq: last_seq_of(h),
            base_offset,
        });
        while entry.batches.len() > REMEMBERED_BATCHES {
            entry.batches.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: i64, epoch: i16, seq: i32, records: i32) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            batch_length: 100,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            record_count: records,
        }
    }

    #[test]
    fn in_order_duplicate_gap_and_fencing() {
        let mut s = ProducerStates::default();
        let b0 = header(7, 0, 0, 5);
        assert_eq!(s.check(&b0), Ok(SeqCheck::Append));
        s.record(&b0, 100);
        let b1 = header(7, 0, 5, 5);
        assert_eq!(s.check(&b1), Ok(SeqCheck::Append));
        s.record(&b1, 105);
        assert_eq!(s.check(&b0), Ok(SeqCheck::Duplicate { base_offset: 100 }));
        assert_eq!(s.check(&b1), Ok(SeqCheck::Duplicate { base_offset: 105 }));
        assert_eq!(
            s.check(&header(7, 0, 11, 1)).unwrap_err().0,
            ResponseError::OutOfOrderSequenceNumber
        );
        assert_eq!(
            s.check(&header(9, 0, 3, 1)).unwrap_err().0,
            ResponseError::OutOfOrderSequenceNumber
        );
        let bumped = header(7, 1, 0, 1);
        assert_eq!(s.check(&bumped), Ok(SeqCheck::Append));
        s.record(&bumped, 110);
        assert_eq!(
            s.check(&header(7, 0, 10, 1)).unwrap_err().0,
            ResponseError::InvalidProducerEpoch
        );
    }

    #[test]
    fn only_five_batches_are_remembered() {
        let mut s = ProducerStates::default();
        for i in 0..7 {
            let h = header(1, 0, i, 1);
            assert_eq!(s.check(&h), Ok(SeqCheck::Append));
            s.record(&h, i64::from(i));
        }
        assert_eq!(
            s.check(&header(1, 0, 6, 1)),
            Ok(SeqCheck::Duplicate { base_offset: 6 })
        );
        assert!(
            s.check(&header(1, 0, 0, 1)).is_err(),
            "too old to be recognised as a duplicate"
        );
    }
}
