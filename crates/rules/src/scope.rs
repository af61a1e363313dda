//! What an expression reads during one evaluation: the rule variables, borrowed from the
//! inputs ([`Scope`]), and the value type both evaluators read them as ([`FVal`]).
//!
//! Shared by the fast path (`fast`), CEL's bindings (`eval`) and the compile-time checks
//! (`check`, which records the variables an expression reads as bits over [`VARIABLES`]).

use std::collections::BTreeMap;

use driftwatch_proto::v1::value::Kind;
use driftwatch_proto::v1::{MaskedValue, Value};

use crate::history::HistoryMemo;
use crate::input::{FileMeta, HostInfo};

/// Every variable any rule kind has; `Compiled::uses` is a bit set over this list.
pub(crate) const VARIABLES: [&str; 12] = [
    "value",
    "baseline",
    "previous",
    "key",
    "path",
    "file",
    "meta",
    "host",
    "metric",
    "connected",
    "last_seen",
    "schema_errors",
];

pub(crate) fn var_bit(name: &str) -> u16 {
    VARIABLES.iter().position(|v| *v == name).map(|i| 1 << i).unwrap_or(0)
}

/// A value as the fast path sees it: borrowed from the inputs or from the compiled tree.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FVal<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(&'a str),
    Masked(&'a MaskedValue),
    /// `schema_errors`: only `size()` and `is_number()` are answered here.
    List(&'a [String]),
}

impl<'a> FVal<'a> {
    pub(crate) fn of(v: Option<&'a Value>) -> Self {
        match v.and_then(|v| v.kind.as_ref()) {
            None | Some(Kind::NullValue(_)) => FVal::Null,
            Some(Kind::BoolValue(b)) => FVal::Bool(*b),
            Some(Kind::IntValue(i)) => FVal::Int(*i),
            Some(Kind::FloatValue(f)) => FVal::Double(*f),
            Some(Kind::StringValue(s)) => FVal::Str(s),
            Some(Kind::Masked(m)) => FVal::Masked(m),
        }
    }

    pub(crate) fn of_str(v: Option<&'a str>) -> Self {
        v.map(FVal::Str).unwrap_or(FVal::Null)
    }

    pub(crate) fn opt_double(v: Option<f64>) -> Self {
        v.map(FVal::Double).unwrap_or(FVal::Null)
    }
}

/// Everything a rule's expression may read, borrowed from the inputs.
#[derive(Clone, Copy)]
pub(crate) struct Scope<'a> {
    pub value: FVal<'a>,
    pub baseline: FVal<'a>,
    pub previous: FVal<'a>,
    pub key: Option<&'a str>,
    pub path: &'a str,
    pub metric: &'a str,
    pub connected: bool,
    pub last_seen: i64,
    pub file: Option<&'a BTreeMap<String, Value>>,
    pub meta: Option<&'a FileMeta>,
    pub host: &'a HostInfo,
    /// (now_ms, samples) for the history functions.
    pub history: Option<(i64, &'a [(i64, f64)])>,
    pub schema_errors: Option<&'a [String]>,
    /// The key bound by `file.exists(k, ...)` / `file.all(k, ...)` on the fast path.
    pub iter: FVal<'a>,
    pub memo: Option<&'a HistoryMemo>,
}

impl<'a> Scope<'a> {
    pub(crate) fn new(host: &'a HostInfo) -> Self {
        Scope {
            value: FVal::Null,
            baseline: FVal::Null,
            previous: FVal::Null,
            key: None,
            path: "",
            metric: "",
            connected: false,
            last_seen: 0,
            file: None,
            meta: None,
            host,
            history: None,
            schema_errors: None,
            iter: FVal::Null,
            memo: None,
        }
    }
}
