//! A limit on repeated warnings: a flood of bad datagrams, a peer that cannot be reached, or a
//! burst of connection attempts must not turn into a flood of log lines.
//!
//! Every WARN and ERROR event is counted per call site in a fixed window. The first `burst` of a
//! window pass; the rest are held back and counted; the first line held back says so, and the
//! first line of a later window says how many were held back. The libraries' call sites
//! (gossip, the cluster link) get one line per 30 s window, since their lines repeat per
//! datagram or per dial; bgnode's own get ten per 10 s. INFO and below are never held back:
//! `RUST_LOG=debug` shows everything. One library warning known to be harmless (see
//! [`harmless`]) is not written at all.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// The target of the lines this layer writes itself.
const TARGET: &str = "bgnode::logs";

/// How many lines of one call site pass per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limit {
    burst: u32,
    window: Duration,
}

/// The limit for a target: bgnode's own, or a library's.
fn limit_for(target: &str) -> Limit {
    let own = ["background", "bgnode"]
        .iter()
        .any(|p| target == *p || target.starts_with(&format!("{p}::")));
    if own {
        Limit {
            burst: 10,
            window: Duration::from_secs(10),
        }
    } else {
        Limit {
            burst: 1,
            window: Duration::from_secs(30),
        }
    }
}

/// One call site's window.
#[derive(Debug)]
struct Window {
    start: Instant,
    passed: u32,
    held: u64,
}

/// What to do with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Write it; `held` lines of this site were held back in the window before.
    Pass { held: u64 },
    /// Hold it back; `first` when it is the first of this window.
    Hold { first: bool },
}

/// The per-call-site counting, free of tracing so it can be tested with made-up times.
#[derive(Debug)]
struct Counter<K> {
    windows: HashMap<K, Window>,
}

impl<K> Default for Counter<K> {
    fn default() -> Counter<K> {
        Counter {
            windows: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq> Counter<K> {
    fn admit(&mut self, key: K, limit: Limit, now: Instant) -> Verdict {
        let window = self.windows.entry(key).or_insert(Window {
            start: now,
            passed: 0,
            held: 0,
        });
        let mut held_before = 0;
        if now.duration_since(window.start) >= limit.window {
            held_before = window.held;
            *window = Window {
                start: now,
                passed: 0,
                held: 0,
            };
        }
        if window.passed < limit.burst {
            window.passed += 1;
            Verdict::Pass { held: held_before }
        } else {
            window.held += 1;
            Verdict::Hold {
                first: window.held == 1,
            }
        }
    }
}

/// Whether a library's warning is known to be harmless, so it is not written at all.
///
/// ractor_cluster's node session warns of "an unknown child actor exit event" when a peer's
/// actor ends while the session is open: the session forgets the actor on the peer's own
/// notice of its end, then hears of the same end from supervision. Every graceful leave of a
/// peer can show it, depending on which of the two arrives first; it means nothing.
fn harmless(target: &str, message: &str) -> bool {
    target == "ractor_cluster::node::node_session"
        && message.contains("received an unknown child actor exit event")
}

/// The `message` field of an event, as written.
#[derive(Default)]
struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

/// The layer: decides, before any other layer sees it, whether a WARN or ERROR line is written.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    counter: Mutex<Counter<Identifier>>,
}

impl<S: Subscriber> Layer<S> for Throttle {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() > Level::WARN || meta.target() == TARGET {
            return true;
        }
        if meta.target().starts_with("ractor_cluster::") {
            let mut message = Message::default();
            event.record(&mut message);
            if harmless(meta.target(), &message.0) {
                return false;
            }
        }
        let limit = limit_for(meta.target());
        let verdict = self
            .counter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(meta.callsite(), limit, Instant::now());
        let site = format!(
            "{}:{}",
            meta.file().unwrap_or(meta.target()),
            meta.line().unwrap_or(0)
        );
        match verdict {
            Verdict::Pass { held: 0 } => true,
            Verdict::Pass { held } => {
                tracing::warn!(
                    target: TARGET,
                    "{held} more lines like the next one ({site}) were held back in the last {:?}",
                    limit.window
                );
                true
            }
            Verdict::Hold { first: true } => {
                tracing::warn!(
                    target: TARGET,
                    "lines from {site} repeat: at most {} per {:?} are written, and the next one after that says how many were held back",
                    limit.burst,
                    limit.window
                );
                false
            }
            Verdict::Hold { first: false } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_known_harmless_line_is_dropped() {
        let line = r#"NodeSession Some(NameMessage { name: "n2@127.0.0.1" }) received an unknown child actor exit event from 0.40 - 'Some("remote")'"#;
        assert!(harmless("ractor_cluster::node::node_session", line));
        assert!(!harmless("ractor_cluster::node::client", line));
        assert!(!harmless(
            "ractor_cluster::node::node_session",
            "Received duplicate Ready signal"
        ));
    }

    const LIMIT: Limit = Limit {
        burst: 2,
        window: Duration::from_secs(10),
    };

    #[test]
    fn a_burst_passes_then_lines_are_held_and_counted_into_the_next_window() {
        let mut c = Counter::default();
        let t0 = Instant::now();
        assert_eq!(c.admit("a", LIMIT, t0), Verdict::Pass { held: 0 });
        assert_eq!(c.admit("a", LIMIT, t0), Verdict::Pass { held: 0 });
        assert_eq!(c.admit("a", LIMIT, t0), Verdict::Hold { first: true });
        for _ in 0..1000 {
            assert_eq!(c.admit("a", LIMIT, t0), Verdict::Hold { first: false });
        }
        // Another call site has its own window.
        assert_eq!(c.admit("b", LIMIT, t0), Verdict::Pass { held: 0 });
        let later = t0 + LIMIT.window;
        assert_eq!(c.admit("a", LIMIT, later), Verdict::Pass { held: 1001 });
        assert_eq!(c.admit("a", LIMIT, later), Verdict::Pass { held: 0 });
        assert_eq!(c.admit("a", LIMIT, later), Verdict::Hold { first: true });
    }

    #[test]
    fn libraries_get_one_line_per_window_and_bgnode_ten() {
        assert_eq!(limit_for("chitchat::transport::udp").burst, 1);
        assert_eq!(limit_for("ractor_cluster::node").burst, 1);
        assert_eq!(limit_for("background::engine::ingress").burst, 10);
        assert_eq!(limit_for("bgnode").burst, 10);
        assert_eq!(limit_for("backgroundx").burst, 1);
    }
}
