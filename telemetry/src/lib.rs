//! How medfed's programs report on themselves.
//!
//! [`init_logging`] sets up the one log every medfed binary writes, to standard error:
//!
//! - [`LogFormat::Text`], for people: one line per event with its spans (`round{round=3}:
//!   node{node=hospital-a}: …`). Coloured only when standard error is a terminal and `NO_COLOR`
//!   is unset or empty (<https://no-color.org>), so a log file or a pipe never holds escape codes.
//! - [`LogFormat::Json`], for machines: one JSON object per line, with `timestamp`, `level`,
//!   `target`, the event's `fields` (its message under `message`), the innermost `span` and the
//!   whole `spans` list, so a collector can select a round's or a node's events by field.
//!
//! Which events are written is set by `RUST_LOG` (a `tracing_subscriber::EnvFilter`), `info`
//! when unset or unreadable.

use std::fmt;
use std::io::IsTerminal;
use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// The format of the log on standard error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines; coloured on a terminal only.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Every format, by its name on the command line.
    pub const ALL: [(&'static str, Self); 2] = [("text", Self::Text), ("json", Self::Json)];
}

/// A log format name that is not one of [`LogFormat::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown log format \"{0}\": use \"text\" or \"json\"")]
pub struct UnknownLogFormat(String);

impl FromStr for LogFormat {
    type Err = UnknownLogFormat;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, format)| *format)
            .ok_or_else(|| UnknownLogFormat(name.to_owned()))
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::ALL
            .iter()
            .find(|(_, format)| format == self)
            .map_or("text", |(n, _)| n);
        f.write_str(name)
    }
}

/// Whether text logs are coloured: standard error is a terminal and `NO_COLOR` is unset or
/// empty.
pub fn colour_on_stderr() -> bool {
    wants_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

/// The rule of [`colour_on_stderr`], given what it reads.
fn wants_colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the process's log: `format` on standard error, filtered by `RUST_LOG` (`info` by
/// default). Call once, first thing in `main`; a second call leaves the first log in place.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation fails and keeps the first subscriber: nothing to report.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(colour_on_stderr()).try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_read_back_from_their_names_and_others_are_refused_by_name() {
        for (name, format) in LogFormat::ALL {
            assert_eq!(name.parse::<LogFormat>(), Ok(format));
            assert_eq!(format.to_string(), name);
        }
        let refused = "yaml".parse::<LogFormat>().unwrap_err();
        assert_eq!(
            refused.to_string(),
            "unknown log format \"yaml\": use \"text\" or \"json\""
        );
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(wants_colour(true, None));
        assert!(wants_colour(true, Some(OsStr::new(""))));
        assert!(!wants_colour(true, Some(OsStr::new("1"))));
        assert!(!wants_colour(false, None));
    }
}
