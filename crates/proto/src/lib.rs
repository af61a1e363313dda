//! The driftwatch wire contract (`package driftwatch.v1`), generated from `proto/`.
//!
//! Everything both binaries exchange is defined in the .proto files; this crate
//! only adds small conversions that every side needs.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

pub mod audit_chain;
pub mod codec;
pub mod duration;
mod names;

pub use names::*;

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

/// protobuf `Timestamp` → milliseconds since the Unix epoch.
pub fn timestamp_millis(t: &Timestamp) -> i64 {
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
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
    pub fn masked(fingerprint: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            kind: Some(v1::value::Kind::Masked(v1::MaskedValue {
                fingerprint: fingerprint.into(),
                reason: reason.into(),
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

    /// Human rendering; masked values show `masked:<first 12 hex>` and never anything else.
    pub fn display(&self) -> String {
        use v1::value::Kind;
        match &self.kind {
            None | Some(Kind::NullValue(_)) => "null".to_string(),
            Some(Kind::BoolValue(b)) => b.to_string(),
            Some(Kind::IntValue(i)) => i.to_string(),
            Some(Kind::FloatValue(f)) => f.to_string(),
            Some(Kind::StringValue(s)) => s.clone(),
            Some(Kind::Masked(m)) => {
                format!("masked:{}", &m.fingerprint[..m.fingerprint.len().min(12)])
            }
        }
    }
}
