//! What the CLI's test binaries share: running the real `driftwatch` binary, and
//! waiting for a condition with a deadline.

#![allow(dead_code)] // each test binary uses its own part of it

use std::process::Command;

/// Run `driftwatch --server SERVER ARGS…`: (success, stdout, stderr).
pub fn cli(server: &str, args: &[&str]) -> (bool, String, String) {
    cli_env(server, args, &[])
}

/// As [`cli`], with extra environment variables.
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

/// Poll `f` until it returns `Some`, or panic with `what` after `timeout` (the
/// end-to-end harness's wait: one definition for every test crate).
#[allow(unused_imports)] // each test binary uses its own part of it
pub use driftwatch_tests::wait_for as wait_until;
