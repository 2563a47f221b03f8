//! Structured logs through `tracing`, as JSON lines or plain text on standard error.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use tracing::level_filters::LevelFilter;
use tracing::subscriber::DefaultGuard;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines, for terminals.
    Text,
}

/// Installs the global subscriber; `RUST_LOG`, when set and valid, overrides `level`.
///
/// A second call changes nothing, so tests and subcommands may call it freely.
pub fn init(format: LogFormat, level: &str) {
    let (filter, rejected) = filter(level);
    // Colours only for a person at a terminal, never in files or log collectors.
    let colour = std::io::IsTerminal::is_terminal(&io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(io::stderr);
    let installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
            .is_ok(),
        LogFormat::Text => builder.try_init().is_ok(),
    };

    // Only now can a bad filter be reported: there was nowhere to log it before.
    if installed && let Some(spec) = rejected {
        tracing::warn!(filter = %spec, "Ignoring invalid log filter; using info");
    }
}

/// The filter `RUST_LOG` or `level` describes, and the spec that was rejected, if any.
fn filter(level: &str) -> (EnvFilter, Option<String>) {
    filter_from(std::env::var(EnvFilter::DEFAULT_ENV).ok(), level)
}

/// The filter `env` (a non-empty `RUST_LOG`) or else `level` describes.
fn filter_from(env: Option<String>, level: &str) -> (EnvFilter, Option<String>) {
    let spec = env
        .filter(|spec| !spec.trim().is_empty())
        .unwrap_or_else(|| level.to_owned());
    match EnvFilter::try_new(&spec) {
        Ok(filter) => (filter, None),
        Err(_) => (
            EnvFilter::default().add_directive(LevelFilter::INFO.into()),
            Some(spec),
        ),
    }
}

/// Bytes written by a [`capture`] subscriber.
pub type CapturedLogs = Arc<Mutex<Vec<u8>>>;

/// Sends every event at every level, in text form, into a shared buffer until the guard
/// drops.
///
/// The subscriber is the current thread's default only: use it from a current-thread
/// runtime so that every task logs through it. Meant for tests that search the logs.
pub fn capture() -> (DefaultGuard, CapturedLogs) {
    let buffer = CapturedLogs::default();
    let sink = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(LevelFilter::TRACE)
        .with_ansi(false)
        .with_writer(move || SharedWriter(sink.clone()))
        .finish();
    (tracing::subscriber::set_default(subscriber), buffer)
}

/// Appends to a [`CapturedLogs`] buffer.
struct SharedWriter(CapturedLogs);

impl io::Write for SharedWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut buffer = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(logs: &CapturedLogs) -> String {
        String::from_utf8_lossy(&logs.lock().unwrap()).into_owned()
    }

    #[test]
    fn capture_records_events_at_trace_level_with_their_fields() {
        let (_guard, logs) = capture();
        tracing::trace!(namespace = "shop", "Looking at credential");
        let out = text(&logs);
        assert!(out.contains("TRACE"), "{out}");
        assert!(out.contains("Looking at credential"), "{out}");
        assert!(out.contains("namespace=\"shop\""), "{out}");
    }

    #[test]
    fn capture_records_fields_of_enclosing_spans() {
        let (_guard, logs) = capture();
        let span = tracing::info_span!("reconcile", name = "orders-cache");
        span.in_scope(|| tracing::debug!("Refreshing"));
        assert!(text(&logs).contains("orders-cache"));
    }

    #[test]
    fn capture_stops_when_its_guard_drops() {
        let (guard, logs) = capture();
        drop(guard);
        tracing::error!("After the guard");
        assert!(text(&logs).is_empty());
    }

    #[test]
    fn init_can_be_called_twice() {
        // Level "off": the global subscriber stays quiet for every other test in the binary.
        init(LogFormat::Json, "off");
        init(LogFormat::Text, "off");
    }

    #[test]
    fn rust_log_overrides_the_level() {
        let (filter, rejected) = filter_from(Some("warn".into()), "debug");
        assert_eq!(filter.max_level_hint(), Some(LevelFilter::WARN));
        assert_eq!(rejected, None);
    }

    #[test]
    fn an_empty_rust_log_leaves_the_level_in_force() {
        let (filter, _) = filter_from(Some(" ".into()), "debug");
        assert_eq!(filter.max_level_hint(), Some(LevelFilter::DEBUG));
    }

    #[test]
    fn an_invalid_filter_falls_back_to_info_and_is_reported() {
        let (filter, rejected) = filter_from(None, "amr=[");
        assert_eq!(filter.max_level_hint(), Some(LevelFilter::INFO));
        assert_eq!(rejected.as_deref(), Some("amr=["));
    }

    #[test]
    fn log_formats_parse_from_the_command_line() {
        use clap::ValueEnum;
        assert_eq!(LogFormat::from_str("json", false), Ok(LogFormat::Json));
        assert_eq!(LogFormat::from_str("text", false), Ok(LogFormat::Text));
    }
}
