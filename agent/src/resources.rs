//! Resource sampling with sysinfo: CPU, load, memory and swap, disks, configured
//! process groups, and the agent's own footprint.
//!
//! Blocking (it reads /proc): callers run [`ResourceSampler::sample`] on the
//! blocking pool. The sampler is kept between samples because CPU percentages
//! are deltas between two refreshes; the first sample reports 0 % CPU.
//!
//! Cost matters (the agent's idle CPU budget is 0.2 % of a core): the full
//! process table is read only when process groups are configured; otherwise
//! only the agent's own process is refreshed.

use std::collections::BTreeSet;

use driftwatch_proto::v1::{DiskUsage, ProcessGroupUsage, ResourceSample};
use globset::{GlobBuilder, GlobMatcher};
use sysinfo::{
    CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, Pid, ProcessRefreshKind, ProcessesToUpdate, System,
};

use crate::error::{AgentError, Result};
use crate::hostroot::HostRoot;

/// A named group of processes: every process whose name matches `pattern`
/// (a glob such as `chrom*`), counted and summed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessGroup {
    pub name: String,
    pub pattern: String,
}

/// File systems that are not storage: never reported as disks.
const PSEUDO_FILESYSTEMS: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "tmpfs",
    "cgroup",
    "cgroup2",
    "securityfs",
    "pstore",
    "debugfs",
    "tracefs",
    "configfs",
    "fusectl",
    "mqueue",
    "hugetlbfs",
    "autofs",
    "binfmt_misc",
    "bpf",
    "nsfs",
    "squashfs",
    "ramfs",
    "efivarfs",
    "rpc_pipefs",
];

pub struct ResourceSampler {
    system: System,
    disks: Disks,
    groups: Vec<(ProcessGroup, GlobMatcher)>,
    own_pid: Option<Pid>,
    /// `path_prefix`: only the node's mounts (below the prefix) are disks, named by
    /// their node paths; the container's own (its root, config volumes) are not the node's.
    host: HostRoot,
}

impl ResourceSampler {
    pub fn new(groups: Vec<ProcessGroup>) -> Result<Self> {
        // sysinfo keeps every /proc/<pid>/stat open by default; an agent must not
        // hold hundreds of descriptors for that.
        sysinfo::set_open_files_limit(0);
        let mut matchers = Vec::with_capacity(groups.len());
        for g in groups {
            let m = GlobBuilder::new(&g.pattern)
                .build()
                .map_err(|e| AgentError::Config(format!("process group '{}': pattern: {e}", g.name)))?
                .compile_matcher();
            matchers.push((g, m));
        }
        let mut system = System::new();
        system.refresh_cpu_list(CpuRefreshKind::nothing().with_cpu_usage());
        Ok(Self {
            system,
            disks: Disks::new(),
            groups: matchers,
            own_pid: sysinfo::get_current_pid().ok(),
            host: HostRoot::default(),
        })
    }

    /// Report the disks of the node seen below `host` (see the field). Processes need
    /// nothing: with the host's PID namespace (`hostPID`) /proc already lists the node's.
    pub fn with_host_root(mut self, host: HostRoot) -> Self {
        self.host = host;
        self
    }

    /// Take one sample (blocking: reads /proc and statfs).
    pub fn sample(&mut self) -> ResourceSample {
        let s = &mut self.system;
        s.refresh_cpu_usage();
        s.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram().with_swap());
        let process_kind = ProcessRefreshKind::nothing().with_memory().with_cpu();
        if self.groups.is_empty() {
            if let Some(pid) = self.own_pid {
                s.refresh_processes_specifics(ProcessesToUpdate::Some(&[pid]), true, process_kind);
            }
        } else {
            s.refresh_processes_specifics(ProcessesToUpdate::All, true, process_kind);
        }
        self.disks.refresh_specifics(true, DiskRefreshKind::nothing().with_storage());
        if self.disks.list().is_empty() {
            // First call: the list of mounts is read once, then only refreshed.
            self.disks.refresh_specifics(true, DiskRefreshKind::nothing().with_storage());
        }

        let cpu_count = s.cpus().len().max(1) as u32;
        let cpu_percent = f64::from(s.global_cpu_usage()).clamp(0.0, 100.0);
        let load = System::load_average();
        let own = self.own_pid.and_then(|p| s.process(p));
        let process_groups = self
            .groups
            .iter()
            .map(|(g, m)| {
                let mut usage =
                    ProcessGroupUsage { name: g.name.clone(), pattern: g.pattern.clone(), ..Default::default() };
                for p in s.processes().values() {
                    // Threads appear as processes on Linux; count each process once.
                    if p.thread_kind().is_some_and(|k| k == sysinfo::ThreadKind::Userland) {
                        continue;
                    }
                    if m.is_match(std::path::Path::new(p.name())) {
                        usage.count += 1;
                        usage.rss_bytes += p.memory();
                        usage.cpu_percent += f64::from(p.cpu_usage());
                    }
                }
                usage
            })
            .collect();
        ResourceSample {
            sampled_at: Some(driftwatch_proto::timestamp(std::time::SystemTime::now())),
            cpu_percent,
            cpu_cores_used: cpu_percent / 100.0 * f64::from(cpu_count),
            cpu_count,
            load_1: load.one,
            load_5: load.five,
            load_15: load.fifteen,
            memory_total_bytes: s.total_memory(),
            memory_used_bytes: s.used_memory(),
            swap_total_bytes: s.total_swap(),
            swap_used_bytes: s.used_swap(),
            disks: disk_usage(&self.disks, &self.host),
            process_groups,
            agent_rss_bytes: own.map(|p| p.memory()).unwrap_or(0),
            agent_cpu_percent: own.map(|p| f64::from(p.cpu_usage())).unwrap_or(0.0),
        }
    }
}

/// Real file systems, one entry per mount point, in mount-point order.
fn disk_usage(disks: &Disks, host: &HostRoot) -> Vec<DiskUsage> {
    let mut seen = BTreeSet::new();
    let mut out: Vec<DiskUsage> = disks
        .list()
        .iter()
        .filter(|d| {
            let fs = d.file_system().to_string_lossy();
            !PSEUDO_FILESYSTEMS.contains(&fs.as_ref()) && d.total_space() > 0
        })
        .filter_map(|d| Some((host.to_node(d.mount_point())?, d)))
        .filter(|(node, _)| seen.insert(node.clone()))
        .map(|(node, d)| DiskUsage {
            mount_point: node.display().to_string(),
            file_system: d.file_system().to_string_lossy().into_owned(),
            total_bytes: d.total_space(),
            available_bytes: d.available_space(),
            used_bytes: d.total_space().saturating_sub(d.available_space()),
        })
        .collect();
    out.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_reports_the_machine_and_the_agent_itself() {
        let mut s = ResourceSampler::new(Vec::new()).unwrap();
        let first = s.sample();
        assert!(first.cpu_count >= 1);
        assert!(first.memory_total_bytes > 0);
        assert!(first.memory_used_bytes <= first.memory_total_bytes);
        assert!(first.agent_rss_bytes > 0, "own RSS is measured");
        assert!(first.process_groups.is_empty());
        assert!(first.sampled_at.is_some());
        // Burn a little CPU so the second (delta) sample has something to see.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(250) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let second = s.sample();
        assert!((0.0..=100.0).contains(&second.cpu_percent));
        let expect_cores = second.cpu_percent / 100.0 * f64::from(second.cpu_count);
        assert!((second.cpu_cores_used - expect_cores).abs() < 1e-9);
        assert!(second.load_1 >= 0.0);
        for d in &second.disks {
            assert!(!PSEUDO_FILESYSTEMS.contains(&d.file_system.as_str()), "{d:?}");
            assert!(d.used_bytes <= d.total_bytes);
        }
    }

    #[test]
    fn process_groups_count_and_sum_matching_processes() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        let mut s = ResourceSampler::new(vec![
            ProcessGroup { name: "sleepers".into(), pattern: "slee*".into() },
            ProcessGroup { name: "nothing".into(), pattern: "no-such-process-*".into() },
        ])
        .unwrap();
        let sample = s.sample();
        child.kill().ok();
        child.wait().ok();
        let g = &sample.process_groups[0];
        assert_eq!(g.name, "sleepers");
        assert!(g.count >= 1, "{g:?}");
        assert!(g.rss_bytes > 0, "{g:?}");
        assert_eq!(sample.process_groups[1].count, 0);
        assert_eq!(sample.process_groups[1].rss_bytes, 0);
    }

    #[test]
    fn a_bad_pattern_is_a_clear_error() {
        let Err(e) = ResourceSampler::new(vec![ProcessGroup { name: "b".into(), pattern: "[".into() }]) else {
            panic!("accepted a bad glob");
        };
        assert!(e.to_string().contains("process group 'b'"), "{e}");
    }
}
