//! The server's log: a `tracing` filter, text or JSON lines on stderr, and a throttle on what
//! the WebRTC stack says about packets.
//!
//! The WebRTC stack (the `rtc` crates) logs a warning for each bad packet a browser or anyone
//! naming a viewer sends: a STUN check without its integrity attribute is two lines. A viewer
//! sending such checks under its byte allowance wrote some 10,000 lines a second, so the log
//! grew as fast as a remote party liked and what the server itself had to say was lost in it.
//! Each place in those crates that logs may now write [`PER_WINDOW`] lines per [`WINDOW`]; the
//! rest are counted, and a line every window says how many were held back and from where.
//!
//! Written here, not taken from `tracing-throttle`: that crate keys its limits by the message
//! and its fields, and these messages carry the sender's address, so every connection of an
//! attacker would get an allowance of its own. Keyed by the place that logs, the total is held.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::Metadata;
use tracing::callsite::Identifier;
use tracing::subscriber::Interest;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// Lines each place in a throttled crate may write per window.
pub const PER_WINDOW: u32 = 5;
/// The window, and how often the count of lines held back is written.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Whose log lines are throttled: the WebRTC stack's crates (`rtc`, `rtc_ice`, `rtc_dtls`, …),
/// which log about packets that anyone can send.
fn throttled(target: &str) -> bool {
    target == "rtc" || target.starts_with("rtc::") || target.starts_with("rtc_")
}

/// How the log is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Sets up the process's log: `filter` (a `tracing` filter; without it `RUST_LOG`, else `info`)
/// in `format` on stderr, throttled as this module says. While the process runs, a thread
/// writes what was held back once per window.
pub fn init(filter: Option<&str>, format: Format) {
    let filter = match filter {
        Some(filter) => EnvFilter::new(filter),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let throttle = Throttle::default();
    // Colours only on a terminal: a log file, journald or a test reading the lines gets them
    // plain.
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        Format::Text => registry.with(lines.with_filter(throttle.clone())).init(),
        Format::Json => registry
            .with(lines.json().with_filter(throttle.clone()))
            .init(),
    }
    let spawned = std::thread::Builder::new()
        .name("log-throttle".into())
        .spawn(move || {
            loop {
                std::thread::sleep(WINDOW);
                throttle.report();
            }
        });
    if let Err(err) = spawned {
        tracing::warn!("no thread to report throttled log lines: {err}");
    }
}

/// The log lines of one place that logs, in the current window.
struct Place {
    target: String,
    window_from: Instant,
    written: u32,
    held_back: u64,
}

/// A per-layer filter holding each place in the throttled crates to [`PER_WINDOW`] lines per
/// [`WINDOW`]. Lines of other crates pass untouched (their callsites are never asked again).
#[derive(Clone, Default)]
pub struct Throttle {
    places: Arc<Mutex<HashMap<Identifier, Place>>>,
}

impl Throttle {
    /// Whether the line of `metadata`, written at `now`, is within its place's allowance; if not
    /// it is counted.
    fn admits(&self, metadata: &Metadata<'_>, now: Instant) -> bool {
        let mut places = self.places.lock().unwrap_or_else(|p| p.into_inner());
        let place = places.entry(metadata.callsite()).or_insert_with(|| Place {
            target: metadata.target().to_owned(),
            window_from: now,
            written: 0,
            held_back: 0,
        });
        if now.saturating_duration_since(place.window_from) >= WINDOW {
            place.window_from = now;
            place.written = 0;
        }
        if place.written < PER_WINDOW {
            place.written += 1;
            true
        } else {
            place.held_back += 1;
            false
        }
    }

    /// What was held back since the last call, by crate and module: `(target, lines)`, the most
    /// first. The counts start again from zero.
    fn take_held_back(&self) -> Vec<(String, u64)> {
        let mut places = self.places.lock().unwrap_or_else(|p| p.into_inner());
        let mut by_target: HashMap<&str, u64> = HashMap::new();
        for place in places.values_mut() {
            if place.held_back > 0 {
                *by_target.entry(&place.target).or_default() += place.held_back;
                place.held_back = 0;
            }
        }
        let mut held: Vec<_> = by_target
            .into_iter()
            .map(|(target, lines)| (target.to_owned(), lines))
            .collect();
        held.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        held
    }

    /// Writes how many lines were held back in the last window, if any were.
    fn report(&self) {
        let held = self.take_held_back();
        if held.is_empty() {
            return;
        }
        let total: u64 = held.iter().map(|(_, lines)| lines).sum();
        let from: Vec<String> = held
            .iter()
            .map(|(target, lines)| format!("{target} {lines}"))
            .collect();
        tracing::warn!(
            "held back {total} log lines of the WebRTC stack in the last {} s (more than {PER_WINDOW} from one place): {}",
            WINDOW.as_secs(),
            from.join(", ")
        );
    }
}

impl<S> Filter<S> for Throttle {
    fn enabled(&self, metadata: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        !throttled(metadata.target()) || self.admits(metadata, Instant::now())
    }

    fn callsite_enabled(&self, metadata: &'static Metadata<'static>) -> Interest {
        if throttled(metadata.target()) {
            // Asked at every line, to be counted.
            Interest::sometimes()
        } else {
            Interest::always()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tracing_subscriber::Layer;

    use super::*;

    #[test]
    fn the_webrtc_stacks_crates_are_throttled_and_no_other() {
        for target in [
            "rtc",
            "rtc::peer_connection::handler",
            "rtc_ice::agent",
            "rtc_dtls::conn",
        ] {
            assert!(throttled(target), "{target}");
        }
        for target in [
            "wasmcast",
            "wasmcast::access",
            "rtcp",
            "hyper::proto",
            "rtsp_types",
        ] {
            assert!(!throttled(target), "{target}");
        }
    }

    /// Counts the lines it is given, from the throttled crates and from others, and keeps the
    /// place of the last one.
    #[derive(Clone, Default)]
    struct Count {
        rtc: Arc<AtomicUsize>,
        others: Arc<AtomicUsize>,
        last: Arc<Mutex<Option<&'static Metadata<'static>>>>,
    }

    impl<S: tracing::Subscriber> Layer<S> for Count {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let counter = if throttled(event.metadata().target()) {
                &self.rtc
            } else {
                &self.others
            };
            counter.fetch_add(1, Ordering::Relaxed);
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(event.metadata());
        }
    }

    /// What `emit` logs, as a layer behind `throttle` is given it.
    fn through(throttle: &Throttle, emit: impl FnOnce()) -> Count {
        let count = Count::default();
        let subscriber =
            tracing_subscriber::registry().with(count.clone().with_filter(throttle.clone()));
        tracing::subscriber::with_default(subscriber, emit);
        count
    }

    #[test]
    fn each_place_in_the_stack_writes_a_few_lines_a_window_and_the_rest_are_counted() {
        let throttle = Throttle::default();
        let count = through(&throttle, || {
            for i in 0..1000 {
                tracing::warn!(target: "rtc_ice::agent", "discard message from 127.0.0.1:{i}");
                tracing::warn!(target: "rtc::peer_connection::handler", "attribute not found");
                tracing::warn!(target: "wasmcast", "our own line {i}");
            }
        });
        assert_eq!(
            count.rtc.load(Ordering::Relaxed),
            2 * PER_WINDOW as usize,
            "each of the two places writes its share"
        );
        assert_eq!(
            count.others.load(Ordering::Relaxed),
            1000,
            "the server's own lines all pass"
        );
        let held_back = 1000 - u64::from(PER_WINDOW);
        assert_eq!(
            throttle.take_held_back(),
            [
                ("rtc::peer_connection::handler".to_owned(), held_back),
                ("rtc_ice::agent".to_owned(), held_back),
            ]
        );
        assert!(throttle.take_held_back().is_empty(), "counted once");
    }

    #[test]
    fn a_new_window_gives_each_place_its_share_again() {
        let throttle = Throttle::default();
        let count = through(&Throttle::default(), || {
            tracing::warn!(target: "rtc_srtp::session", "a packet");
        });
        let place = count
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .expect("a line was logged");
        let start = Instant::now();
        for _ in 0..PER_WINDOW {
            assert!(throttle.admits(place, start));
        }
        assert!(
            !throttle.admits(place, start + WINDOW / 2),
            "past its share"
        );
        assert!(throttle.admits(place, start + WINDOW), "a new window");
        assert_eq!(
            throttle.take_held_back(),
            [("rtc_srtp::session".to_owned(), 1)]
        );
    }
}
