//! The driftwatch wire contract (`package driftwatch.v1`), generated from `proto/`.
//!
//! Everything both binaries exchange is defined in the .proto files; this crate
//! only adds small conversions that every side needs.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

pub mod codec;
pub mod duration;

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

/// A `Format` value's short name, as rules (`meta.format`) and the CLI show it: env, ini,
/// yaml, json, toml, text (unknown values are tracked as text).
pub fn format_name(f: i32) -> &'static str {
    match v1::Format::try_from(f) {
        Ok(v1::Format::Env) => "env",
        Ok(v1::Format::Ini) => "ini",
        Ok(v1::Format::Yaml) => "yaml",
        Ok(v1::Format::Json) => "json",
        Ok(v1::Format::Toml) => "toml",
        _ => "text",
    }
}

/// A `Severity` value as operators write it: info, low, medium, high, critical.
pub fn severity_name(s: i32) -> &'static str {
    match v1::Severity::try_from(s) {
        Ok(v1::Severity::Info) => "info",
        Ok(v1::Severity::Low) => "low",
        Ok(v1::Severity::Medium) => "medium",
        Ok(v1::Severity::High) => "high",
        Ok(v1::Severity::Critical) => "critical",
        _ => "unspecified",
    }
}

/// An `AlertState` value: pending, firing, resolved (anything else: inactive).
pub fn alert_state_name(s: i32) -> &'static str {
    match v1::AlertState::try_from(s) {
        Ok(v1::AlertState::Pending) => "pending",
        Ok(v1::AlertState::Firing) => "firing",
        Ok(v1::AlertState::Resolved) => "resolved",
        _ => "inactive",
    }
}

/// An `AlertEventKind` value: pending, fired, resolved, cleared, acknowledged,
/// silenced, unsilenced.
pub fn alert_event_kind_name(k: v1::AlertEventKind) -> &'static str {
    match k {
        v1::AlertEventKind::Pending => "pending",
        v1::AlertEventKind::Fired => "fired",
        v1::AlertEventKind::Resolved => "resolved",
        v1::AlertEventKind::Cleared => "cleared",
        v1::AlertEventKind::Acknowledged => "acknowledged",
        v1::AlertEventKind::Silenced => "silenced",
        v1::AlertEventKind::Unsilenced => "unsilenced",
        v1::AlertEventKind::Unspecified => "unspecified",
    }
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
