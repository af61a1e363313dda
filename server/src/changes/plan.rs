//! The pure part of corrections and rollouts: which keys a baseline restore sets,
//! what a host's keys would be after a change (for pre-flight), how many hosts each
//! wave reaches, and whether a wave's gate holds. No I/O.

use std::collections::{BTreeMap, HashSet};

use driftwatch_proto::v1::{self, KeyValue, Value, value::Kind};

/// What a baseline restore sets, and the secret keys it left alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Restore {
    pub set: Vec<KeyValue>,
    /// Secret keys of the baseline, neither compared nor set (a restore of every key).
    pub secrets_skipped: Vec<String>,
}

/// Keys to set so the file matches its baseline again.
///
/// `wanted` empty: every baseline key whose value differs from (or is missing in) the
/// file; keys the baseline does not mention are left alone. A secret (masked on the host
/// or in the baseline, or a baseline value that looks secret) is never compared, let alone
/// written back: the server only holds its fingerprint, and an answer that depended on a
/// comparison would tell whoever put a guess in the baseline whether it was right. Named
/// in `wanted`, such a key refuses the restore (the same answer whatever the values);
/// otherwise it is skipped and listed.
pub fn baseline_restore(current: &[KeyValue], baseline: &[KeyValue], wanted: &[String]) -> Result<Restore, String> {
    let now: BTreeMap<&str, &Value> =
        current.iter().filter_map(|kv| kv.value.as_ref().map(|v| (kv.key.as_str(), v))).collect();
    let base: BTreeMap<&str, &Value> =
        baseline.iter().filter_map(|kv| kv.value.as_ref().map(|v| (kv.key.as_str(), v))).collect();
    for k in wanted {
        if !base.contains_key(k.as_str()) {
            return Err(format!("the baseline has no key '{k}' for this file"));
        }
    }
    let mut out = Restore::default();
    for kv in baseline {
        let Some(want) = &kv.value else { continue };
        if !wanted.is_empty() && !wanted.contains(&kv.key) {
            continue;
        }
        let place = if now.get(kv.key.as_str()).is_some_and(|v| is_masked(v)) {
            Some("masked on the host")
        } else if is_masked(want) {
            Some("masked in the baseline")
        } else if value_text(want).is_some_and(|t| driftwatch_formats::secret_reason(&kv.key, &t).is_some()) {
            Some("in the baseline in clear")
        } else {
            None
        };
        if let Some(place) = place {
            if wanted.is_empty() {
                out.secrets_skipped.push(kv.key.clone());
                continue;
            }
            return Err(format!(
                "key '{}' is a secret ({place}): a baseline restore never compares or writes a secret \
                 by key; restore an earlier version of the file by content hash instead",
                kv.key
            ));
        }
        if now.get(kv.key.as_str()).is_some_and(|v| same_value(v, want)) {
            continue;
        }
        out.set.push(kv.clone());
    }
    Ok(out)
}

fn is_masked(v: &Value) -> bool {
    matches!(v.kind, Some(Kind::Masked(_)))
}

/// A typed value as the text an operator would have given: None for a masked one (a
/// fingerprint is not a value), "" for null and booleans (never secret by themselves).
pub fn value_text(v: &Value) -> Option<String> {
    match &v.kind {
        Some(Kind::Masked(_)) => None,
        Some(Kind::StringValue(s)) => Some(s.clone()),
        Some(Kind::IntValue(i)) => Some(i.to_string()),
        Some(Kind::FloatValue(f)) => Some(f.to_string()),
        Some(Kind::NullValue(_) | Kind::BoolValue(_)) | None => Some(String::new()),
    }
}

/// The keys whose values are masked somewhere that matters for a change (a host's file,
/// a baseline), with the first place each was seen masked.
#[derive(Debug, Clone, Default)]
pub struct MaskedKeys(BTreeMap<String, String>);

impl MaskedKeys {
    /// Note every masked key of `keys` as masked `place` ("on host 'web-1'").
    pub fn add(&mut self, place: &str, keys: &[KeyValue]) {
        for kv in keys {
            if kv.value.as_ref().is_some_and(is_masked) && !self.0.contains_key(&kv.key) {
                self.0.insert(kv.key.clone(), place.to_string());
            }
        }
    }

    pub fn place(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

/// Refuse a value given in clear for a secret: for a key masked anywhere in `masked`
/// (checked first, so the answer never depends on the value), or a key or value that
/// looks secret. `text` None: the value is itself a fingerprint (copied from a host), not
/// clear text.
pub fn check_clear_value(key: &str, text: Option<&str>, masked: &MaskedKeys) -> Result<(), String> {
    let Some(text) = text else { return Ok(()) };
    if let Some(place) = masked.place(key) {
        return Err(format!(
            "key '{key}' is a secret (masked {place}): driftwatch never takes a secret's value in clear — \
             ship secrets with your secret manager, or restore a file version by content hash"
        ));
    }
    if let Some(reason) = driftwatch_formats::secret_reason(key, text) {
        return Err(format!(
            "the value for '{key}' looks like a secret ({reason}); driftwatch never holds secrets in clear — \
             ship secrets with your secret manager, or restore a file version by content hash"
        ));
    }
    Ok(())
}

/// Equal as configuration: masked values by fingerprint, numbers across int/float.
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (&a.kind, &b.kind) {
        (Some(Kind::Masked(x)), Some(Kind::Masked(y))) => x.same_secret(y),
        (Some(Kind::IntValue(i)), Some(Kind::FloatValue(f))) | (Some(Kind::FloatValue(f)), Some(Kind::IntValue(i))) => {
            (*i as f64) == *f
        }
        _ => a == b,
    }
}

/// Refuse operator text for a secret (see [`check_clear_value`]): the server never keeps
/// a secret in clear, and a rollout is persisted and audited.
pub fn check_no_secrets(set: &BTreeMap<String, String>, masked: &MaskedKeys) -> Result<(), String> {
    set.iter().try_for_each(|(k, v)| check_clear_value(k, Some(v), masked))
}

/// The file's keys as they would read after setting `set` (operator text, typed as the
/// agent types it) and removing `remove`. Pre-flight evaluates the rules on this.
pub fn candidate_keys(current: &[KeyValue], set: &BTreeMap<String, String>, remove: &[String]) -> Vec<KeyValue> {
    let mut out: Vec<KeyValue> = Vec::with_capacity(current.len() + set.len());
    let mut seen = HashSet::new();
    for kv in current {
        if remove.contains(&kv.key) {
            continue;
        }
        match set.get(&kv.key) {
            Some(text) => {
                seen.insert(kv.key.as_str());
                out.push(KeyValue {
                    key: kv.key.clone(),
                    value: Some(driftwatch_formats::text_value(kv.value.as_ref(), text)),
                });
            }
            None => out.push(kv.clone()),
        }
    }
    for (k, text) in set {
        if !seen.contains(k.as_str()) && !remove.contains(k) {
            out.push(KeyValue { key: k.clone(), value: Some(driftwatch_formats::text_value(None, text)) });
        }
    }
    out
}

/// Cumulative host counts per wave for `total` hosts. Each size is a count (`"1"`,
/// `"5"`) or a share (`"10%"`) of all target hosts, cumulative; a share rounds up so
/// a wave is never empty for lack of rounding. Sizes must not shrink. Waves that add
/// nobody are dropped, and the rollout always ends with every host.
pub fn wave_counts(sizes: &[String], total: usize) -> Result<Vec<(String, usize)>, String> {
    let defaults = ["1", "10%", "50%", "100%"].map(String::from);
    let sizes = if sizes.is_empty() { &defaults[..] } else { sizes };
    let mut out: Vec<(String, usize)> = Vec::new();
    let mut last = 0usize;
    let mut last_asked = 0usize;
    for s in sizes {
        let t = s.trim();
        let n = if let Some(p) = t.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| format!("wave size '{s}': not a percentage"))?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(format!("wave size '{s}': a percentage must be in (0, 100]"));
            }
            ((p / 100.0) * total as f64).ceil() as usize
        } else {
            let n: usize = t.parse().map_err(|_| format!("wave size '{s}': expected a host count or a percentage"))?;
            if n == 0 {
                return Err(format!("wave size '{s}': a wave needs at least one host"));
            }
            n
        };
        // Compared after clamping: "50" then "100%" on 20 hosts is 20 then 20.
        let n = n.min(total);
        if n < last_asked {
            return Err(format!("wave sizes are cumulative and must not shrink ('{s}' after a larger wave)"));
        }
        last_asked = n;
        if n > last {
            out.push((t.to_string(), n));
            last = n;
        }
    }
    if last < total {
        out.push(("100%".into(), total));
    }
    Ok(out)
}

/// Alerts that fail a wave's gate: at or above `min` severity, on one of the wave's
/// hosts, fired at or after `since_ms` (a new episode, not one that was already firing).
pub fn gate_findings<'a>(
    alerts: impl IntoIterator<Item = &'a v1::Alert>,
    hosts: &HashSet<&str>,
    since_ms: i64,
    min: v1::Severity,
) -> Vec<v1::GateFinding> {
    let mut out: Vec<v1::GateFinding> = alerts
        .into_iter()
        .filter(|a| hosts.contains(a.host_id.as_str()) && a.severity >= min as i32)
        .filter(|a| a.fired_at.as_ref().is_some_and(|t| driftwatch_proto::timestamp_millis(t) >= since_ms))
        .map(|a| v1::GateFinding {
            host_id: a.host_id.clone(),
            rule: a.rule.clone(),
            severity: a.severity,
            key: if a.key.is_empty() { a.metric.clone() } else { a.key.clone() },
            summary: a.annotations.get("summary").cloned().unwrap_or_default(),
        })
        .collect();
    out.sort_by(|a, b| (&a.host_id, &a.rule, &a.key).cmp(&(&b.host_id, &b.rule, &b.key)));
    out
}

/// One line per finding, for refusals and stop reasons.
pub fn describe_findings(findings: &[v1::GateFinding]) -> String {
    findings
        .iter()
        .map(|f| {
            let sev = driftwatch_proto::severity_name(f.severity);
            let what = if f.key.is_empty() { String::new() } else { format!(" on {}", f.key) };
            let summary = if f.summary.is_empty() { String::new() } else { format!(": {}", f.summary) };
            format!("{}: rule '{}' ({sev}){what}{summary}", f.host_id, f.rule)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: Value) -> KeyValue {
        KeyValue { key: k.into(), value: Some(v) }
    }

    #[test]
    fn restore_sets_only_differing_baseline_keys() {
        let current = vec![kv("A", Value::int(30)), kv("B", Value::string("x")), kv("EXTRA", Value::int(1))];
        let baseline = vec![kv("A", Value::int(10)), kv("B", Value::string("x")), kv("C", Value::bool(true))];
        let set = baseline_restore(&current, &baseline, &[]).unwrap().set;
        assert_eq!(set, vec![kv("A", Value::int(10)), kv("C", Value::bool(true))]);
        let only_a = baseline_restore(&current, &baseline, &["A".into()]).unwrap().set;
        assert_eq!(only_a, vec![kv("A", Value::int(10))]);
        assert!(baseline_restore(&current, &baseline, &["EXTRA".into()]).unwrap_err().contains("no key 'EXTRA'"));
        assert_eq!(baseline_restore(&baseline, &baseline, &[]).unwrap(), Restore::default());
    }

    #[test]
    fn a_named_secret_is_refused_before_any_comparison() {
        let secret = || kv("DATABASE_URL", Value::masked("aa", "url with credentials"));
        let current = vec![secret(), kv("POOL", Value::int(5))];
        // The same fingerprint, another one, or a guess in clear in the baseline: one answer.
        let baselines = [
            vec![secret()],
            vec![kv("DATABASE_URL", Value::masked("bb", "url with credentials"))],
            vec![kv("DATABASE_URL", Value::string("postgres://u:hunter2@db/x"))],
            vec![kv("DATABASE_URL", Value::string("postgres://u:wrong@db/x"))],
            vec![kv("DATABASE_URL", Value::string("plain"))],
        ];
        let answers: Vec<String> =
            baselines.iter().map(|b| baseline_restore(&current, b, &["DATABASE_URL".into()]).unwrap_err()).collect();
        assert!(answers.iter().all(|a| a == &answers[0]), "{answers:#?}");
        assert!(answers[0].contains("'DATABASE_URL' is a secret (masked on the host)"), "{}", answers[0]);
        assert!(answers[0].contains("content hash"), "{}", answers[0]);
        // Masked only in the baseline, or a clear baseline value that looks secret.
        let plain_now = vec![kv("DB_PASSWORD", Value::string("${VAULT_DB}"))];
        for b in [
            vec![kv("DB_PASSWORD", Value::masked("aa", "key name"))],
            vec![kv("DB_PASSWORD", Value::string("hunter2"))],
        ] {
            let e = baseline_restore(&plain_now, &b, &["DB_PASSWORD".into()]).unwrap_err();
            assert!(e.contains("'DB_PASSWORD' is a secret") && e.contains("in the baseline"), "{e}");
        }
    }

    #[test]
    fn a_restore_of_every_key_skips_secrets_without_comparing_them() {
        let current = vec![kv("DB_PASSWORD", Value::masked("aa", "key name")), kv("POOL", Value::int(5))];
        let differing = vec![kv("DB_PASSWORD", Value::masked("bb", "key name")), kv("POOL", Value::int(9))];
        let r = baseline_restore(&current, &differing, &[]).unwrap();
        assert_eq!(r.set, vec![kv("POOL", Value::int(9))]);
        assert_eq!(r.secrets_skipped, vec!["DB_PASSWORD".to_string()]);
        let same = vec![kv("DB_PASSWORD", Value::masked("aa", "key name")), kv("POOL", Value::int(5))];
        assert_eq!(baseline_restore(&current, &same, &[]).unwrap(), r_with(&[], &["DB_PASSWORD"]));
        assert_eq!(baseline_restore(&current, &differing[..1], &[]).unwrap(), r_with(&[], &["DB_PASSWORD"]));
    }

    fn r_with(set: &[KeyValue], skipped: &[&str]) -> Restore {
        Restore { set: set.to_vec(), secrets_skipped: skipped.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn numbers_compare_across_int_and_float() {
        assert!(same_value(&Value::int(2), &Value::float(2.0)));
        assert!(!same_value(&Value::int(2), &Value::string("2")));
    }

    #[test]
    fn candidate_keeps_types_and_order() {
        let current = vec![kv("POOL", Value::int(20)), kv("NAME", Value::string("web")), kv("GONE", Value::int(1))];
        let set: BTreeMap<String, String> =
            [("POOL".to_string(), "30".to_string()), ("NEW".to_string(), "0.5".to_string())].into();
        let c = candidate_keys(&current, &set, &["GONE".into()]);
        assert_eq!(c, vec![kv("POOL", Value::int(30)), kv("NAME", Value::string("web")), kv("NEW", Value::float(0.5))]);
    }

    #[test]
    fn secret_text_is_refused() {
        let none = MaskedKeys::default();
        let set: BTreeMap<String, String> = [("DB_PASSWORD".to_string(), "hunter2hunter2".to_string())].into();
        assert!(check_no_secrets(&set, &none).unwrap_err().contains("looks like a secret"));
        let fine: BTreeMap<String, String> = [("POOL".to_string(), "30".to_string())].into();
        assert!(check_no_secrets(&fine, &none).is_ok());
    }

    #[test]
    fn a_key_masked_on_a_host_or_in_a_baseline_takes_no_clear_value() {
        let mut masked = MaskedKeys::default();
        masked.add("on host 'web-1'", &[kv("DATABASE_URL", Value::masked("aa", "url")), kv("POOL", Value::int(5))]);
        masked.add(
            "in baseline 'tuned'",
            &[kv("DATABASE_URL", Value::masked("bb", "url")), kv("CONN", Value::masked("cc", "url"))],
        );
        // Whatever the value, right or wrong, secret-looking or not: one answer naming the key.
        let answers: Vec<String> = ["postgres://u:hunter2@db/x", "postgres://u:wrong@db/x", "plain", ""]
            .iter()
            .map(|v| check_clear_value("DATABASE_URL", Some(v), &masked).unwrap_err())
            .collect();
        assert!(answers.iter().all(|a| a == &answers[0]), "{answers:#?}");
        assert!(answers[0].contains("'DATABASE_URL' is a secret (masked on host 'web-1')"), "{}", answers[0]);
        assert!(check_clear_value("CONN", Some("x"), &masked).unwrap_err().contains("in baseline 'tuned'"));
        // A fingerprint copied from a host is not clear text; other keys are judged by the rules.
        assert!(check_clear_value("DATABASE_URL", None, &masked).is_ok());
        assert!(check_clear_value("POOL", Some("30"), &masked).is_ok());
        assert!(check_clear_value("OTHER_URL", Some("postgres://u:pw@db/x"), &masked).unwrap_err().contains("url"));
        assert!(check_clear_value("API_TOKEN", Some("abc"), &masked).unwrap_err().contains("key name"));
    }

    #[test]
    fn typed_values_read_as_text() {
        assert_eq!(value_text(&Value::string("x")).as_deref(), Some("x"));
        assert_eq!(value_text(&Value::int(1234)).as_deref(), Some("1234"));
        assert_eq!(value_text(&Value::bool(true)).as_deref(), Some(""));
        assert_eq!(value_text(&Value::masked("aa", "key name")), None);
    }

    #[test]
    fn waves_are_cumulative_and_end_with_everyone() {
        let w = |sizes: &[&str], n| {
            wave_counts(&sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>(), n)
                .map(|v| v.into_iter().map(|(_, c)| c).collect::<Vec<_>>())
        };
        assert_eq!(w(&[], 20).unwrap(), vec![1, 2, 10, 20]);
        assert_eq!(w(&[], 1000).unwrap(), vec![1, 100, 500, 1000]);
        assert_eq!(w(&[], 1).unwrap(), vec![1]);
        assert_eq!(w(&[], 3).unwrap(), vec![1, 2, 3]);
        assert_eq!(w(&["1"], 5).unwrap(), vec![1, 5], "an implicit last wave reaches everyone");
        assert_eq!(w(&["50", "100%"], 20).unwrap(), vec![20]);
        assert!(w(&["50%", "10%"], 20).unwrap_err().contains("must not shrink"));
        assert!(w(&["0"], 20).is_err());
        assert!(w(&["abc"], 20).is_err());
        assert!(w(&["150%"], 20).is_err());
        assert_eq!(w(&[], 0).unwrap(), Vec::<usize>::new());
    }

    #[test]
    fn gate_counts_new_episodes_on_wave_hosts_at_or_above_severity() {
        let alert = |host: &str, sev: v1::Severity, fired: Option<i64>| v1::Alert {
            host_id: host.into(),
            rule: "pool_above_20".into(),
            severity: sev as i32,
            key: "POOL".into(),
            fired_at: fired.map(driftwatch_proto::timestamp_from_millis),
            ..Default::default()
        };
        let alerts = [
            alert("a", v1::Severity::High, Some(2_000)),
            alert("a", v1::Severity::Low, Some(2_000)),
            alert("b", v1::Severity::Critical, Some(2_000)),
            alert("a", v1::Severity::High, Some(500)),
            alert("a", v1::Severity::High, None),
        ];
        let hosts: HashSet<&str> = ["a"].into();
        let f = gate_findings(&alerts, &hosts, 1_000, v1::Severity::Medium);
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].host_id.as_str(), f[0].rule.as_str()), ("a", "pool_above_20"));
        assert!(describe_findings(&f).contains("a: rule 'pool_above_20' (high) on POOL"));
    }
}
