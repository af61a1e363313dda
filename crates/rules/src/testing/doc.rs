//! The test file as written: the YAML document `driftwatch rules test` reads, with its
//! durations, modes, formats and series parsed while deserializing (so an error carries
//! its position). Checking it against the rules is `prepare`'s job.

use std::collections::BTreeMap;

use driftwatch_formats::{Format, parse_format_name};
use driftwatch_proto::duration::parse_ms as parse_duration_ms;
use serde::{Deserialize, Deserializer, de};

use crate::alert::Severity;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TestFileDoc {
    pub(super) rule_files: Vec<String>,
    #[serde(default)]
    pub(super) evaluation_interval: Option<Dur>,
    #[serde(default)]
    pub(super) fleet_key: Option<String>,
    pub(super) tests: Vec<CaseDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CaseDoc {
    pub(super) name: String,
    #[serde(default)]
    pub(super) evaluation_interval: Option<Dur>,
    pub(super) hosts: Vec<HostDoc>,
    #[serde(default)]
    pub(super) baselines: Vec<BaselineDoc>,
    #[serde(default)]
    pub(super) files: Vec<FileDoc>,
    #[serde(default)]
    pub(super) resources: Vec<ResourceDoc>,
    #[serde(default)]
    pub(super) agents: Vec<AgentDoc>,
    pub(super) expect: Vec<ExpectDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HostDoc {
    pub(super) id: String,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BaselineDoc {
    #[serde(default)]
    pub(super) host: Option<String>,
    pub(super) path: String,
    #[serde(default)]
    pub(super) content: Option<String>,
    #[serde(default)]
    pub(super) content_file: Option<String>,
    #[serde(default)]
    pub(super) keys: Option<serde_yaml_ng::Mapping>,
    #[serde(default)]
    pub(super) format: Option<FormatName>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileDoc {
    pub(super) at: Dur,
    #[serde(default)]
    pub(super) host: Option<String>,
    pub(super) path: String,
    #[serde(default)]
    pub(super) content: Option<String>,
    #[serde(default)]
    pub(super) content_file: Option<String>,
    #[serde(default)]
    pub(super) keys: Option<serde_yaml_ng::Mapping>,
    #[serde(default)]
    pub(super) set: Option<serde_yaml_ng::Mapping>,
    #[serde(default)]
    pub(super) unset: Vec<String>,
    #[serde(default)]
    pub(super) missing: bool,
    #[serde(default)]
    pub(super) mode: Option<Mode>,
    #[serde(default)]
    pub(super) dir_mode: Option<Mode>,
    #[serde(default)]
    pub(super) uid: Option<u32>,
    #[serde(default)]
    pub(super) gid: Option<u32>,
    #[serde(default)]
    pub(super) format: Option<FormatName>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ResourceDoc {
    #[serde(default)]
    pub(super) host: Option<String>,
    #[serde(default)]
    pub(super) interval: Option<Dur>,
    #[serde(default)]
    pub(super) start: Option<Dur>,
    pub(super) series: BTreeMap<String, Series>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AgentDoc {
    #[serde(default)]
    pub(super) host: Option<String>,
    pub(super) offline_since: Dur,
    #[serde(default)]
    pub(super) online_at: Option<Dur>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExpectDoc {
    pub(super) at: Dur,
    #[serde(default)]
    pub(super) firing: Vec<ExpAlertDoc>,
    #[serde(default)]
    pub(super) pending: Vec<ExpAlertDoc>,
    #[serde(default)]
    pub(super) resolved: Vec<ExpAlertDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExpAlertDoc {
    pub(super) rule: String,
    #[serde(default)]
    pub(super) group: Option<String>,
    #[serde(default)]
    pub(super) host: Option<String>,
    #[serde(default)]
    pub(super) file: Option<String>,
    #[serde(default)]
    pub(super) key: Option<String>,
    #[serde(default)]
    pub(super) severity: Option<Severity>,
    #[serde(default)]
    pub(super) annotations: BTreeMap<String, String>,
}

/// A duration (`5m`), parsed while deserializing so the error carries a position.
pub(super) struct Dur(pub(super) i64);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = StrOrNum::deserialize(d)?.0;
        parse_duration_ms(&s).map(Dur).map_err(de::Error::custom)
    }
}

/// Permission bits as octal text (`"0600"`); a YAML number is read as octal digits too.
pub(super) struct Mode(pub(super) u32);

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = StrOrNum::deserialize(d)?.0;
        let digits = s.trim().trim_start_matches("0o");
        match u32::from_str_radix(digits, 8) {
            Ok(m) if m <= 0o7777 => Ok(Mode(m)),
            _ => Err(de::Error::custom(format!("invalid mode {s:?}: octal permission bits, e.g. \"0600\""))),
        }
    }
}

pub(super) struct FormatName(pub(super) Format);

impl<'de> Deserialize<'de> for FormatName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_format_name(&s).map(FormatName).ok_or_else(|| {
            de::Error::custom(format!(
                "unknown format {s:?} (env, ini, yaml, json, toml, keyword, sysctl, nginx, systemd, text)"
            ))
        })
    }
}

/// A resource series in promtool's expanding notation, one slot per interval.
pub(super) struct Series(pub(super) Vec<Option<f64>>);

impl<'de> Deserialize<'de> for Series {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = StrOrNum::deserialize(d)?.0;
        parse_series(&s).map(Series).map_err(de::Error::custom)
    }
}

/// Text that YAML may have typed as a number (`at: 0`, `mode: 600`, `series: 4e9`).
struct StrOrNum(String);

impl<'de> Deserialize<'de> for StrOrNum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = StrOrNum;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StrOrNum, E> {
                Ok(StrOrNum(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StrOrNum, E> {
                Ok(StrOrNum(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StrOrNum, E> {
                Ok(StrOrNum(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<StrOrNum, E> {
                Ok(StrOrNum(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// promtool's expanding notation: `a+bxn` is a, a+b, …, a+n·b (n+1 values), `a-bxn`
/// likewise, `axn` is a repeated n+1 times, `_` one gap, `_xn` n gaps.
pub fn parse_series(s: &str) -> Result<Vec<Option<f64>>, String> {
    let bad =
        |t: &str, why: &str| format!("invalid series item {t:?}: {why} (e.g. \"1 2 3\", \"4e9+1e8x60\", \"_x3\")");
    let mut out = Vec::new();
    for tok in s.split_whitespace() {
        let (head, count) = match tok.rsplit_once('x') {
            Some((h, n)) => (h, Some(n.parse::<usize>().map_err(|_| bad(tok, "repeat count is not a whole number"))?)),
            None => (tok, None),
        };
        if head == "_" {
            out.extend(std::iter::repeat_n(None, count.unwrap_or(1)));
            continue;
        }
        // The operator is a '+'/'-' after the first character that is not an exponent sign.
        let op = head.char_indices().skip(1).find(|&(i, c)| {
            (c == '+' || c == '-') && !matches!(head.as_bytes()[i - 1], b'e' | b'E') && count.is_some()
        });
        let num = |t: &str| t.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| bad(tok, "not a number"));
        let (start, inc) = match op {
            Some((i, c)) => {
                let inc = num(&head[i + 1..])?;
                (num(&head[..i])?, if c == '-' { -inc } else { inc })
            }
            None => (num(head)?, 0.0),
        };
        match count {
            None => out.push(Some(start)),
            Some(n) => out.extend((0..=n).map(|i| Some(start + inc * i as f64))),
        }
    }
    if out.is_empty() {
        return Err("empty series".to_string());
    }
    Ok(out)
}
