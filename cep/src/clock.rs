//! Event time, watermarks and lateness.

use crate::def::EventTimeDef;
use crate::error::{parse_duration, CepError};
use crate::event::{Event, FieldTable};
use crate::value::Val;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimeSpec {
    /// None: processing time (arrival order, record timestamps made monotonic).
    pub event: Option<EventTimeSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventTimeSpec {
    #[serde(skip)]
    pub field: Option<u32>,
    pub bound: i64,
    pub lateness: i64,
    pub late_topic: Option<String>,
}

impl TimeSpec {
    pub fn compile(
        et: Option<&EventTimeDef>,
        time: Option<&str>,
        fields: &mut FieldTable,
    ) -> Result<TimeSpec, CepError> {
        match (time, et) {
            (Some("processing"), Some(_)) => Err(CepError::new(
                "event_time is given but time is \"processing\"",
            )
            .in_field("time")),
            (Some("processing"), None) => Ok(TimeSpec { event: None }),
            (Some("event") | None, Some(e)) => {
                let d = |s: &Option<String>, f: &str| -> Result<i64, CepError> {
                    match s {
                        None => Ok(0),
                        Some(s) => {
                            parse_duration(s).map_err(|e| e.in_field(format!("event_time.{f}")))
                        }
                    }
                };
                Ok(TimeSpec {
                    event: Some(EventTimeSpec {
                        field: e.field.as_deref().map(|f| fields.intern(f)),
                        bound: d(&e.max_out_of_orderness, "max_out_of_orderness")?,
                        lateness: d(&e.allowed_lateness, "allowed_lateness")?,
                        late_topic: e.late_topic.clone(),
                    }),
                })
            }
            (Some("event"), None) => Ok(TimeSpec {
                event: Some(EventTimeSpec {
                    field: None,
                    bound: 0,
                    lateness: 0,
                    late_topic: None,
                }),
            }),
            (None, None) => Ok(TimeSpec { event: None }),
            (Some(o), _) => Err(CepError::new(format!(
                "unknown time {o:?}: expected \"event\" or \"processing\""
            ))
            .in_field("time")),
        }
    }

    /// The event's time, or None when its time field is missing or not a number.
    pub fn time_of(&self, ev: &Event) -> Option<i64> {
        match self.event.as_ref().and_then(|e| e.field) {
            None => Some(ev.rec.timestamp_ms),
            Some(f) => match ev.get(f) {
                Val::Num(n) if n.is_finite() && n.abs() < 9.0e15 => Some(*n as i64),
                Val::Str(s) => s.trim().parse::<i64>().ok(),
                _ => None,
            },
        }
    }
}

/// Watermark state of one definition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Clock {
    pub max_seen: i64,
    pub watermark: i64,
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            max_seen: i64::MIN,
            watermark: i64::MIN,
        }
    }
}

impl Clock {
    /// Records an arrival at time `t` and advances the watermark.
    pub fn observe(&mut self, t: i64, spec: &TimeSpec) {
        self.max_seen = self.max_seen.max(t);
        let bound = spec.event.as_ref().map(|e| e.bound).unwrap_or(0);
        self.watermark = self.watermark.max(self.max_seen.saturating_sub(bound));
    }
}
