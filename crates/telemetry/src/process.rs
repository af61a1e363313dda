//! The standard `process_*` metrics (resident memory, CPU seconds, open file
//! descriptors, start time), read from `/proc/self` when scraped. Elsewhere than
//! Linux, or when `/proc` cannot be read, the metric that cannot be read is left out.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Register on an unprefixed registry: the names are `process_*` as every exporter has them.
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// What one scrape read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessReading {
    pub resident_memory_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

/// `utime`, `stime` and `starttime` (clock ticks) from `/proc/<pid>/stat`.
pub fn parse_stat(stat: &str) -> Option<(u64, u64, u64)> {
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14, stime 15, starttime 22.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((field(14)?, field(15)?, field(22)?))
}

/// `VmRSS` from `/proc/<pid>/status`, in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_ascii_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => n.checked_mul(1024),
        _ => None,
    }
}

/// `btime` (boot time, Unix seconds) from `/proc/stat`.
pub fn parse_btime(stat: &str) -> Option<u64> {
    stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

fn clock_ticks() -> Option<u64> {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|t| *t > 0)
}

impl ProcessReading {
    pub fn read() -> Self {
        let mut r = Self::default();
        let ticks = clock_ticks();
        if let (Some((utime, stime, start)), Some(hz)) =
            (std::fs::read_to_string("/proc/self/stat").ok().as_deref().and_then(parse_stat), ticks)
        {
            r.cpu_seconds = Some((utime + stime) as f64 / hz as f64);
            let btime = std::fs::read_to_string("/proc/stat").ok().as_deref().and_then(parse_btime);
            r.start_time_seconds = btime.map(|b| b as f64 + start as f64 / hz as f64);
        }
        r.resident_memory_bytes = std::fs::read_to_string("/proc/self/status").ok().as_deref().and_then(parse_vm_rss);
        // The count includes the directory handle read_dir holds; take it off.
        r.open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| (d.count() as u64).saturating_sub(1));
        r
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = ProcessReading::read();
        let e = &mut encoder;
        if let Some(v) = r.resident_memory_bytes {
            emit(e, "process_resident_memory_bytes", "Resident memory size in bytes", ConstGauge::new(v))?;
        }
        if let Some(v) = r.cpu_seconds {
            emit(e, "process_cpu_seconds", "Total user and system CPU time spent in seconds", ConstCounter::new(v))?;
        }
        if let Some(v) = r.open_fds {
            emit(e, "process_open_fds", "Open file descriptors", ConstGauge::new(v))?;
        }
        if let Some(v) = r.start_time_seconds {
            let help = "Start time of the process since the Unix epoch in seconds";
            emit(e, "process_start_time_seconds", help, ConstGauge::new(v))?;
        }
        Ok(())
    }
}

/// One metric with its descriptor.
fn emit(encoder: &mut DescriptorEncoder, name: &str, help: &str, m: impl EncodeMetric) -> Result<(), std::fmt::Error> {
    m.encode(encoder.encode_descriptor(name, help, None, m.metric_type())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_found_after_the_command_name() {
        let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 123456 1000 10 rest";
        assert_eq!(parse_stat(stat), Some((250, 50, 123456)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn rss_and_boot_time_parse() {
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t   2048 kB\nThreads: 3\n"), Some(2048 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_btime("cpu 1 2 3\nbtime 1700000000\nprocesses 5\n"), Some(1_700_000_000));
    }

    #[test]
    fn this_process_is_read_on_linux() {
        if !cfg!(target_os = "linux") {
            println!("skipped: /proc is Linux's");
            return;
        }
        let r = ProcessReading::read();
        assert!(r.resident_memory_bytes.unwrap() > 0);
        assert!(r.open_fds.unwrap() >= 3, "{r:?}");
        assert!(r.cpu_seconds.is_some() && r.start_time_seconds.unwrap() > 1.0e9, "{r:?}");
    }
}
