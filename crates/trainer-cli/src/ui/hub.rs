//! A run's page state: every event the run produced, in order, and a broadcast of new ones. A page that
//! connects (or reconnects, or is reloaded) gets the whole history first, then the live events; events carry a
//! sequence number so the page can drop one it already has.

use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

/// How many live events a slow page may fall behind before its stream is closed (it reconnects and gets the
/// history again).
const LIVE_BACKLOG: usize = 4096;

/// The events of one run, shared by the job's observer (which pushes) and the server (which streams).
pub struct Hub {
    events: Mutex<Vec<Arc<str>>>,
    live: broadcast::Sender<Arc<str>>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    /// An empty history.
    pub fn new() -> Self {
        Self {
            events: Mutex::new(Vec::new()),
            live: broadcast::channel(LIVE_BACKLOG).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Arc<str>>> {
        // A panic while holding the lock cannot leave the Vec half-changed (push is the only change).
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends an event `{"seq": N, "type": kind, ...fields}` and sends it to the connected pages.
    pub fn push(&self, kind: &str, fields: Value) {
        let mut events = self.lock();
        let mut obj = Map::new();
        obj.insert("seq".into(), json!(events.len()));
        obj.insert("type".into(), json!(kind));
        if let Value::Object(f) = fields {
            obj.extend(f);
        }
        let line: Arc<str> = Value::Object(obj).to_string().into();
        events.push(line.clone());
        // Sent under the lock: a page subscribing at the same time sees the event either in its copy of the
        // history or live, never both or neither. No page connected is not an error.
        let _ = self.live.send(line);
    }

    /// The history so far and a receiver of every later event.
    pub fn subscribe(&self) -> (Vec<Arc<str>>, broadcast::Receiver<Arc<str>>) {
        let events = self.lock();
        (events.clone(), self.live.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_then_live_without_gap_or_repeat() {
        let hub = Hub::new();
        hub.push("a", json!({"x": 1}));
        let (past, mut rx) = hub.subscribe();
        hub.push("b", json!({}));
        assert_eq!(past.len(), 1);
        let v: Value = serde_json::from_str(&past[0]).unwrap();
        assert_eq!(v, json!({"seq": 0, "type": "a", "x": 1}));
        let live: Value = serde_json::from_str(&rx.try_recv().unwrap()).unwrap();
        assert_eq!(live["seq"], 1);
        assert!(rx.try_recv().is_err());
    }
}
