//! Child processes (a server or agent binary) that never outlive the test or benchmark
//! that started them: killed on drop, their stderr kept in a log file and printed when
//! the test fails.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A started process; killed (SIGKILL) when dropped, unless it was stopped before.
pub struct ChildProcess {
    name: String,
    child: Child,
    /// Where its stderr goes (`None`: inherited).
    log: Option<PathBuf>,
    exited: Option<ExitStatus>,
}

impl ChildProcess {
    /// Start `cmd` with stdin and stdout closed and stderr appended to `log` (inherited
    /// when `None`). `name` says which process it is in messages.
    pub fn spawn(name: &str, mut cmd: Command, log: Option<&Path>) -> io::Result<Self> {
        let stderr = match log {
            Some(p) => Stdio::from(std::fs::OpenOptions::new().create(true).append(true).open(p)?),
            None => Stdio::inherit(),
        };
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr).spawn()?;
        Ok(Self { name: name.to_string(), child, log: log.map(Path::to_path_buf), exited: None })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, once it has exited.
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// What it wrote to stderr so far ("" when stderr was inherited).
    pub fn log(&self) -> String {
        self.log.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default()
    }

    /// SIGTERM (a clean shutdown), then SIGKILL if it has not exited within `grace`.
    pub async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if self.try_exited().is_none() {
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + grace;
            while self.try_exited().is_none() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if self.try_exited().is_none() {
            self.kill();
        }
        self.exited
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        if self.try_exited().is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(p) = &self.log
        {
            eprintln!(
                "--- {} (pid {}) stderr, {} ---\n{}--- end of {} ---",
                self.name,
                self.pid(),
                p.display(),
                self.log(),
                self.name
            );
        }
        self.kill();
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port").port()
}
