//! Silence matchers: parsing (`name=value`, `!=`, `=~`, `!~`), compiling, matching, and
//! a create request built from them.

use std::collections::BTreeMap;

use driftwatch_proto::v1::{self, matcher::Op};
use driftwatch_server::silences::{ActiveSilence, CompiledMatcher, matcher_text, parse_matcher, validate_create};

use crate::Input;

const NOW_MS: i64 = 1_700_000_000_000;

/// Input: a byte of flags, two label values, a start and end (seconds and nanos), then
/// matcher lines.
pub fn matchers(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.byte();
    let label_values = [input.string(), input.string()];
    let times = [input.u64() as i64, input.u64() as i64];
    let nanos = [input.u64() as i32, input.u64() as i32];
    let text = String::from_utf8_lossy(input.rest()).into_owned();

    let mut parsed = Vec::new();
    for line in text.split('\n') {
        let Ok(m) = parse_matcher(line) else { continue };
        check_parsed(line, &m);
        parsed.push(m);
    }
    for m in &parsed {
        let Ok(compiled) = CompiledMatcher::new(m) else { continue };
        let mut labels = BTreeMap::new();
        for value in label_values.iter().chain([&m.value, &String::new()]) {
            labels.insert(m.name.clone(), value.clone());
            check_ops(m, &compiled, &labels);
        }
        labels.clear();
        check_ops(m, &compiled, &labels);
    }

    // A create request: whatever it holds, a status or a silence, never a panic.
    let at = |i: usize| v1_timestamp(times[i], nanos[i]);
    let req = v1::CreateSilenceRequest {
        matchers: parsed,
        starts_at: (flags & 1 != 0).then(|| at(0)),
        ends_at: (flags & 2 != 0).then(|| at(1)),
        duration: (flags & 4 != 0).then(|| prost_types::Duration { seconds: times[1], nanos: nanos[1] }),
        comment: String::new(),
    };
    if let Ok(silence) = validate_create(&req, "fuzz", NOW_MS) {
        let active = ActiveSilence::new(silence.clone()).expect("a created silence compiles");
        assert!(active.ends_ms > active.starts_ms && active.ends_ms > NOW_MS, "{silence:?}");
        assert_ne!(active.state_at(NOW_MS), v1::SilenceState::Expired);
        // A silence never matches an alert without labels (it would hide the fleet).
        assert!(!active.silences(&BTreeMap::new(), active.starts_ms), "a silence matches every alert");
    }
}

fn v1_timestamp(seconds: i64, nanos: i32) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos }
}

/// A parsed matcher names a label and reads back the same from its text.
fn check_parsed(line: &str, m: &v1::Matcher) {
    assert!(!m.name.is_empty() && m.name == m.name.trim(), "{line:?} parsed to name {:?}", m.name);
    let text = matcher_text(m);
    assert_eq!(parse_matcher(&text).as_ref(), Ok(m), "{line:?} parsed to {m:?}, shown as {text:?}");
}

/// The four ops are two pairs of opposites, and `=~` of an escaped value is `=`.
fn check_ops(m: &v1::Matcher, compiled: &CompiledMatcher, labels: &BTreeMap<String, String>) {
    let with = |op: Op, value: &str| {
        CompiledMatcher::new(&v1::Matcher { name: m.name.clone(), value: value.to_string(), op: op as i32 })
            .map(|c| c.matches(labels))
    };
    let matched = compiled.matches(labels);
    let value = labels.get(&m.name).map(String::as_str).unwrap_or("");
    match Op::try_from(m.op).expect("parsed ops are known") {
        Op::Equal => {
            assert_eq!(matched, value == m.value);
            assert_eq!(with(Op::NotEqual, &m.value), Ok(!matched));
            assert_eq!(with(Op::Regex, &regex_escape(&m.value)), Ok(matched), "=~ of the escaped value differs from =");
        }
        Op::NotEqual => assert_eq!(with(Op::Equal, &m.value), Ok(!matched)),
        Op::Regex => assert_eq!(with(Op::NotRegex, &m.value), Ok(!matched)),
        Op::NotRegex => assert_eq!(with(Op::Regex, &m.value), Ok(!matched)),
    }
}

/// The value as a regex matching exactly itself.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
