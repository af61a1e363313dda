//! The driftwatch wire contract (`package driftwatch.v1`), generated from `proto/`.
//!
//! Everything both binaries exchange is defined in the .proto files; this crate
//! only adds small conversions that every side needs.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

pub mod audit_chain;
pub mod bearer;
pub mod codec;
pub mod duration;
pub mod keepalive;
pub mod matcher;
mod names;

pub use names::*;

/// Hex digits of a masked value's fingerprint shown wherever a person or a receiver
/// reads one (queries, diffs, webhooks, masked key segments): one truncation
/// everywhere. 64 bits: collisions between a fleet's secrets are not a concern.
pub const SHORT_FINGERPRINT: usize = 16;

/// The shown prefix of `fingerprint` ([`SHORT_FINGERPRINT`] hex digits).
pub fn short_fingerprint(fingerprint: &str) -> &str {
    &fingerprint[..fingerprint.len().min(SHORT_FINGERPRINT)]
}

impl v1::MaskedValue {
    /// The same secret: the same fingerprint under the same fleet key (a fingerprint
    /// under another key says nothing about equality).
    pub fn same_secret(&self, other: &Self) -> bool {
        self.key_id == other.key_id && self.fingerprint == other.fingerprint
    }
}

pub mod v1 {
    tonic::include_proto!("driftwatch.v1");
}

/// Encoded `FileDescriptorSet` of every driftwatch proto (with imports), for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/driftwatch_descriptor.bin"));

pub use prost_types::Timestamp;

/// `SystemTime` → protobuf `Timestamp`.
pub fn timestamp(t: std::time::SystemTime) -> Timestamp {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

/// Milliseconds since the Unix epoch → protobuf `Timestamp`.
pub fn timestamp_from_millis(ms: i64) -> Timestamp {
    Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

/// Whether `t` is within protobuf's range for a `Timestamp`: 0001-01-01T00:00:00Z to
/// 9999-12-31T23:59:59.999999999Z, nanos below a second. Peers' timestamps outside it
/// are refused.
pub fn timestamp_in_range(t: &Timestamp) -> bool {
    const MIN_SECONDS: i64 = -62_135_596_800;
    const MAX_SECONDS: i64 = 253_402_300_799;
    (MIN_SECONDS..=MAX_SECONDS).contains(&t.seconds) && (0..1_000_000_000).contains(&t.nanos)
}

/// protobuf `Timestamp` → milliseconds since the Unix epoch, saturating: a peer's
/// timestamp far outside protobuf's range (years 1 to 9999) must not overflow.
pub fn timestamp_millis(t: &Timestamp) -> i64 {
    t.seconds.saturating_mul(1000).saturating_add(i64::from(t.nanos) / 1_000_000)
}

/// An error with its causes, for a log line or a message: a transport error hides
/// the useful part (a TLS failure, a refused connection) several sources down, and
/// often repeats its cause in its own text, which is said once.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

/// Now, as milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl v1::Value {
    pub fn null() -> Self {
        Self { kind: Some(v1::value::Kind::NullValue(true)) }
    }
    pub fn bool(b: bool) -> Self {
        Self { kind: Some(v1::value::Kind::BoolValue(b)) }
    }
    pub fn int(i: i64) -> Self {
        Self { kind: Some(v1::value::Kind::IntValue(i)) }
    }
    pub fn float(f: f64) -> Self {
        Self { kind: Some(v1::value::Kind::FloatValue(f)) }
    }
    pub fn string(s: impl Into<String>) -> Self {
        Self { kind: Some(v1::value::Kind::StringValue(s.into())) }
    }
    /// A masked value of no particular key (tests, hand-written values).
    pub fn masked(fingerprint: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::masked_by("", fingerprint, reason)
    }

    /// A masked value whose fingerprint the fleet key `key_id` made.
    pub fn masked_by(key_id: impl Into<String>, fingerprint: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            kind: Some(v1::value::Kind::Masked(v1::MaskedValue {
                fingerprint: fingerprint.into(),
                reason: reason.into(),
                key_id: key_id.into(),
            })),
        }
    }

    /// Short type name as operators read it: null, bool, int, float, string, masked.
    pub fn type_name(&self) -> &'static str {
        use v1::value::Kind;
        match &self.kind {
            None | Some(Kind::NullValue(_)) => "null",
            Some(Kind::BoolValue(_)) => "bool",
            Some(Kind::IntValue(_)) => "int",
            Some(Kind::FloatValue(_)) => "float",
            Some(Kind::StringValue(_)) => "string",
            Some(Kind::Masked(_)) => "masked",
        }
    }

    /// Human rendering; masked values show `masked:<short fingerprint>` and never anything else.
    pub fn display(&self) -> String {
        use v1::value::Kind;
        match &self.kind {
            None | Some(Kind::NullValue(_)) => "null".to_string(),
            Some(Kind::BoolValue(b)) => b.to_string(),
            Some(Kind::IntValue(i)) => i.to_string(),
            Some(Kind::FloatValue(f)) => f.to_string(),
            Some(Kind::StringValue(s)) => s.clone(),
            Some(Kind::Masked(m)) => format!("masked:{}", short_fingerprint(&m.fingerprint)),
        }
    }
}

#[cfg(test)]
mod masked_tests {
    use super::*;

    /// Found by fuzzing (`silence_matchers`): a timestamp far outside protobuf's range
    /// overflowed the conversion (a panic in debug builds, garbage in release).
    #[test]
    fn extreme_timestamps_saturate_and_are_out_of_range() {
        let ts = |seconds, nanos| Timestamp { seconds, nanos };
        assert_eq!(timestamp_millis(&ts(i64::MAX, 999_999_999)), i64::MAX);
        assert_eq!(timestamp_millis(&ts(i64::MIN, -999_999_999)), i64::MIN);
        assert_eq!(timestamp_millis(&ts(1, 500_000_000)), 1_500);
        assert!(timestamp_in_range(&ts(0, 0)) && timestamp_in_range(&ts(253_402_300_799, 999_999_999)));
        assert!(!timestamp_in_range(&ts(253_402_300_800, 0)) && !timestamp_in_range(&ts(0, -1)));
        assert!(!timestamp_in_range(&ts(i64::MIN, 0)) && !timestamp_in_range(&ts(0, 1_000_000_000)));
    }

    #[test]
    fn one_truncation_and_equality_only_under_the_same_key() {
        let fp = "ab".repeat(32);
        assert_eq!(short_fingerprint(&fp).len(), SHORT_FINGERPRINT);
        assert_eq!(short_fingerprint("abc"), "abc");
        assert_eq!(v1::Value::masked_by("k1", fp.clone(), "key name").display(), format!("masked:{}", &fp[..16]));
        let m =
            |key: &str, fp: &str| v1::MaskedValue { fingerprint: fp.into(), reason: "x".into(), key_id: key.into() };
        assert!(m("k1", &fp).same_secret(&m("k1", &fp)));
        assert!(!m("k1", &fp).same_secret(&m("k2", &fp)), "the same digits under another key are not the same secret");
        assert!(!m("k1", &fp).same_secret(&m("k1", "cd")));
    }
}
