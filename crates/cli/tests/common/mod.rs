//! What the CLI's test binaries share: running the real `driftwatch` binary, and
//! waiting for a condition with a deadline.

#![allow(dead_code)] // each test binary uses its own part of it

use std::future::Future;
use std::process::Command;
use std::time::{Duration, Instant};

/// Run `driftwatch --server SERVER ARGS…`: (success, stdout, stderr).
pub fn cli(server: &str, args: &[&str]) -> (bool, String, String) {
    cli_env(server, args, &[])
}

/// As [`cli`], with extra environment variables (e.g. `USER`, which `--by` defaults to).
pub fn cli_env(server: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .arg("--server")
        .arg(server)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run driftwatch");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Poll `f` until it returns `Some`, or panic with `what` after `timeout`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
