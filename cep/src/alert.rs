//! Alert rules: a condition over events or over another definition's outputs, with
//! severity, a dedup key and a suppression interval.

use crate::def::AlertDef;
use crate::emit::{compile_expr, Output, OutputKind};
use crate::engine::Stats;
use crate::error::{parse_duration, CepError};
use crate::event::{Event, FieldTable};
use crate::expr::{EventCtx, Expr};
use crate::value::{write_num, write_str};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

pub(crate) struct AlertRt {
    id: String,
    cond: Expr,
    dedup: Option<Expr>,
    suppress: i64,
    severity: String,
    message: Option<String>,
    topic: String,
    webhook: Option<String>,
    last_fired: HashMap<String, i64>,
}

impl AlertRt {
    pub fn new(def: &AlertDef, fields: &mut FieldTable) -> Result<AlertRt, CepError> {
        match (&def.source.topic, &def.source.definition) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => {
                return Err(CepError::new(
                    "an alert rule reads either a topic (source.topic) or a definition's outputs (source.definition)",
                )
                .in_field("source"))
            }
        }
        let suppress = match &def.suppress {
            Some(s) => parse_duration(s).map_err(|e| e.in_field("suppress"))?,
            None => 0,
        };
        Ok(AlertRt {
            id: def.id.clone(),
            cond: compile_expr(&def.condition, fields, &[], "condition")?,
            dedup: match &def.dedup_key {
                Some(d) => Some(compile_expr(d, fields, &[], "dedup_key")?),
                None => None,
            },
            suppress,
            severity: def.severity.clone(),
            message: def.message.clone(),
            topic: def.emit.topic.clone(),
            webhook: def.emit.webhook.clone(),
            last_fired: HashMap::new(),
        })
    }

    pub fn on_event(&mut self, ev: &Event, time: i64, st: &mut Stats, out: &mut Vec<Output>) {
        st.events_in += 1;
        let ctx = EventCtx(ev);
        if !self.cond.test(&ctx) {
            return;
        }
        let mut key = String::new();
        if let Some(d) = &self.dedup {
            d.eval(&ctx).key_text(&mut key);
        }
        if let Some(last) = self.last_fired.get(&key) {
            if time.saturating_sub(*last) < self.suppress && time >= *last {
                st.suppressed += 1;
                return;
            }
        }
        if self.last_fired.len() > 100_000 {
            let s = self.suppress;
            self.last_fired.retain(|_, t| time.saturating_sub(*t) < s);
        }
        self.last_fired.insert(key.clone(), time);
        let mut v = String::with_capacity(128);
        v.push_str("{\"rule\":");
        write_str(&self.id, &mut v);
        v.push_str(",\"severity\":");
        write_str(&self.severity, &mut v);
        v.push_str(",\"dedup_key\":");
        write_str(&key, &mut v);
        v.push_str(",\"timestamp\":");
        write_num(time as f64, &mut v);
        if let Some(m) = &self.message {
            v.push_str(",\"message\":");
            write_str(m, &mut v);
        }
        if let Some(w) = &self.webhook {
            v.push_str(",\"webhook\":");
            write_str(w, &mut v);
        }
        v.push_str(",\"record\":");
        v.push_str(ev.value_text());
        v.push('}');
        st.outputs += 1;
        out.push(Output {
            topic: self.topic.clone(),
            key: if key.is_empty() {
                None
            } else {
                Some(key.into_bytes())
            },
            value: v.into_bytes(),
            definition_id: self.id.clone(),
            kind: OutputKind::Alert {
                webhook: self.webhook.clone(),
            },
            timestamp_ms: time,
        });
    }

    pub fn snapshot(&self) -> AlertSnap {
        let mut last_fired: Vec<(String, i64)> = self
            .last_fired
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        last_fired.sort();
        AlertSnap { last_fired }
    }

    pub fn restore(&mut self, s: AlertSnap) {
        self.last_fired = s.last_fired.into_iter().collect();
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlertSnap {
    last_fired: Vec<(String, i64)>,
}
