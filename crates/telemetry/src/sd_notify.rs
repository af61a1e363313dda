//! The service manager's notification protocol (`sd_notify(3)`), for `Type=notify`
//! units with a watchdog: `READY=1`, `RELOADING=1`, `STOPPING=1`, `STATUS=` and
//! `WATCHDOG=1` as datagrams to `$NOTIFY_SOCKET`.
//!
//! Written on std's `UnixDatagram` rather than the `sd-notify` crate: that crate
//! connects to `$NOTIFY_SOCKET` as a file path, so an abstract socket (`@name`, what
//! systemd in a container or a user manager may hand over) would not be reached.
//!
//! Without `NOTIFY_SOCKET` every call does nothing. A failed send is logged once and
//! otherwise ignored: the service manager going away must not stop
//! the service.

use std::ffi::OsStr;
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Where `$NOTIFY_SOCKET` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A socket file.
    Path(PathBuf),
    /// A Linux abstract socket: the name after the leading `@`.
    Abstract(Vec<u8>),
}

/// One line of a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State<'a> {
    Ready,
    /// Begins a reload; systemd wants `MONOTONIC_USEC` (the clock when it began) with it.
    Reloading {
        monotonic_usec: u64,
    },
    Stopping,
    Watchdog,
    /// Free text shown by `systemctl status` (newlines become spaces).
    Status(&'a str),
}

/// The datagram for `states`: one `KEY=VALUE` line each.
pub fn message(states: &[State<'_>]) -> String {
    let mut out = String::new();
    for s in states {
        match s {
            State::Ready => out.push_str("READY=1\n"),
            State::Reloading { monotonic_usec } => {
                out.push_str(&format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}\n"));
            }
            State::Stopping => out.push_str("STOPPING=1\n"),
            State::Watchdog => out.push_str("WATCHDOG=1\n"),
            State::Status(text) => {
                out.push_str("STATUS=");
                out.extend(text.chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c }));
                out.push('\n');
            }
        }
    }
    out
}

/// `$NOTIFY_SOCKET` read: `None` when unset or empty (or a relative path, which
/// `sd_notify(3)` does not accept either).
pub fn socket_target(value: Option<&OsStr>) -> Option<Target> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = value?.as_bytes();
    match bytes.first()? {
        b'@' => Some(Target::Abstract(bytes[1..].to_vec())),
        b'/' => Some(Target::Path(PathBuf::from(OsStr::from_bytes(bytes)))),
        _ => None,
    }
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when it is set to a
/// positive number and `WATCHDOG_PID` is unset or names `own_pid` (a watchdog meant
/// for another process of the unit is not ours to feed).
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        let pid: u32 = pid.trim().parse().ok()?;
        if pid != own_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// The process's link to its service manager, read from the environment once.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
    warned: AtomicBool,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`. A socket that cannot
    /// be set up is logged and the notifier stays silent.
    pub fn from_env() -> Self {
        let target = socket_target(std::env::var_os("NOTIFY_SOCKET").as_deref());
        let socket = target.and_then(|t| match open(&t) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(socket = ?t, error = %e, "NOTIFY_SOCKET: cannot set up the notification socket");
                None
            }
        });
        let watchdog = socket.as_ref().and_then(|_| {
            watchdog_interval(
                std::env::var("WATCHDOG_USEC").ok().as_deref(),
                std::env::var("WATCHDOG_PID").ok().as_deref(),
                std::process::id(),
            )
        });
        Self { socket, watchdog, warned: AtomicBool::new(false) }
    }

    /// A notifier that never sends (no service manager).
    pub fn disabled() -> Self {
        Self { socket: None, watchdog: None, warned: AtomicBool::new(false) }
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// How often to send `WATCHDOG=1` (half the manager's timeout), if it wants it.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Ready (after start, or after a reload), with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&[State::Ready, State::Status(status)]);
    }

    /// A reload begins.
    pub fn reloading(&self) {
        self.send(&[State::Reloading { monotonic_usec: monotonic_usec() }, State::Status("reloading")]);
    }

    /// Shutdown begins.
    pub fn stopping(&self) {
        self.send(&[State::Stopping, State::Status("stopping")]);
    }

    /// Still alive.
    pub fn watchdog(&self) {
        self.send(&[State::Watchdog]);
    }

    /// Only the status line.
    pub fn status(&self, status: &str) {
        self.send(&[State::Status(status)]);
    }

    fn send(&self, states: &[State<'_>]) {
        let Some((socket, addr)) = &self.socket else { return };
        let msg = message(states);
        if let Err(e) = socket.send_to_addr(msg.as_bytes(), addr)
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(error = %e, "cannot notify the service manager (further failures not logged)");
        }
    }
}

/// Send `WATCHDOG=1` every [`Notifier::watchdog_interval`] until `stop`, but only
/// while `alive` says the real work goes on. Run it on the runtime that does the work:
/// a runtime that is blocked or starved then stops the pings by itself, and `alive`
/// covers what runs on other threads. A stall is logged (once, and when it ends) and
/// shown as the unit's status; the service manager restarts the process if it lasts
/// past its timeout.
pub async fn feed_watchdog(
    notifier: std::sync::Arc<Notifier>,
    mut alive: impl FnMut() -> Result<(), String>,
    stop: impl std::future::Future<Output = ()>,
) {
    let Some(every) = notifier.watchdog_interval() else { return };
    tracing::info!(every_ms = every.as_millis() as u64, "feeding the service manager's watchdog");
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    let mut stalled = false;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        match alive() {
            Ok(()) => {
                if std::mem::take(&mut stalled) {
                    tracing::info!("work goes on again; feeding the watchdog");
                    notifier.status("running");
                }
                notifier.watchdog();
            }
            Err(why) => {
                if !std::mem::replace(&mut stalled, true) {
                    tracing::error!(reason = %why, "work is stalled; not feeding the watchdog");
                    notifier.status(&format!("stalled: {why}"));
                }
            }
        }
    }
}

fn open(target: &Target) -> io::Result<(UnixDatagram, SocketAddr)> {
    let addr = match target {
        Target::Path(p) => SocketAddr::from_pathname(p)?,
        Target::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
    };
    Ok((UnixDatagram::unbound()?, addr))
}

/// `CLOCK_MONOTONIC` in microseconds (what systemd compares `MONOTONIC_USEC` with).
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000).saturating_add(ts.tv_nsec as u64 / 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_per_state() {
        assert_eq!(message(&[State::Ready, State::Status("serving 3 hosts")]), "READY=1\nSTATUS=serving 3 hosts\n");
        assert_eq!(message(&[State::Reloading { monotonic_usec: 42 }]), "RELOADING=1\nMONOTONIC_USEC=42\n");
        assert_eq!(message(&[State::Stopping]), "STOPPING=1\n");
        assert_eq!(message(&[State::Watchdog]), "WATCHDOG=1\n");
        assert_eq!(message(&[State::Status("a\nb\rc")]), "STATUS=a b c\n", "a status cannot add lines");
    }

    #[test]
    fn the_socket_is_a_path_or_an_abstract_name() {
        assert_eq!(socket_target(None), None);
        assert_eq!(socket_target(Some(OsStr::new(""))), None);
        assert_eq!(socket_target(Some(OsStr::new("relative/sock"))), None);
        assert_eq!(
            socket_target(Some(OsStr::new("/run/systemd/notify"))),
            Some(Target::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            socket_target(Some(OsStr::new("@/org/x/notify"))),
            Some(Target::Abstract(b"/org/x/notify".to_vec()))
        );
    }

    #[test]
    fn the_watchdog_is_fed_at_half_its_timeout_and_only_by_its_process() {
        let me = 4242;
        assert_eq!(watchdog_interval(Some("400000"), None, me), Some(Duration::from_millis(200)));
        assert_eq!(watchdog_interval(Some("30000000"), Some("4242"), me), Some(Duration::from_secs(15)));
        assert_eq!(watchdog_interval(Some("30000000"), Some("17"), me), None, "another process's watchdog");
        assert_eq!(watchdog_interval(Some("30000000"), Some("x"), me), None);
        assert_eq!(watchdog_interval(None, Some("4242"), me), None);
        assert_eq!(watchdog_interval(Some("0"), None, me), None, "0 turns it off");
        assert_eq!(watchdog_interval(Some("soon"), None, me), None);
        assert_eq!(watchdog_interval(Some("1"), None, me), Some(Duration::from_millis(1)), "never a busy loop");
    }

    #[test]
    fn datagrams_reach_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        let (sender, addr) = open(&Target::Path(path)).unwrap();
        sender.send_to_addr(message(&[State::Ready]).as_bytes(), &addr).unwrap();
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("driftwatch-test-{}", std::process::id());
        let listener = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        let (sender, addr) = open(&socket_target(Some(OsStr::new(&format!("@{name}")))).unwrap()).unwrap();
        sender.send_to_addr(b"WATCHDOG=1\n", &addr).unwrap();
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1\n");
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let a = monotonic_usec();
        let b = monotonic_usec();
        assert!(a > 0 && b >= a);
    }
}
