//! Records, parsed events and the field table.
//!
//! A record value is parsed once per topic into an [`Event`]: only the fields some
//! definition refers to are materialised (into a dense vector indexed by field id), the
//! rest of the JSON is validated and skipped. The record's bytes (value, key, headers)
//! are kept only where some definition reading the topic outputs whole events (a
//! pattern without `emit.value`, an alert rule's `record`); otherwise the event is
//! *projected*: its field values are all it holds, and checkpoints store those values
//! (see [`Event::is_projected`]). Holding the bytes costs one more allocation per
//! event, freed cold when its state expires: in steady state, about one last-level
//! cache miss in seven (benches/README.md, "Session 8").

use crate::value::{VStr, Val};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::collections::HashMap;
use std::fmt;
use std::mem::ManuallyDrop;
use std::sync::Arc;

/// A record read from a source topic, as the broker hands it to [`crate::Engine::process`].
#[derive(Debug, Clone, Copy)]
pub struct SourceRecord<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub headers: &'a [(&'a str, &'a [u8])],
}

/// Serde for byte strings in checkpoints: UTF-8 as a JSON string (compact, and much
/// faster than an array of numbers), anything else as an array of numbers. Both forms
/// are read back.
pub mod bytes_text {
    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(b) {
            Ok(t) => s.serialize_str(t),
            Err(_) => s.collect_seq(b.iter()),
        }
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string or an array of bytes")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
            Ok(v.as_bytes().to_vec())
        }

        fn visit_string<E: de::Error>(self, v: String) -> Result<Vec<u8>, E> {
            Ok(v.into_bytes())
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_any(BytesVisitor)
    }

    /// The same for `Box<[u8]>`.
    pub mod boxed {
        use serde::{Deserializer, Serializer};

        pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
            super::serialize(b, s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Box<[u8]>, D::Error> {
            super::deserialize(d).map(Vec::into_boxed_slice)
        }
    }

    /// The same for `Option<Box<[u8]>>` (None is null).
    pub mod option_boxed {
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(b: &Option<Box<[u8]>>, s: S) -> Result<S::Ok, S::Error> {
            match b {
                Some(b) => super::serialize(b, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<[u8]>>, D::Error> {
            #[derive(Deserialize)]
            struct W(#[serde(with = "super")] Vec<u8>);
            Ok(Option::<W>::deserialize(d)?.map(|w| w.0.into_boxed_slice()))
        }
    }

    /// The same for `Option<Vec<u8>>` (None is null).
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(b: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
            match b {
                Some(b) => super::serialize(b, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
            #[derive(Deserialize)]
            struct W(#[serde(with = "super")] Vec<u8>);
            Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
        }
    }
}

/// An owned copy of a record (kept in state and checkpoints): where it is, and its bytes
/// unless the event holding it is projected.
///
/// 48 bytes: with the reference counts, the first cache line of an `Arc<Event>`, which
/// is all that dropping a projected event with plain values reads (see `plain_vals`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "RawRecordWire")]
pub struct RawRecord {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
    /// Value, key and headers; `None` for a projected event. Behind one pointer so that
    /// a projected event does not carry three empty ones.
    bytes: Option<Box<RecordBytes>>,
    /// Set by the parser when the [`Event`]'s field values own no memory (numbers,
    /// booleans, short strings, held inline), so that dropping the event does not read
    /// them: in a long-running engine an event is dropped when its state expires, long
    /// after it was last touched, and each line read is a cache miss. Here, not in
    /// `Event`, because it fits in this struct's padding. Left false, the values are
    /// dropped as usual.
    pub plain_vals: bool,
}

/// What a record holds besides its position: kept for events whose whole record some
/// definition outputs.
#[derive(Debug, Clone, PartialEq)]
struct RecordBytes {
    key: Option<Box<[u8]>>,
    value: Box<[u8]>,
    headers: Box<[(String, Vec<u8>)]>,
}

/// The serialised form of a [`RawRecord`] (unchanged since checkpoints began: the
/// bytes' fields at the top level, a projected record's empty).
#[derive(Deserialize)]
struct RawRecordWire {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    timestamp_ms: i64,
    #[serde(with = "bytes_text::option_boxed")]
    key: Option<Box<[u8]>>,
    #[serde(with = "bytes_text::boxed")]
    value: Box<[u8]>,
    headers: Box<[(String, Vec<u8>)]>,
}

impl From<RawRecordWire> for RawRecord {
    fn from(w: RawRecordWire) -> RawRecord {
        // Records are only ever projected with no bytes at all; a value that parsed is
        // never empty.
        let bytes = (!w.value.is_empty() || w.key.is_some() || !w.headers.is_empty()).then(|| {
            Box::new(RecordBytes {
                key: w.key,
                value: w.value,
                headers: w.headers,
            })
        });
        RawRecord {
            topic: w.topic,
            partition: w.partition,
            offset: w.offset,
            timestamp_ms: w.timestamp_ms,
            bytes,
            plain_vals: false,
        }
    }
}

impl Serialize for RawRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Bytes<'a>(&'a [u8]);
        impl Serialize for Bytes<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                bytes_text::serialize(self.0, s)
            }
        }
        let mut st = s.serialize_struct("RawRecord", 7)?;
        st.serialize_field("topic", &self.topic)?;
        st.serialize_field("partition", &self.partition)?;
        st.serialize_field("offset", &self.offset)?;
        st.serialize_field("timestamp_ms", &self.timestamp_ms)?;
        st.serialize_field("key", &self.key().map(Bytes))?;
        st.serialize_field("value", &Bytes(self.value()))?;
        st.serialize_field("headers", self.headers())?;
        st.end()
    }
}

impl RawRecord {
    /// A record with a value and maybe a key, no headers.
    pub fn new(
        topic: Arc<str>,
        partition: i32,
        offset: i64,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: &[u8],
    ) -> RawRecord {
        RawRecord {
            topic,
            partition,
            offset,
            timestamp_ms,
            bytes: Some(Box::new(RecordBytes {
                key: key.map(Box::from),
                value: Box::from(value),
                headers: Box::default(),
            })),
            plain_vals: false,
        }
    }

    /// The record's position and timestamp without its bytes (value, key, headers): what
    /// a projected [`Event`] keeps.
    pub fn position_of(r: &SourceRecord<'_>, topic: Arc<str>) -> RawRecord {
        RawRecord {
            topic,
            partition: r.partition,
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            bytes: None,
            plain_vals: false,
        }
    }

    pub fn from_source(r: &SourceRecord<'_>, topic: Arc<str>) -> RawRecord {
        RawRecord {
            topic,
            partition: r.partition,
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            bytes: Some(Box::new(RecordBytes {
                key: r.key.map(Box::from),
                value: Box::from(r.value),
                // No headers (the usual case) without going through an empty vector.
                headers: if r.headers.is_empty() {
                    Box::default()
                } else {
                    r.headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_vec()))
                        .collect()
                },
            })),
            plain_vals: false,
        }
    }

    /// The value (empty for a projected record).
    pub fn value(&self) -> &[u8] {
        self.bytes.as_ref().map_or(&[], |b| &b.value)
    }

    pub fn key(&self) -> Option<&[u8]> {
        self.bytes.as_ref().and_then(|b| b.key.as_deref())
    }

    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        self.bytes.as_ref().map_or(&[], |b| &b.headers)
    }

    /// Whether only the position is kept (see [`Event::is_projected`]).
    pub fn is_projected(&self) -> bool {
        self.bytes.is_none()
    }
}

/// Field values of an event: inline up to this many fields (definitions usually refer to
/// a handful), so that parsing does not allocate a vector per event.
pub const INLINE_FIELDS: usize = 5;

/// A parsed record: field values by field id.
///
/// Checkpointed as its record; a projected event (no record bytes) also with its field
/// values, by the field ids of the engine that wrote the checkpoint (the checkpoint
/// lists their paths). Other events are parsed again on restore.
///
/// Laid out with the record first, so that dropping a projected event whose values own
/// no memory (see [`RawRecord::plain_vals`]) reads only its first cache line: the
/// reference counts and the record.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[repr(C)]
pub struct Event {
    pub rec: RawRecord,
    /// Parsed field values. Dropped by `Event`'s `Drop`, only when they own memory.
    #[serde(default, deserialize_with = "vals_from_list")]
    pub vals: ManuallyDrop<SmallVec<[Val; INLINE_FIELDS]>>,
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let projected = self.is_projected();
        let mut st = s.serialize_struct("Event", if projected { 2 } else { 1 })?;
        st.serialize_field("rec", &self.rec)?;
        if projected {
            st.serialize_field("vals", &self.vals[..])?;
        }
        st.end()
    }
}

fn vals_from_list<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<ManuallyDrop<SmallVec<[Val; INLINE_FIELDS]>>, D::Error> {
    Ok(ManuallyDrop::new(SmallVec::from_vec(
        Vec::<Val>::deserialize(d)?,
    )))
}

/// Recent string values of each field, shared by the events that carry them, so that a
/// field with few distinct values (`"type": "login"`) does not allocate a string per
/// event. Bounded: [`STR_CACHE_WAYS`] values per field, short strings only; a miss costs
/// a few comparisons of short strings.
///
/// A field whose values keep missing (user ids: a new value nearly every event) skips the
/// cache for a while: comparing with the cached values and replacing one costs more than
/// it saves there. It is tried again after a few thousand values.
#[derive(Debug, Default, Clone)]
pub struct StrCache {
    slots: Vec<StrSlot>,
}

#[derive(Debug, Default, Clone)]
struct StrSlot {
    ways: [Option<Arc<str>>; STR_CACHE_WAYS],
    next: usize,
    /// Misses since the last hit.
    misses: u32,
    /// Values left to skip the cache for.
    bypass: u32,
}

/// Misses in a row after which a field skips the cache, and for how many values.
const STR_CACHE_GIVE_UP: u32 = 64;
const STR_CACHE_RETRY: u32 = 4096;

pub const STR_CACHE_WAYS: usize = 4;
const STR_CACHE_MAX_LEN: usize = 32;

impl StrCache {
    pub(crate) fn get(&mut self, field: u32, s: &str) -> Val {
        if s.len() > STR_CACHE_MAX_LEN || s.len() <= crate::value::VSTR_INLINE {
            // Short strings are held inline (cheaper than sharing), long ones not cached.
            return Val::str(s);
        }
        let i = field as usize;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, Default::default);
        }
        let Some(slot) = self.slots.get_mut(i) else {
            return Val::str(s);
        };
        if slot.bypass > 0 {
            slot.bypass -= 1;
            return Val::str(s);
        }
        for w in slot.ways.iter().flatten() {
            if bytes_eq(w.as_bytes(), s.as_bytes()) {
                slot.misses = 0;
                return Val::Str(VStr::from(w.clone()));
            }
        }
        slot.misses += 1;
        if slot.misses >= STR_CACHE_GIVE_UP {
            slot.misses = 0;
            slot.bypass = STR_CACHE_RETRY;
            return Val::str(s);
        }
        let a: Arc<str> = Arc::from(s);
        slot.ways[slot.next % STR_CACHE_WAYS] = Some(a.clone());
        slot.next = (slot.next + 1) % STR_CACHE_WAYS;
        Val::Str(VStr::from(a))
    }
}

/// The bytes of `k` as a little-endian word, zero-padded, if `k` has at most 8 bytes
/// (with the length, this identifies `k`). No loop and no `memcpy`: two possibly
/// overlapping loads of 4 (or 2) bytes; a byte in both has the same value in both.
#[inline(always)]
pub(crate) fn word8(k: &[u8]) -> Option<u64> {
    let n = k.len();
    let le4 = |b: &[u8]| -> u64 {
        let mut w = [0u8; 4];
        w.copy_from_slice(b);
        u64::from(u32::from_le_bytes(w))
    };
    let le2 = |b: &[u8]| -> u64 {
        let mut w = [0u8; 2];
        w.copy_from_slice(b);
        u64::from(u16::from_le_bytes(w))
    };
    Some(match n {
        0 => 0,
        1 => u64::from(k[0]),
        2..=3 => le2(&k[..2]) | (le2(&k[n - 2..]) << ((n - 2) * 8)),
        4..=8 => le4(&k[..4]) | (le4(&k[n - 4..]) << ((n - 4) * 8)),
        _ => return None,
    })
}

/// `a == b`, without a `memcmp` call for short strings (field values and literals).
#[inline(always)]
pub(crate) fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    match (word8(a), word8(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // With `plain_vals`, the values and their vector own no memory: nothing to free,
        // and not reading them saves a cache miss or two per event.
        if !self.rec.plain_vals {
            // SAFETY: `vals` is dropped only here, once, and not used afterwards.
            unsafe { ManuallyDrop::drop(&mut self.vals) };
        }
    }
}

impl Event {
    #[inline]
    pub fn get(&self, field: u32) -> &Val {
        self.vals.get(field as usize).unwrap_or(&crate::value::NULL)
    }

    /// The record value as JSON text (it parsed, so it is valid JSON); `null` for a
    /// projected event (not reached: events are projected only where no definition
    /// reading their topic outputs whole records).
    pub fn value_text(&self) -> &str {
        if self.is_projected() {
            return "null";
        }
        std::str::from_utf8(self.rec.value()).unwrap_or("null")
    }

    /// Whether the record's bytes were dropped after parsing (only the field values are
    /// kept).
    pub fn is_projected(&self) -> bool {
        self.rec.is_projected()
    }
}

#[derive(Debug, Clone)]
enum Special {
    Key,
    Timestamp,
    Partition,
    Offset,
    Topic,
    Header(String),
}

/// Field paths referenced by definitions, interned to dense ids.
#[derive(Debug, Default, Clone)]
pub struct FieldTable {
    ids: HashMap<String, u32>,
    paths: Vec<String>,
    /// top-level JSON key -> (field id, remaining path segments)
    top: HashMap<String, Vec<(u32, Vec<String>)>>,
    /// The same as a list: looked up by a linear scan while short (every key of every
    /// event is looked up; a few string comparisons beat hashing it).
    top_list: Vec<(String, Entries)>,
    /// `(length, first bytes as a word)` of each `top_list` key, for the comparison in
    /// [`FieldTable::top_entries`] (see [`word8`]).
    /// (A key longer than 8 bytes has word 0: only its length is compared here, and no
    /// key of up to 8 bytes has its length.)
    top_words: Vec<(usize, u64)>,
    /// The same keys for [`crate::flatjson::scan_compact`].
    index: crate::flatjson::KeyIndex,
    specials: Vec<(u32, Special)>,
}

impl FieldTable {
    /// Interns a dotted field path such as `user`, `geo.country` or `_headers.trace`.
    pub fn intern(&mut self, path: &str) -> u32 {
        if let Some(id) = self.ids.get(path) {
            return *id;
        }
        let id = self.paths.len() as u32;
        self.paths.push(path.to_string());
        self.ids.insert(path.to_string(), id);
        let special = match path {
            "_key" => Some(Special::Key),
            "_timestamp" => Some(Special::Timestamp),
            "_partition" => Some(Special::Partition),
            "_offset" => Some(Special::Offset),
            "_topic" => Some(Special::Topic),
            p => p
                .strip_prefix("_headers.")
                .map(|h| Special::Header(h.to_string())),
        };
        if let Some(s) = special {
            self.specials.push((id, s));
        } else {
            let mut segs = path.split('.');
            let first = segs.next().unwrap_or("").to_string();
            let rest: Vec<String> = segs.map(|s| s.to_string()).collect();
            match self.top_list.iter_mut().find(|(k, _)| *k == first) {
                Some((_, list)) => list.push((id, rest.clone())),
                None => {
                    self.top_words
                        .push((first.len(), word8(first.as_bytes()).unwrap_or(0)));
                    self.top_list
                        .push((first.clone(), vec![(id, rest.clone())]));
                }
            }
            self.top.entry(first).or_default().push((id, rest));
            self.index = crate::flatjson::KeyIndex::build(
                self.top_list.iter().map(|(k, e)| (k.as_str(), e)),
            );
        }
        id
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Field paths by id.
    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    /// The id of an interned path.
    pub fn lookup(&self, path: &str) -> Option<u32> {
        self.ids.get(path).copied()
    }

    /// A projected event's field values (by the ids of the table whose `paths` are
    /// `old_paths`) rebuilt by this table's ids: fields this table does not know are
    /// dropped, fields the other did not know are null.
    pub fn remap(&self, vals: &[Val], old_paths: &[String]) -> SmallVec<[Val; INLINE_FIELDS]> {
        let mut out = self.null_vals();
        for (v, path) in vals.iter().zip(old_paths) {
            if let Some(slot) = self.lookup(path).and_then(|id| out.get_mut(id as usize)) {
                *slot = v.clone();
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The fields under top-level key `k`.
    #[inline(always)]
    fn top_entries(&self, k: &str) -> Option<&Entries> {
        if self.top_list.len() <= 8 {
            let k = k.as_bytes();
            if let Some(w) = word8(k) {
                // Keys of up to 8 bytes (nearly all): one comparison of length and word
                // per candidate instead of a byte loop.
                let n = k.len();
                let i = self
                    .top_words
                    .iter()
                    .position(|&(len, tw)| len == n && tw == w)?;
                return self.top_list.get(i).map(|(_, e)| e);
            }
            // Lengths first, then the bytes inline: keys are a few bytes, and `==` on
            // strings calls `memcmp` for every candidate of the same length.
            self.top_list
                .iter()
                .find(|(t, _)| t.len() == k.len() && t.bytes().zip(k).all(|(a, &b)| a == b))
                .map(|(_, e)| e)
        } else {
            self.top.get(k)
        }
    }

    /// Parses a record. `Err` means the value is not a JSON object.
    #[allow(clippy::result_unit_err)]
    pub fn parse(&self, rec: RawRecord) -> Result<Event, ()> {
        self.parse_cached(rec, &mut StrCache::default())
    }

    /// [`FieldTable::parse`], sharing string values with recent events through `strs`.
    #[allow(clippy::result_unit_err)]
    pub fn parse_cached(&self, rec: RawRecord, strs: &mut StrCache) -> Result<Event, ()> {
        let headers: Vec<(&str, &[u8])> = rec
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let src = SourceRecord {
            topic: &rec.topic,
            partition: rec.partition,
            offset: rec.offset,
            timestamp_ms: rec.timestamp_ms,
            key: rec.key(),
            value: rec.value(),
            headers: &headers,
        };
        let mut vals = self.null_vals();
        self.fill(&src, &mut vals, strs)?;
        Ok(Event {
            rec,
            vals: ManuallyDrop::new(vals),
        })
    }

    /// Parses a source record into a shared event, built in its allocation and filled
    /// there (the event, 176 bytes, was moved four times on its way there). With
    /// `keep_record` false the event is projected: it keeps the record's position and
    /// timestamp, not its bytes.
    #[allow(clippy::result_unit_err)]
    pub fn parse_shared(
        &self,
        src: &SourceRecord<'_>,
        topic: Arc<str>,
        keep_record: bool,
        strs: &mut StrCache,
    ) -> Result<Arc<Event>, ()> {
        let rec = if keep_record {
            RawRecord::from_source(src, topic)
        } else {
            RawRecord::position_of(src, topic)
        };
        // Filled here, then moved into its `Arc`: filling it in place (`Arc::get_mut`) takes
        // an atomic instruction on the new allocation, a line usually not in cache, and
        // an atomic waits for it to arrive where plain stores would not.
        let mut ev = Event {
            rec,
            vals: ManuallyDrop::new(self.null_vals()),
        };
        self.fill(src, &mut ev.vals, strs)?;
        ev.rec.plain_vals = !ev.vals.spilled() && ev.vals.iter().all(Val::owns_no_memory);
        Ok(Arc::new(ev))
    }

    /// `Null` in every field's slot.
    #[inline(always)]
    fn null_vals(&self) -> SmallVec<[Val; INLINE_FIELDS]> {
        let n = self.paths.len();
        if n <= INLINE_FIELDS {
            // All slots `Null` at once (the slots past `n` are `Null` too, and hold
            // nothing to drop).
            SmallVec::from_buf_and_len([const { Val::Null }; INLINE_FIELDS], n)
        } else {
            std::iter::repeat_with(|| Val::Null).take(n).collect()
        }
    }

    /// The field values of `rec` into `vals` (all `Null` before).
    #[inline(always)]
    fn fill(
        &self,
        rec: &SourceRecord<'_>,
        vals: &mut [Val],
        strs: &mut StrCache,
    ) -> Result<(), ()> {
        // The common case without serde (see `flatjson`): the key index's scanner first,
        // then the general one; anything neither decides goes through serde_json as before.
        let compact = self.index.usable
            && crate::flatjson::scan_compact(rec.value, &self.index, vals, strs).is_some();
        if !compact {
            for v in vals.iter_mut() {
                *v = Val::Null;
            }
            if crate::flatjson::scan(rec.value, |k| self.top_entries(k), vals, strs).is_none() {
                for v in vals.iter_mut() {
                    *v = Val::Null;
                }
                self.parse_serde(rec.value, vals, strs)?;
            }
        }
        for (id, s) in &self.specials {
            let v = match s {
                Special::Key => rec
                    .key
                    .map(|k| Val::str(&String::from_utf8_lossy(k)))
                    .unwrap_or(Val::Null),
                Special::Timestamp => Val::Num(rec.timestamp_ms as f64),
                Special::Partition => Val::Num(rec.partition as f64),
                Special::Offset => Val::Num(rec.offset as f64),
                Special::Topic => Val::str(rec.topic),
                Special::Header(h) => rec
                    .headers
                    .iter()
                    .rev()
                    .find(|(k, _)| *k == h)
                    .map(|(_, v)| Val::str(&String::from_utf8_lossy(v)))
                    .unwrap_or(Val::Null),
            };
            if let Some(slot) = vals.get_mut(*id as usize) {
                *slot = v;
            }
        }
        Ok(())
    }
}

impl FieldTable {
    /// The top-level fields of `value` into `vals` with serde_json (`Err`: not a JSON
    /// object). The reference for [`crate::flatjson::scan`].
    pub(crate) fn parse_serde(
        &self,
        value: &[u8],
        vals: &mut [Val],
        strs: &mut StrCache,
    ) -> Result<(), ()> {
        let mut de = serde_json::Deserializer::from_slice(value);
        TopSeed {
            table: self,
            vals,
            strs,
        }
        .deserialize(&mut de)
        .map_err(|_| ())?;
        de.end().map_err(|_| ())
    }

    #[cfg(test)]
    pub(crate) fn key_index_for_test(&self) -> &crate::flatjson::KeyIndex {
        &self.index
    }

    #[cfg(test)]
    pub(crate) fn top_entries_for_test(&self, k: &str) -> Option<&Entries> {
        self.top_entries(k)
    }
}

struct TopSeed<'a> {
    table: &'a FieldTable,
    vals: &'a mut [Val],
    strs: &'a mut StrCache,
}

impl<'de> DeserializeSeed<'de> for TopSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let table = self.table;
        while let Some(entry) = map.next_key_seed(KeySeed { table })? {
            match entry {
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
                Some(list) => {
                    if list.iter().all(|(_, rest)| rest.is_empty()) {
                        let field = list.first().map(|(id, _)| *id).unwrap_or(0);
                        let v = map.next_value_seed(ValSeed {
                            strs: &mut *self.strs,
                            field,
                        })?;
                        for (id, _) in list {
                            if let Some(slot) = self.vals.get_mut(*id as usize) {
                                *slot = v.clone();
                            }
                        }
                    } else {
                        let j: serde_json::Value = map.next_value()?;
                        for (id, rest) in list {
                            let mut cur = Some(&j);
                            for seg in rest {
                                cur = cur.and_then(|c| match c {
                                    serde_json::Value::Object(m) => m.get(seg.as_str()),
                                    serde_json::Value::Array(a) => {
                                        seg.parse::<usize>().ok().and_then(|i| a.get(i))
                                    }
                                    _ => None,
                                });
                            }
                            if let Some(slot) = self.vals.get_mut(*id as usize) {
                                *slot = cur.map(Val::from_json).unwrap_or(Val::Null);
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

pub(crate) type Entries = Vec<(u32, Vec<String>)>;

struct KeySeed<'a> {
    table: &'a FieldTable,
}

impl<'de, 'a> DeserializeSeed<'de> for KeySeed<'a> {
    type Value = Option<&'a Entries>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 'a> Visitor<'de> for KeySeed<'a> {
    type Value = Option<&'a Entries>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.table.top_entries(v))
    }
}

/// A top-level value of field `field` (strings through the cache).
struct ValSeed<'a> {
    strs: &'a mut StrCache,
    field: u32,
}

impl<'de> DeserializeSeed<'de> for ValSeed<'_> {
    type Value = Val;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Val, D::Error> {
        d.deserialize_any(ValVisitor(self))
    }
}

struct ValVisitor<'a>(ValSeed<'a>);

impl<'de> Visitor<'de> for ValVisitor<'_> {
    type Value = Val;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Val, E> {
        Ok(Val::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Val, E> {
        Ok(Val::Num(v as f64))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Val, E> {
        Ok(Val::Num(v as f64))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Val, E> {
        Ok(Val::Num(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Val, E> {
        Ok(self.0.strs.get(self.0.field, v))
    }
    fn visit_unit<E>(self) -> Result<Val, E> {
        Ok(Val::Null)
    }
    fn visit_none<E>(self) -> Result<Val, E> {
        Ok(Val::Null)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Val, A::Error> {
        let j = serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        Ok(Val::from_json(&j))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Val, A::Error> {
        let j = serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(Val::Json(Arc::new(j)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn events_fit_in_three_cache_lines() {
        // An `Arc<Event>` (two counts and the event) in mimalloc's 192-byte class, whose
        // blocks are line-aligned: the counts and the record fill the first line.
        assert_eq!(std::mem::size_of::<RawRecord>(), 48);
        assert_eq!(std::mem::offset_of!(Event, rec), 0);
        assert!(
            std::mem::size_of::<Event>() + 16 <= 192,
            "{}",
            std::mem::size_of::<Event>()
        );
    }

    /// Dropping an event skips its values only where they own no memory: an event whose
    /// values hold an object (shared) or spilled out of the event drops them.
    #[test]
    fn events_skip_dropping_values_only_when_they_own_no_memory() {
        let parse = |paths: &[&str], value: &str| {
            let mut t = FieldTable::default();
            for p in paths {
                t.intern(p);
            }
            let src = SourceRecord {
                topic: "t",
                partition: 0,
                offset: 0,
                timestamp_ms: 0,
                key: None,
                value: value.as_bytes(),
                headers: &[],
            };
            t.parse_shared(&src, Arc::from("t"), false, &mut StrCache::default())
                .unwrap_or_else(|()| panic!("{value} did not parse"))
        };
        let plain = parse(&["u", "n", "b"], r#"{"u":"short","n":1,"b":true}"#);
        assert!(plain.rec.plain_vals);
        assert_eq!(plain.get(0), &Val::str("short"));

        let shared = parse(&["u", "o"], r#"{"u":"short","o":{"a":1}}"#);
        assert!(!shared.rec.plain_vals);
        let Val::Json(obj) = shared.get(1).clone() else {
            panic!("{:?}", shared.get(1));
        };
        assert_eq!(Arc::strong_count(&obj), 2);
        drop(shared);
        assert_eq!(
            Arc::strong_count(&obj),
            1,
            "the event's values were not dropped"
        );

        let many: Vec<String> = (0..INLINE_FIELDS + 1).map(|i| format!("f{i}")).collect();
        let paths: Vec<&str> = many.iter().map(String::as_str).collect();
        let body = format!(
            "{{{}}}",
            paths
                .iter()
                .map(|p| format!("\"{p}\":1"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let spilled = parse(&paths, &body);
        assert!(spilled.vals.spilled());
        assert!(!spilled.rec.plain_vals, "a spilled vector owns memory");
    }

    #[test]
    fn short_words_identify_short_strings() {
        let all: Vec<&[u8]> = vec![
            b"",
            b"a",
            b"b",
            b"ab",
            b"ba",
            b"abc",
            b"acb",
            b"\0",
            b"\0\0",
            b"ts",
            b"ip",
            b"user",
            b"type",
            b"userx",
            b"success",
            b"successs",
            b"abcdefgh",
            b"abcdefgi",
            b"bbcdefgh",
            b"abcdefghi",
            b"abcdefghj",
            b"\xff\xfe\0\x01",
        ];
        for a in &all {
            assert_eq!(word8(a).is_some(), a.len() <= 8);
            if let Some(w) = word8(a) {
                let mut b = [0u8; 8];
                b[..a.len()].copy_from_slice(a);
                assert_eq!(w, u64::from_le_bytes(b), "{a:?}");
            }
            for b in &all {
                assert_eq!(bytes_eq(a, b), a == b, "{a:?} {b:?}");
            }
        }
        let mut t = FieldTable::default();
        for p in ["user", "ts", "success", "a.b", "verylongfieldname", "x"] {
            t.intern(p);
        }
        for (k, id) in [
            ("user", Some(0)),
            ("ts", Some(1)),
            ("success", Some(2)),
            ("a", Some(3)),
            ("verylongfieldname", Some(4)),
            ("x", Some(5)),
            ("ip", None),
            ("us", None),
            ("verylongfieldnamf", None),
            ("", None),
            ("tsx", None),
        ] {
            assert_eq!(
                t.top_entries(k).and_then(|e| e.first()).map(|e| e.0),
                id,
                "{k}"
            );
        }
    }

    #[test]
    fn raw_records_round_trip_as_text_or_bytes() {
        for (key, value) in [
            (Some(&b"k"[..]), &br#"{"a":"\"x\""}"#[..]),
            (None, &[0xffu8, 0, 1][..]),
        ] {
            let r = RawRecord::new(Arc::from("t"), 1, 2, 3, key, value);
            let j = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<RawRecord>(&j).unwrap(), r, "{j}");
        }
        // Older checkpoints hold arrays of numbers.
        let old = r#"{"topic":"t","partition":0,"offset":0,"timestamp_ms":0,"key":[107],"value":[123,125],"headers":[]}"#;
        let r: RawRecord = serde_json::from_str(old).unwrap();
        assert_eq!((r.key(), r.value()), (Some(&b"k"[..]), &b"{}"[..]));
        let j = serde_json::to_string(&r).unwrap();
        assert!(j.contains(r#""value":"{}""#), "{j}");
    }
}
