//! The subscriptions the client restores after a reconnect (on the same node or the
//! next), and which frames are deliveries.
//!
//! Live delivery is highest priority first, so the highest cursor received is not a
//! safe place to resume: a lower-priority event with a lower cursor may still have been
//! waiting when the connection dropped (docs/protocol.md section 5.3). A subscription
//! therefore keeps a mark per priority, the highest cursor it received live, and
//! resumes after the smallest one (a priority not seen live yet holds it at the start).
//!
//! Owns: that resume state and the subscribe command that resumes. Must not: touch the
//! socket.

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::Delivery;

pub(super) struct Sub {
    pub spec: Value,
    pub deliveries: mpsc::Sender<Delivery>,
    /// Where it started (its `from_cursor`, a resume point, or a replay's last
    /// cursor): every match at or below it was delivered or replayed. `None`: unknown.
    start: Option<u64>,
    /// Per priority (highest first), the highest cursor received live. Cursors are
    /// the same on every node of a cluster, so these hold across nodes too.
    marks: [Option<u64>; 4],
    /// A replay is running: its events set no mark (they come in cursor order, not
    /// priority order, and end with `replay_complete`).
    replaying: bool,
    /// Repeats are dropped: not with acks (a redelivery is expected) or coalescing
    /// (which reorders by design). Decided once, from the spec.
    drops_repeats: bool,
    /// When it was made: a resume with no known start replays from then.
    since: String,
}

impl Sub {
    pub fn new(spec: Value, deliveries: mpsc::Sender<Delivery>) -> Sub {
        let start = spec["from_cursor"].as_u64();
        let replaying = start.is_some() || spec.get("since").is_some();
        let drops_repeats = ["ack", "durable", "coalesce"]
            .iter()
            .all(|k| spec.get(k).is_none_or(|v| v.is_null() || *v == false));
        Sub {
            drops_repeats,
            spec,
            deliveries,
            start,
            marks: [None; 4],
            replaying,
            since: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        }
    }

    /// The cursor a resume starts after, if one is known: the smallest mark, a priority
    /// without one counting as the start. Coalescing holds events back out of cursor
    /// order, so such a subscription resumes from its start.
    fn resume_point(&self) -> Option<u64> {
        if self.spec.get("coalesce").is_some() {
            return self.start;
        }
        // Everything at or below the start was delivered or replayed: a mark below it
        // is stale.
        self.marks
            .iter()
            .map(|m| match (*m, self.start) {
                (Some(m), Some(s)) => Some(m.max(s)),
                (m, s) => m.or(s),
            })
            .try_fold(u64::MAX, |low, m| m.map(|m| low.min(m)))
    }

    /// The subscribe command that restores it after a reconnect; the resume point
    /// becomes its start. Events at or above the point may come a second time.
    pub fn resume(&mut self) -> Value {
        let mut spec = self.spec.clone();
        if spec.get("durable").is_none() {
            if let Some(obj) = spec.as_object_mut() {
                obj.remove("from_cursor");
                obj.remove("since");
            }
            match self.resume_point() {
                Some(c) => {
                    spec["from_cursor"] = json!(c);
                    self.start = Some(c);
                }
                None => spec["since"] = json!(self.since),
            }
            self.replaying = true;
        }
        json!({"type": "subscribe", "subscription": spec})
    }

    /// Remembers what a delivery says about where to resume; `false` when it repeats
    /// an event already handed over (a resume replays from the smallest mark, so the
    /// events of other priorities up to their own marks come again).
    pub fn note(&mut self, delivery: &Delivery) -> bool {
        match delivery {
            Delivery::Event { event, .. } => {
                let cursor = event["cursor"].as_u64().filter(|c| *c > 0);
                let priority = event["priority"].as_str().and_then(priority_index);
                let (Some(c), Some(p)) = (cursor, priority) else {
                    return true; // A server notice: never replayed.
                };
                let mark = &mut self.marks[p];
                if self.drops_repeats && mark.is_some_and(|m| c <= m) {
                    return false;
                }
                if !self.replaying {
                    *mark = Some(mark.map_or(c, |m| m.max(c)));
                }
                true
            }
            Delivery::ReplayComplete { last_cursor } => {
                self.replaying = false;
                // Every match up to it was replayed.
                self.start = Some(self.start.map_or(*last_cursor, |s| s.max(*last_cursor)));
                true
            }
            Delivery::Dropped { .. } => true,
        }
    }
}

/// A priority's place, highest first (this layer does not name `protocol`).
fn priority_index(priority: &str) -> Option<usize> {
    ["critical", "high", "normal", "low"]
        .iter()
        .position(|p| *p == priority)
}

/// The delivery a server frame stands for, if it is one.
pub(super) fn delivery(msg: &Value) -> Option<Delivery> {
    match msg["type"].as_str()? {
        "event" => Some(Delivery::Event {
            attempt: msg["attempt"].as_u64().unwrap_or(1),
            event: msg["event"].clone(),
        }),
        "replay_complete" => Some(Delivery::ReplayComplete {
            last_cursor: msg["last_cursor"].as_u64().unwrap_or(0),
        }),
        "dropped" => Some(Delivery::Dropped {
            count: msg["count"].as_u64().unwrap_or(0),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(spec: Value) -> Sub {
        Sub::new(spec, mpsc::channel(1).0)
    }

    fn event(cursor: u64, priority: &str) -> Delivery {
        Delivery::Event {
            event: json!({"cursor": cursor, "priority": priority}),
            attempt: 1,
        }
    }

    fn resumed_from(s: &mut Sub) -> Value {
        let frame = s.resume();
        let spec = &frame["subscription"];
        if spec.get("from_cursor").is_some() {
            spec["from_cursor"].clone()
        } else {
            json!({"since": spec["since"].is_string()})
        }
    }

    /// A critical event overtook a low one still waiting: a resume goes back to the
    /// start, not past the low event (protocol 5.3).
    #[test]
    fn resumes_after_the_smallest_mark() {
        type Case<'a> = (&'a str, Value, &'a [(u64, &'a str)], Value);
        let cases: &[Case] = &[
            (
                "all four seen",
                json!({"from_cursor": 40}),
                &[(42, "critical"), (41, "high"), (44, "normal"), (43, "low")],
                json!(41),
            ),
            (
                "low never seen live",
                json!({"from_cursor": 40}),
                &[(42, "critical")],
                json!(40),
            ),
            ("nothing yet", json!({"from_cursor": 40}), &[], json!(40)),
            (
                "no start known",
                json!({}),
                &[(42, "critical")],
                json!({"since": true}),
            ),
            (
                "highest per priority",
                json!({"from_cursor": 1}),
                &[
                    (5, "critical"),
                    (9, "critical"),
                    (7, "high"),
                    (8, "normal"),
                    (6, "low"),
                ],
                json!(6),
            ),
            (
                "coalescing: the start",
                json!({"from_cursor": 3, "coalesce": {"key": "agent_id"}}),
                &[(5, "critical"), (9, "high"), (7, "normal"), (8, "low")],
                json!(3),
            ),
        ];
        for (name, spec, deliveries, want) in cases {
            let mut s = sub(spec.clone());
            if s.replaying {
                s.note(&Delivery::ReplayComplete { last_cursor: 0 });
            }
            for (c, p) in *deliveries {
                s.note(&event(*c, p));
            }
            assert_eq!(resumed_from(&mut s), *want, "{name}");
        }
    }

    /// What a resume replays again is not handed over twice.
    #[test]
    fn repeats_are_recognised() {
        let mut s = sub(json!({"from_cursor": 10}));
        s.note(&Delivery::ReplayComplete { last_cursor: 10 });
        assert!(s.note(&event(12, "critical")));
        assert!(s.note(&event(11, "low")));
        assert_eq!(resumed_from(&mut s), json!(10));
        let again: Vec<bool> = [(11, "low"), (12, "critical"), (13, "low"), (14, "critical")]
            .iter()
            .map(|(c, p)| s.note(&event(*c, p)))
            .collect();
        assert_eq!(again, [false, false, true, true]);
        let mut acked = sub(json!({"from_cursor": 10, "ack": true}));
        acked.note(&Delivery::ReplayComplete { last_cursor: 10 });
        assert!(acked.note(&event(12, "high")));
        assert!(
            acked.note(&event(12, "high")),
            "a redelivery is handed over"
        );
    }

    /// Replayed events set no mark; `replay_complete` tells the start.
    #[test]
    fn a_replay_sets_the_start_not_the_marks() {
        let mut s = sub(json!({}));
        s.note(&event(50, "critical"));
        let first = s.resume();
        assert!(first["subscription"]["since"].is_string());
        s.note(&event(30, "low"));
        s.note(&Delivery::ReplayComplete { last_cursor: 60 });
        assert_eq!(
            resumed_from(&mut s),
            json!(60),
            "the replay covered everything to 60"
        );
        s.note(&Delivery::ReplayComplete { last_cursor: 60 });
        for (c, p) in [(70, "critical"), (65, "high"), (66, "normal"), (61, "low")] {
            s.note(&event(c, p));
        }
        assert_eq!(resumed_from(&mut s), json!(61));
    }

    #[test]
    fn durable_subscriptions_resume_by_name() {
        let mut s = sub(json!({"durable": "billing", "from_cursor": 5}));
        let frame = s.resume();
        assert_eq!(
            frame["subscription"],
            json!({"durable": "billing", "from_cursor": 5})
        );
    }
}
