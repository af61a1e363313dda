//! Resource samples as named metrics: the one mapping from a [`ResourceSample`] to the
//! metric names rules use (`target.resource`), for rule history and downsampling alike,
//! and the names a rule may use.

use driftwatch_proto::v1::ResourceSample;

/// Resource metrics a rule may name (besides `process_group.<name>.{count,rss_bytes,cpu_percent}`
/// and `disk.<mount>.used_percent`).
pub const RESOURCE_METRICS: &[&str] = &[
    "cpu_percent",
    "cpu_cores_used",
    "load_1",
    "load_5",
    "load_15",
    "memory_used_bytes",
    "memory_total_bytes",
    "swap_used_bytes",
    "disk_used_percent",
];

/// Whether a rule (or a `rules test` series) may name metric `m`.
pub(crate) fn valid_metric(m: &str) -> bool {
    if RESOURCE_METRICS.contains(&m) {
        return true;
    }
    if let Some(rest) = m.strip_prefix("process_group.")
        && let Some((name, field)) = rest.rsplit_once('.')
    {
        return !name.is_empty() && matches!(field, "count" | "rss_bytes" | "cpu_percent");
    }
    if let Some(rest) = m.strip_prefix("disk.")
        && let Some(mount) = rest.strip_suffix(".used_percent")
    {
        return !mount.is_empty();
    }
    false
}

/// Call `f` with every metric of `sample` a rule can name, and its value:
/// [`RESOURCE_METRICS`] in that order (`disk_used_percent` is the
/// fullest disk's, left out when the sample has no disk), then
/// `disk.<mount>.used_percent` per disk, then
/// `process_group.<name>.{count,rss_bytes,cpu_percent}` per group.
///
/// A disk's used percent is `used_bytes / total_bytes × 100`; a disk of size 0 has none.
/// Names of the fixed metrics are static; the others are written into one reused buffer, so
/// a sample costs at most one allocation.
pub fn for_each_resource_metric(sample: &ResourceSample, mut f: impl FnMut(&str, f64)) {
    let disks = || {
        sample
            .disks
            .iter()
            .filter(|d| d.total_bytes > 0)
            .map(|d| (d, d.used_bytes as f64 / d.total_bytes as f64 * 100.0))
    };
    f("cpu_percent", sample.cpu_percent);
    f("cpu_cores_used", sample.cpu_cores_used);
    f("load_1", sample.load_1);
    f("load_5", sample.load_5);
    f("load_15", sample.load_15);
    f("memory_used_bytes", sample.memory_used_bytes as f64);
    f("memory_total_bytes", sample.memory_total_bytes as f64);
    f("swap_used_bytes", sample.swap_used_bytes as f64);
    if let Some(max) = disks().map(|(_, p)| p).reduce(f64::max) {
        f("disk_used_percent", max);
    }
    let mut name = String::new();
    let mut named = |parts: [&str; 3], v: f64| {
        name.clear();
        parts.iter().for_each(|p| name.push_str(p));
        f(&name, v);
    };
    for (d, percent) in disks() {
        named(["disk.", &d.mount_point, ".used_percent"], percent);
    }
    for g in &sample.process_groups {
        named(["process_group.", &g.name, ".count"], f64::from(g.count));
        named(["process_group.", &g.name, ".rss_bytes"], g.rss_bytes as f64);
        named(["process_group.", &g.name, ".cpu_percent"], g.cpu_percent);
    }
}

/// Every metric of `sample` a rule can name, with its value (see
/// [`for_each_resource_metric`] for the order and the definitions).
pub fn resource_metrics(sample: &ResourceSample) -> Vec<(String, f64)> {
    let mut out = Vec::with_capacity(9 + sample.disks.len() + 3 * sample.process_groups.len());
    for_each_resource_metric(sample, |name, v| out.push((name.to_string(), v)));
    out
}

#[cfg(test)]
mod tests {
    use driftwatch_proto::v1::{DiskUsage, ProcessGroupUsage, ResourceSample};

    use super::*;

    fn sample() -> ResourceSample {
        ResourceSample {
            cpu_percent: 42.5,
            cpu_cores_used: 1.7,
            cpu_count: 4,
            load_1: 1.5,
            load_5: 1.25,
            load_15: 1.0,
            memory_total_bytes: 8 << 30,
            memory_used_bytes: 6 << 30,
            swap_total_bytes: 1 << 30,
            swap_used_bytes: 1 << 20,
            disks: vec![
                DiskUsage {
                    mount_point: "/".into(),
                    file_system: "ext4".into(),
                    total_bytes: 1000,
                    available_bytes: 250,
                    used_bytes: 750,
                },
                DiskUsage {
                    mount_point: "/var/lib/data".into(),
                    file_system: "xfs".into(),
                    total_bytes: 2000,
                    available_bytes: 200,
                    used_bytes: 1800,
                },
                DiskUsage { mount_point: "/empty".into(), total_bytes: 0, ..Default::default() },
            ],
            process_groups: vec![ProcessGroupUsage {
                name: "web2img".into(),
                pattern: "web2img*".into(),
                count: 3,
                rss_bytes: 512 << 20,
                cpu_percent: 130.0,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn every_metric_with_its_value() {
        let m = resource_metrics(&sample());
        let names: Vec<&str> = m.iter().map(|(n, _)| n.as_str()).collect();
        let mut want: Vec<&str> = RESOURCE_METRICS.to_vec();
        want.extend([
            "disk./.used_percent",
            "disk./var/lib/data.used_percent",
            "process_group.web2img.count",
            "process_group.web2img.rss_bytes",
            "process_group.web2img.cpu_percent",
        ]);
        assert_eq!(names, want);
        let get = |n: &str| m.iter().find(|(k, _)| k == n).map(|(_, v)| *v).unwrap();
        assert_eq!(get("cpu_percent"), 42.5);
        assert_eq!(get("cpu_cores_used"), 1.7);
        assert_eq!((get("load_1"), get("load_5"), get("load_15")), (1.5, 1.25, 1.0));
        assert_eq!(get("memory_used_bytes"), (6u64 << 30) as f64);
        assert_eq!(get("memory_total_bytes"), (8u64 << 30) as f64);
        assert_eq!(get("swap_used_bytes"), (1u64 << 20) as f64);
        assert_eq!(get("disk./.used_percent"), 75.0);
        assert_eq!(get("disk./var/lib/data.used_percent"), 90.0);
        assert_eq!(get("disk_used_percent"), 90.0);
        assert_eq!(get("process_group.web2img.count"), 3.0);
        assert_eq!(get("process_group.web2img.rss_bytes"), (512u64 << 20) as f64);
        assert_eq!(get("process_group.web2img.cpu_percent"), 130.0);
    }

    #[test]
    fn names_are_exactly_what_the_loader_accepts() {
        for (name, _) in resource_metrics(&sample()) {
            assert!(valid_metric(&name), "{name}");
        }
        // Every fixed metric is produced (a sample always has them; disks permitting).
        let names: Vec<String> = resource_metrics(&sample()).into_iter().map(|(n, _)| n).collect();
        for m in RESOURCE_METRICS {
            assert!(names.iter().any(|n| n == m), "{m}");
        }
    }

    #[test]
    fn no_disk_no_disk_used_percent() {
        let s = ResourceSample { cpu_percent: 1.0, ..Default::default() };
        let m = resource_metrics(&s);
        assert_eq!(m.len(), RESOURCE_METRICS.len() - 1);
        assert!(m.iter().all(|(n, _)| !n.starts_with("disk")));
    }

    #[test]
    fn callback_form_allocates_one_buffer_at_most() {
        let mut seen = Vec::new();
        for_each_resource_metric(&sample(), |n, v| seen.push((n.to_string(), v)));
        assert_eq!(seen, resource_metrics(&sample()));
    }
}
