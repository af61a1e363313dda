//! Prometheus-style durations: `0s`, `500ms`, `30s`, `5m`, `1h30m`, `1d`, `1w`.

/// Parse a duration into milliseconds. Units: ms, s, m, h, d, w; at least one
/// number+unit pair; units in decreasing order, each at most once (as Prometheus).
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("empty duration".to_string());
    }
    if text == "0" {
        return Ok(0);
    }
    const UNITS: [(&str, i64); 6] =
        [("w", 604_800_000), ("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut total: i64 = 0;
    let mut last_rank: Option<usize> = None;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(format!("invalid duration {text:?}: expected a number (e.g. 30s, 5m, 1h)"));
        }
        let n: i64 = text[start..i].parse().map_err(|_| format!("invalid duration {text:?}: number too large"))?;
        let ustart = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &text[ustart..i];
        let Some(rank) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(format!("invalid duration {text:?}: unknown unit {unit:?} (use ms, s, m, h, d, w)"));
        };
        if last_rank.is_some_and(|r| rank <= r) {
            return Err(format!("invalid duration {text:?}: units must be in decreasing order, each once"));
        }
        last_rank = Some(rank);
        total = n
            .checked_mul(UNITS[rank].1)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("invalid duration {text:?}: too large"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::parse_duration_ms;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("0s"), Ok(0));
        assert_eq!(parse_duration_ms("0"), Ok(0));
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("5m"), Ok(300_000));
        assert_eq!(parse_duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("1d"), Ok(86_400_000));
        assert!(parse_duration_ms("").is_err());
        assert!(parse_duration_ms("5").is_err());
        assert!(parse_duration_ms("5x").is_err());
        assert!(parse_duration_ms("m").is_err());
        assert!(parse_duration_ms("1m1h").is_err());
        assert!(parse_duration_ms("-5m").is_err());
    }
}
