//! The process's log subscriber: stderr (stdout is left to what a command prints),
//! `text` for people or `json` (one object per line) for log shippers. ANSI colours
//! only when stderr is a terminal: journald and files would store the escapes.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines; coloured on a terminal.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (with
    /// `message` and the event's structured fields), `span`/`spans` when inside one.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("'{other}': expected text or json")),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// Whether text logs are coloured: only for a terminal, never for JSON (pure: tested below).
pub fn use_ansi(format: LogFormat, terminal: bool) -> bool {
    format == LogFormat::Text && terminal
}

/// Install the global subscriber: `filter` (e.g. `info,driftwatch_agent=debug`) in
/// `format`, to stderr. Fails on a bad filter, naming what is wrong with it.
pub fn init(filter: &str, format: LogFormat) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("log filter '{filter}': {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(use_ansi(format, std::io::stderr().is_terminal()));
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|e| format!("cannot install the log subscriber: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_print_the_flag_values() {
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert!("JSON".parse::<LogFormat>().unwrap_err().contains("expected text or json"));
        assert_eq!(LogFormat::Json.to_string(), "json");
    }

    #[test]
    fn colours_only_for_text_on_a_terminal() {
        assert!(use_ansi(LogFormat::Text, true));
        assert!(!use_ansi(LogFormat::Text, false));
        assert!(!use_ansi(LogFormat::Json, true));
        assert!(!use_ansi(LogFormat::Json, false));
    }

    #[test]
    fn a_bad_filter_is_named() {
        let err = init("driftwatch=nonsense", LogFormat::Text).unwrap_err();
        assert!(err.contains("driftwatch=nonsense"), "{err}");
    }
}
