//! Logging set-up: `--log-format=text|json` as the original, levels from `RUST_LOG` or, when
//! unset, from klog's `-v` (0–3 info, 4–5 debug, 6+ trace) so existing manifests keep their
//! verbosity. Colours only on a terminal: `kubectl logs` and log shippers read a pipe or a
//! file, where escape codes are noise.

use std::io::IsTerminal;
use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// The original's `--log-format` values; anything else is a start-up error, as there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("invalid log format {0:?}: must be \"text\" or \"json\"")]
    Format(String),
    #[error("invalid RUST_LOG filter")]
    Filter(#[source] tracing_subscriber::filter::ParseError),
    #[error("a global logger is already installed")]
    AlreadyInstalled,
}

impl FromStr for LogFormat {
    type Err = LoggingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" | "" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(LoggingError::Format(other.to_owned())),
        }
    }
}

/// Installs the global subscriber. `klog_v` is the value of `-v`, used when `RUST_LOG` is unset.
pub fn init_tracing(format: LogFormat, klog_v: u8) -> Result<(), LoggingError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::from_str(&directives).map_err(LoggingError::Filter)?,
        _ => EnvFilter::new(level_for_klog(klog_v)),
    };
    let ansi = use_ansi(format, std::io::stderr().is_terminal());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|_| LoggingError::AlreadyInstalled)
}

/// Colour codes only in text logs written to a terminal.
fn use_ansi(format: LogFormat, stderr_is_terminal: bool) -> bool {
    format == LogFormat::Text && stderr_is_terminal
}

fn level_for_klog(v: u8) -> &'static str {
    match v {
        0..=3 => "info",
        4..=5 => "debug",
        _ => "trace",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_text_and_json_are_formats() {
        assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert_eq!("text".parse::<LogFormat>().unwrap(), LogFormat::Text);
        assert!("yaml".parse::<LogFormat>().unwrap_err().to_string().contains("\"yaml\""));
    }

    #[test]
    fn colours_only_for_text_on_a_terminal() {
        assert!(use_ansi(LogFormat::Text, true));
        assert!(!use_ansi(LogFormat::Text, false));
        assert!(!use_ansi(LogFormat::Json, true));
    }

    #[test]
    fn klog_verbosity_maps_to_levels() {
        assert_eq!(level_for_klog(0), "info");
        assert_eq!(level_for_klog(5), "debug");
        assert_eq!(level_for_klog(9), "trace");
    }
}
