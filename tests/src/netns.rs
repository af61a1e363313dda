//! A small network of hosts on one machine for tests that cross a real network:
//! network namespaces joined by veth pairs to a bridge in the server's namespace.
//! Needs root and iproute2; every namespace (and with it every interface) is removed
//! when the [`Lab`] is dropped. Traffic never leaves the namespaces made here.

use std::process::Command;

/// The bridge's address in the server's namespace.
pub const SERVER_ADDR: &str = "10.213.0.1";

/// A server namespace and `agents` agent namespaces on one /24.
pub struct Lab {
    pub server: String,
    pub agents: Vec<String>,
}

/// Why a lab cannot be made here (`None`: it can).
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespaces need root".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("the ip command (iproute2) is not installed".into()),
    }
}

fn ip(args: &[&str]) -> std::io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
    }
}

impl Lab {
    /// Make the namespaces and links. Agent `i` (from 0) gets `10.213.0.(10+i)`.
    pub fn new(agents: usize) -> std::io::Result<Self> {
        let tag = format!("{:04x}", rand::random::<u16>());
        let mut lab = Lab { server: format!("dws{tag}"), agents: Vec::new() };
        ip(&["netns", "add", &lab.server])?;
        let s = lab.server.clone();
        ip(&["-n", &s, "link", "set", "lo", "up"])?;
        ip(&["-n", &s, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &s, "addr", "add", &format!("{SERVER_ADDR}/24"), "dev", "br0"])?;
        ip(&["-n", &s, "link", "set", "br0", "up"])?;
        for i in 0..agents {
            let ns = format!("dwa{i}{tag}");
            ip(&["netns", "add", &ns])?;
            lab.agents.push(ns.clone());
            let (a, b) = (format!("va{i}{tag}"), format!("vs{i}{tag}"));
            ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
            ip(&["link", "set", &a, "netns", &ns])?;
            ip(&["link", "set", &b, "netns", &s])?;
            ip(&["-n", &s, "link", "set", &b, "master", "br0"])?;
            ip(&["-n", &s, "link", "set", &b, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("10.213.0.{}/24", 10 + i), "dev", &a])?;
            ip(&["-n", &ns, "link", "set", &a, "up"])?;
        }
        Ok(lab)
    }

    /// `program` run inside namespace `ns`.
    pub fn command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// Agent `i`'s address.
    pub fn agent_addr(i: usize) -> String {
        format!("10.213.0.{}", 10 + i)
    }
}

/// Run `f` on a thread of its own inside namespace `ns` (a network namespace is a
/// per-thread setting), on a runtime of that thread: every socket it opens is in `ns`.
pub fn block_in_netns<F, Fut, T>(ns: &str, f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: a valid namespace fd; setns changes only this thread's namespace.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(f())
    })
    .join()
    .expect("the namespace thread panicked")
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its interfaces (and their veth peers).
        for ns in self.agents.iter().chain(std::iter::once(&self.server)) {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("netns cleanup: {e}");
            }
        }
    }
}
