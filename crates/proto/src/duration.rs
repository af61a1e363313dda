//! The one duration grammar of every config file, flag, rule and request field.
//!
//! A duration is one or more `<number><unit>` pairs, units in decreasing order,
//! each at most once: `90s`, `500ms`, `1h30m`, `1.5h`, `7d`, `2w`. Units: `ms`,
//! `s`, `m`, `h`, `d`, `w`. A number may have a decimal fraction (`1.5h`); the
//! whole is rounded to the millisecond. `0` alone means zero. Negative values,
//! bare numbers (`10`: seconds or minutes?) and unknown units are refused with
//! a message that says why; the caller adds the field it read (`field_error`).
//!
//! On the wire a duration is a `google.protobuf.Duration`, whose proto3 JSON
//! form is seconds with an `s` suffix (`"3600s"`, `"0.5s"`).

use std::time::Duration;

/// The wire type (`google.protobuf.Duration`), for callers that build requests.
pub use prost_types::Duration as ProtoDuration;

/// Longest duration accepted: 100 years, far past any retention or window.
pub const MAX: Duration = Duration::from_secs(100 * 365 * 86_400);

const UNITS: [(&str, u64); 6] =
    [("w", 604_800_000), ("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

/// Parse a duration (see the module documentation).
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration (e.g. 90s, 5m, 1h30m, 1.5h, 7d)".to_string());
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut total_ms: f64 = 0.0;
    let mut last_rank: Option<usize> = None;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let number = &text[start..i];
        if number.is_empty() {
            return Err(format!("invalid duration {text:?}: expected a number before each unit (e.g. 90s, 1h30m)"));
        }
        let valid_number = number.split('.').count() <= 2
            && !number.starts_with('.')
            && !number.ends_with('.')
            && number.bytes().any(|b| b.is_ascii_digit());
        let n: f64 = match number.parse() {
            Ok(n) if valid_number => n,
            _ => return Err(format!("invalid duration {text:?}: {number:?} is not a number")),
        };
        let ustart = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &text[ustart..i];
        if unit.is_empty() {
            return Err(format!(
                "invalid duration {text:?}: {number} needs a unit (ms, s, m, h, d, w), e.g. {number}s"
            ));
        }
        let Some(rank) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(format!("invalid duration {text:?}: unknown unit {unit:?} (use ms, s, m, h, d, w)"));
        };
        if last_rank.is_some_and(|r| rank <= r) {
            return Err(format!(
                "invalid duration {text:?}: units must be in decreasing order, each once (e.g. 1h30m)"
            ));
        }
        last_rank = Some(rank);
        total_ms += n * UNITS[rank].1 as f64;
        if total_ms > MAX.as_millis() as f64 {
            return Err(format!("invalid duration {text:?}: longer than 100 years"));
        }
    }
    Ok(Duration::from_millis(total_ms.round() as u64))
}

/// [`parse`] in whole milliseconds, for code that keeps time as `i64` ms.
pub fn parse_ms(text: &str) -> Result<i64, String> {
    parse(text).map(|d| d.as_millis() as i64)
}

/// A parse error with the field it came from: `retention.alerts: invalid duration "3x": …`.
pub fn field_error(field: &str, err: &str) -> String {
    format!("{field}: {err}")
}

/// [`parse`], with the field named in the error.
pub fn parse_field(field: &str, text: &str) -> Result<Duration, String> {
    parse(text).map_err(|e| field_error(field, &e))
}

/// The shortest text [`parse`] reads back as the same duration (to the millisecond):
/// `0s`, `250ms`, `90s` → `1m30s`, `1h30m`, `7d`, `2w` → `14d`.
pub fn format(d: Duration) -> String {
    let mut ms = d.as_millis() as u64;
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    // Days at most: "14d" reads better than "2w", and "10d" than "1w3d".
    for (unit, size) in UNITS.into_iter().skip(1) {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

/// [`format`] of milliseconds (negative counts as zero).
pub fn format_ms(ms: i64) -> String {
    format(Duration::from_millis(ms.max(0) as u64))
}

/// Whole seconds → `google.protobuf.Duration` (request builders, tests).
pub fn seconds(n: u64) -> prost_types::Duration {
    prost_types::Duration { seconds: n as i64, nanos: 0 }
}

/// `std::time::Duration` → `google.protobuf.Duration`.
pub fn to_proto(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

/// Milliseconds → `google.protobuf.Duration`.
pub fn to_proto_ms(ms: i64) -> prost_types::Duration {
    to_proto(Duration::from_millis(ms.max(0) as u64))
}

/// `google.protobuf.Duration` → `std::time::Duration`; a negative one is refused
/// with the field's name.
pub fn from_proto(field: &str, d: &prost_types::Duration) -> Result<Duration, String> {
    if d.seconds < 0 || d.nanos < 0 || (d.nanos >= 1_000_000_000) {
        return Err(format!("{field}: must be a non-negative duration (e.g. \"3600s\")"));
    }
    let out = Duration::new(d.seconds as u64, d.nanos as u32);
    if out > MAX {
        return Err(format!("{field}: longer than 100 years"));
    }
    Ok(out)
}

/// An optional request duration: absent gives `default`.
pub fn from_proto_or(field: &str, d: Option<&prost_types::Duration>, default: Duration) -> Result<Duration, String> {
    d.map_or(Ok(default), |d| from_proto(field, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> Result<u64, String> {
        parse(text).map(|d| d.as_millis() as u64)
    }

    #[test]
    fn the_grammar_accepts_what_operators_write() {
        assert_eq!(ms("90s"), Ok(90_000));
        assert_eq!(ms("1h30m"), Ok(5_400_000));
        assert_eq!(ms("1.5h"), Ok(5_400_000));
        assert_eq!(ms("7d"), Ok(7 * 86_400_000));
        assert_eq!(ms("2w"), Ok(14 * 86_400_000));
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("0"), Ok(0));
        assert_eq!(ms("0s"), Ok(0));
        assert_eq!(ms(" 5m "), Ok(300_000));
        assert_eq!(ms("1h0.5m"), Ok(3_630_000));
        assert_eq!(ms("0.0015s"), Ok(2), "rounded to the millisecond");
    }

    #[test]
    fn bad_durations_say_why() {
        for (text, why) in [
            ("", "empty"),
            ("10", "needs a unit"),
            ("5x", "unknown unit"),
            ("m", "expected a number"),
            ("1m1h", "decreasing order"),
            ("1h1h", "decreasing order"),
            ("-5m", "expected a number"),
            ("1..5h", "not a number"),
            (".5h", "not a number"),
            ("5.h", "not a number"),
            ("99999999w", "100 years"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
        }
        assert_eq!(
            parse_field("retention.alerts", "3x").unwrap_err(),
            format!("retention.alerts: {}", parse("3x").unwrap_err())
        );
    }

    #[test]
    fn format_reads_back() {
        for text in ["0s", "250ms", "1m30s", "1h30m", "7d", "10d", "1d2h3m4s5ms"] {
            let d = parse(text).unwrap();
            assert_eq!(format(d), text);
            assert_eq!(parse(&format(d)).unwrap(), d);
        }
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
        assert_eq!(format(parse("2w").unwrap()), "14d");
        assert_eq!(format_ms(-5), "0s");
    }

    #[test]
    fn proto_durations() {
        let d = Duration::from_millis(1500);
        assert_eq!(to_proto(d), prost_types::Duration { seconds: 1, nanos: 500_000_000 });
        assert_eq!(from_proto("x", &to_proto(d)).unwrap(), d);
        assert!(from_proto("bake", &prost_types::Duration { seconds: -1, nanos: 0 }).unwrap_err().starts_with("bake:"));
        assert_eq!(from_proto_or("x", None, d).unwrap(), d);
    }
}
