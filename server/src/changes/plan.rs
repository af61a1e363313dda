//! The pure part of corrections and rollouts: which keys a baseline restore sets,
//! what a host's keys would be after a change (for pre-flight), how many hosts each
//! wave reaches, and whether a wave's gate holds. No I/O.

use std::collections::{BTreeMap, HashSet};

use driftwatch_proto::v1::{self, KeyValue, Value, value::Kind};

/// Keys to set so the file matches its baseline again.
///
/// `wanted` empty: every baseline key whose value differs from (or is missing in) the
/// file; keys the baseline does not mention are left alone. A secret (masked) value
/// cannot be written back: the server only ever holds its fingerprint.
pub fn baseline_restore(
    current: &[KeyValue],
    baseline: &[KeyValue],
    wanted: &[String],
) -> Result<Vec<KeyValue>, String> {
    let now: BTreeMap<&str, &Value> =
        current.iter().filter_map(|kv| kv.value.as_ref().map(|v| (kv.key.as_str(), v))).collect();
    let base: BTreeMap<&str, &Value> =
        baseline.iter().filter_map(|kv| kv.value.as_ref().map(|v| (kv.key.as_str(), v))).collect();
    for k in wanted {
        if !base.contains_key(k.as_str()) {
            return Err(format!("the baseline has no key '{k}' for this file"));
        }
    }
    let mut out = Vec::new();
    for kv in baseline {
        let Some(want) = &kv.value else { continue };
        if !wanted.is_empty() && !wanted.contains(&kv.key) {
            continue;
        }
        if now.get(kv.key.as_str()).is_some_and(|v| same_value(v, want)) {
            continue;
        }
        if matches!(want.kind, Some(Kind::Masked(_))) {
            return Err(format!(
                "key '{}' holds a secret: the server has only its fingerprint and cannot write it back; \
                 restore an earlier version of the file by content hash instead",
                kv.key
            ));
        }
        out.push(kv.clone());
    }
    Ok(out)
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

/// Refuse operator text that looks secret: the server never keeps a secret in clear,
/// and a rollout is persisted and audited.
pub fn check_no_secrets(set: &BTreeMap<String, String>) -> Result<(), String> {
    for (k, v) in set {
        if let Some(reason) = driftwatch_formats::secret_reason(k, v) {
            return Err(format!(
                "the value for '{k}' looks like a secret ({reason}); driftwatch never holds secrets in clear — \
                 ship secrets with your secret manager, or restore a file version by content hash"
            ));
        }
    }
    Ok(())
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
        let set = baseline_restore(&current, &baseline, &[]).unwrap();
        assert_eq!(set, vec![kv("A", Value::int(10)), kv("C", Value::bool(true))]);
        let only_a = baseline_restore(&current, &baseline, &["A".into()]).unwrap();
        assert_eq!(only_a, vec![kv("A", Value::int(10))]);
        assert!(baseline_restore(&current, &baseline, &["EXTRA".into()]).unwrap_err().contains("no key 'EXTRA'"));
        assert!(baseline_restore(&baseline, &baseline, &[]).unwrap().is_empty());
    }

    #[test]
    fn masked_baseline_values_cannot_be_written_back_unless_equal() {
        let current = vec![kv("DB_PASSWORD", Value::masked("aa", "key name"))];
        let same = vec![kv("DB_PASSWORD", Value::masked("aa", "key name"))];
        assert!(baseline_restore(&current, &same, &[]).unwrap().is_empty());
        let other = vec![kv("DB_PASSWORD", Value::masked("bb", "key name"))];
        let e = baseline_restore(&current, &other, &[]).unwrap_err();
        assert!(e.contains("holds a secret") && e.contains("content hash"), "{e}");
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
        let set: BTreeMap<String, String> = [("DB_PASSWORD".to_string(), "hunter2hunter2".to_string())].into();
        assert!(check_no_secrets(&set).unwrap_err().contains("looks like a secret"));
        let fine: BTreeMap<String, String> = [("POOL".to_string(), "30".to_string())].into();
        assert!(check_no_secrets(&fine).is_ok());
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
