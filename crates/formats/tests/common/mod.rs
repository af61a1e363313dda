//! Shared helpers for the integration tests.
#![allow(dead_code)]

use driftwatch_formats::{Analysis, FileStatus, Format, Limits, Masker, Value, analyze};
use driftwatch_proto::v1::value::Kind;

pub const FLEET_KEY: &[u8] = b"test fleet key, 32 bytes long!!!";

pub fn masker() -> Masker {
    Masker::new(FLEET_KEY)
}

pub fn run(text: &str, format: Format) -> Analysis {
    analyze(text.as_bytes(), format, &masker(), &Limits::default())
}

/// Analyse and require status OK.
pub fn ok(text: &str, format: Format) -> Analysis {
    let a = run(text, format);
    assert_eq!(a.status, FileStatus::Ok, "expected OK for {format:?}, got {:?}", a.error);
    assert!(a.error.is_none());
    a
}

pub fn keys(a: &Analysis) -> Vec<&str> {
    a.keys.iter().map(|kv| kv.key.as_str()).collect()
}

pub fn get<'a>(a: &'a Analysis, key: &str) -> &'a Value {
    a.keys
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .unwrap_or_else(|| panic!("no key {key:?} in {:?}", keys(a)))
}

pub fn kind<'a>(a: &'a Analysis, key: &str) -> &'a Kind {
    get(a, key).kind.as_ref().expect("value has a kind")
}

/// The masking reason of `key`, or None when it is not masked.
pub fn masked_reason(a: &Analysis, key: &str) -> Option<String> {
    match kind(a, key) {
        Kind::Masked(m) => Some(m.reason.clone()),
        _ => None,
    }
}

pub fn masked_fingerprint(a: &Analysis, key: &str) -> String {
    match kind(a, key) {
        Kind::Masked(m) => m.fingerprint.clone(),
        other => panic!("{key} is not masked: {other:?}"),
    }
}

/// All masked keys, in order.
pub fn masked_keys(a: &Analysis) -> Vec<&str> {
    a.keys
        .iter()
        .filter(|kv| matches!(kv.value.as_ref().and_then(|v| v.kind.as_ref()), Some(Kind::Masked(_))))
        .map(|kv| kv.key.as_str())
        .collect()
}

pub fn string(s: &str) -> Value {
    Value::string(s)
}
