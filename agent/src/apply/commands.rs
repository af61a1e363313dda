//! Reload and health commands from the agent's own config (`[[files]]`), never from the
//! server.
//!
//! A command is an argv run without a shell (unless the operator writes
//! `["sh", "-c", "..."]`), in its own process group, with stdin closed and
//! `DRIFTWATCH_CHANGED_PATH` set. stdout and stderr go to one pipe; the last
//! [`TAIL_LINES`] lines (at most [`TAIL_BYTES`]) are kept and sent to the server.
//!
//! **Output goes to the server.** Words that look secret (by
//! [`driftwatch_formats::secret_reason`], also `KEY=value` and `key: value` pairs) are
//! masked in the tail, but that is a heuristic: a command that prints a secret in
//! another shape leaks it. Health checks should not print configuration.
//!
//! On timeout the whole process group is killed (SIGKILL). After the command exits, its
//! output is read for at most [`DRAIN_GRACE`] more: a background process it started
//! that keeps the pipe open is not waited for (it should redirect its output).

use std::io::Read as _;
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const ENV_CHANGED_PATH: &str = "DRIFTWATCH_CHANGED_PATH";
pub const TAIL_BYTES: usize = 4096;
pub const TAIL_LINES: usize = 40;
pub const DRAIN_GRACE: Duration = Duration::from_millis(500);
const POLL_MAX: Duration = Duration::from_millis(20);

/// The outcome of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRun {
    /// Last lines of combined stdout and stderr, secret-looking words masked.
    pub tail: String,
    /// `None`: exited with status 0. Else what went wrong ("exited with status 3",
    /// "timed out after 10s and was killed", "could not be started: ...").
    pub failure: Option<String>,
}

impl CommandRun {
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }
}

/// The last bytes written, bounded.
#[derive(Default)]
struct Tail {
    buf: Vec<u8>,
    cut: bool,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        if self.buf.len() > 4 * TAIL_BYTES {
            let drop = self.buf.len() - 2 * TAIL_BYTES;
            self.buf.drain(..drop);
            self.cut = true;
        }
    }

    fn finish(self) -> String {
        tail_text(&self.buf, self.cut)
    }
}

/// The kept part of `buf`: at most [`TAIL_LINES`] lines and [`TAIL_BYTES`] bytes from the
/// end, starting at a line boundary when anything was cut, with secrets masked.
fn tail_text(buf: &[u8], mut cut: bool) -> String {
    let text = String::from_utf8_lossy(buf);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let mut lines: Vec<&str> = text.split('\n').collect();
    if cut && lines.len() > 1 {
        lines.remove(0); // probably partial
    }
    if lines.len() > TAIL_LINES {
        lines.drain(..lines.len() - TAIL_LINES);
        cut = true;
    }
    let mut out = lines.join("\n");
    if out.len() > TAIL_BYTES {
        let mut start = out.len() - TAIL_BYTES;
        while !out.is_char_boundary(start) {
            start += 1;
        }
        out.drain(..start);
        cut = true;
    }
    let masked = mask_secrets(&out);
    if cut { format!("[earlier output not shown]\n{masked}") } else { masked }
}

/// Mask whitespace-separated words that look secret, keeping the spacing.
pub fn mask_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut prev_word = String::new();
    let mut word_start: Option<usize> = None;
    let flush = |out: &mut String, prev: &mut String, w: &str| {
        out.push_str(&mask_word(prev, w));
        *prev = w.to_string();
    };
    for (i, ch) in text.char_indices() {
        if ch.is_whitespace() {
            if let Some(s) = word_start.take() {
                flush(&mut out, &mut prev_word, &text[s..i]);
            }
            if ch == '\n' {
                prev_word.clear();
            }
            out.push(ch);
        } else if word_start.is_none() {
            word_start = Some(i);
        }
    }
    if let Some(s) = word_start {
        flush(&mut out, &mut prev_word, &text[s..]);
    }
    out
}

const MASK: &str = "<masked>";

fn mask_word(prev: &str, w: &str) -> String {
    // `KEY=value`, `key:value`
    for sep in ['=', ':'] {
        if let Some((k, v)) = w.split_once(sep)
            && !k.is_empty()
            && !k.contains("//")
            && !v.starts_with("//")
            && driftwatch_formats::secret_reason(k, v).is_some()
        {
            return format!("{k}{sep}{MASK}");
        }
    }
    // `password: hunter2`, `--token abc`
    let key = match (prev.strip_suffix([':', '=']), prev.strip_prefix("--")) {
        (Some(k), _) | (None, Some(k)) => k.trim_start_matches('-'),
        (None, None) => "",
    };
    if !key.is_empty()
        && driftwatch_formats::is_secret_key_name(key)
        && driftwatch_formats::secret_reason(key, w).is_some()
    {
        return MASK.to_string();
    }
    if driftwatch_formats::secret_reason("", w).is_some() {
        return MASK.to_string();
    }
    w.to_string()
}

fn describe(status: ExitStatus) -> Option<String> {
    if status.success() {
        None
    } else if let Some(code) = status.code() {
        Some(format!("exited with status {code}"))
    } else if let Some(sig) = status.signal() {
        Some(format!("was killed by signal {sig}"))
    } else {
        Some(format!("failed ({status})"))
    }
}

fn kill_group(pid: u32) {
    // The child leads its own process group (`process_group(0)`) and is not reaped yet,
    // so its pid (the group id) cannot have been reused.
    // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
    unsafe {
        libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
    }
}

/// Run `argv` with a timeout. Blocking.
pub fn run(argv: &[String], timeout: Duration, changed_path: &Path) -> CommandRun {
    let failed = |msg: String| CommandRun { tail: String::new(), failure: Some(msg) };
    let Some((program, args)) = argv.split_first() else {
        return failed("is empty".into());
    };
    let (mut reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return failed(format!("could not be started: {e}")),
    };
    let writer2 = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return failed(format!("could not be started: {e}")),
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env(ENV_CHANGED_PATH, changed_path)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .process_group(0);
    let spawned = cmd.spawn();
    // Our copies of the pipe's write end live in `cmd`: drop them, or EOF never comes.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return failed(format!("could not be started: {e}")),
    };
    let pid = child.id();
    let deadline = Instant::now() + timeout;
    let mut tail = Tail::default();
    let mut buf = [0u8; 8192];
    let mut eof = false;
    let mut exited: Option<Instant> = None;
    let mut failure: Option<String> = None;
    let mut poll = Duration::from_millis(1);
    loop {
        if exited.is_none() {
            match child.try_wait() {
                Ok(Some(status)) => {
                    failure = describe(status);
                    exited = Some(Instant::now());
                }
                Ok(None) => {}
                Err(e) => {
                    kill_group(pid);
                    let _ = child.wait();
                    failure = Some(format!("could not be waited for: {e}"));
                    exited = Some(Instant::now());
                }
            }
        }
        let now = Instant::now();
        let until = match exited {
            Some(at) if eof || now >= at + DRAIN_GRACE => break,
            Some(at) => at + DRAIN_GRACE,
            None if now >= deadline => {
                kill_group(pid);
                let _ = child.wait();
                failure = Some(format!("timed out after {} and was killed", humantime(timeout)));
                exited = Some(Instant::now());
                continue;
            }
            None => deadline,
        };
        let wait = until.saturating_duration_since(now).min(poll).max(Duration::from_millis(1));
        poll = (poll * 2).min(POLL_MAX);
        if eof {
            std::thread::sleep(wait);
            continue;
        }
        let mut pfd = libc::pollfd { fd: reader.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, wait.as_millis().max(1) as libc::c_int) };
        if rc > 0 {
            match reader.read(&mut buf) {
                Ok(0) => eof = true,
                Ok(n) => {
                    tail.push(&buf[..n]);
                    poll = Duration::from_millis(1);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => eof = true,
            }
        }
    }
    CommandRun { tail: tail.finish(), failure }
}

fn humantime(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}

/// An argv as a short display string for messages.
pub fn display_argv(argv: &[String]) -> String {
    let s = argv.join(" ");
    if s.len() > 80 {
        let mut end = 77;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn sh(script: &str) -> Vec<String> {
        argv(&["sh", "-c", script])
    }

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn success_captures_both_streams_and_sees_the_path() {
        let r = run(&sh("echo out; echo err >&2; echo \"path=$DRIFTWATCH_CHANGED_PATH\""), T, Path::new("/etc/a.env"));
        assert!(r.ok(), "{r:?}");
        assert!(r.tail.contains("out") && r.tail.contains("err"), "{}", r.tail);
        assert!(r.tail.contains("path=/etc/a.env"), "{}", r.tail);
    }

    #[test]
    fn failure_exit_code_is_reported() {
        let r = run(&sh("echo broken; exit 3"), T, Path::new("/x"));
        assert_eq!(r.failure.as_deref(), Some("exited with status 3"));
        assert!(r.tail.contains("broken"));
        let r = run(&argv(&["/nonexistent/driftwatch-no-such-command"]), T, Path::new("/x"));
        assert!(r.failure.unwrap().starts_with("could not be started"));
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        // The grandchild `sleep` holds the pipe open: it must die with the group, or
        // `run` would wait for it. It says its pid, so the test can look for it after.
        let r = run(&sh("sleep 30 & echo sleeper=$!; wait; echo never"), Duration::from_secs(2), Path::new("/x"));
        assert_eq!(r.failure.as_deref(), Some("timed out after 2s and was killed"));
        assert!(!r.tail.contains("never"), "{}", r.tail);
        let pid: u32 =
            r.tail.lines().find_map(|l| l.strip_prefix("sleeper=")).expect("the pid line").trim().parse().unwrap();
        // Killed and reaped by its parent shell's death (init adopts and reaps it): gone,
        // or at most a zombie on its way out.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
            if state.as_deref().is_none_or(|s| s.split_whitespace().nth(2) == Some("Z")) {
                break;
            }
            assert!(Instant::now() < deadline, "the grandchild {pid} outlived its group: {state:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn output_tail_is_truncated() {
        let r = run(&sh("i=0; while [ $i -lt 500 ]; do echo line-$i; i=$((i+1)); done"), T, Path::new("/x"));
        assert!(r.ok());
        let lines: Vec<&str> = r.tail.lines().collect();
        assert_eq!(lines.len(), TAIL_LINES + 1, "{}", r.tail);
        assert_eq!(lines[0], "[earlier output not shown]");
        assert_eq!(*lines.last().unwrap(), "line-499");
        assert!(!r.tail.contains("line-459\n"));
        // Long lines: bounded by bytes.
        let r = run(&sh("head -c 100000 /dev/zero | tr '\\0' 'x'"), T, Path::new("/x"));
        assert!(r.tail.len() <= TAIL_BYTES + 40, "{}", r.tail.len());
    }

    #[test]
    fn secret_looking_words_are_masked() {
        let s = mask_secrets(
            "ok DB_PASSWORD=hunter2 token: ghp_0123456789abcdefghijABCDEFGHIJ012345\npassword: s3cret done",
        );
        assert!(!s.contains("hunter2") && !s.contains("ghp_") && !s.contains("s3cret"), "{s}");
        assert!(s.starts_with("ok DB_PASSWORD=<masked> "), "{s}");
        assert!(s.ends_with(" done"), "{s}");
        assert_eq!(mask_secrets("reloaded web2img in 12ms"), "reloaded web2img in 12ms");
    }
}
