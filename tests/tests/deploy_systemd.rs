//! The systemd units and Debian packages as shipped: how exposed the units are
//! (`systemd-analyze security`), the packages installed into a fresh Debian root
//! (user, paths, modes, units that verify), and the agent's sandbox, rebuilt from its
//! unit and the drop-in it generates, letting it write its allowlist and nothing else.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use driftwatch_proto::v1;
use driftwatch_proto::v1::changes_client::ChangesClient;
use driftwatch_tests::binaries::{profile_dir, workspace_dir};
use driftwatch_tests::deploy::{self, DebianRoot, MountPoint, Unit};
use driftwatch_tests::process::ChildProcess;
use driftwatch_tests::{
    agent_binary, agent_toml, cli_binary, connect, outside_program, privilege, server_binary, server_file, server_url,
    set_keys, start_server,
};

/// `systemd-analyze security --offline=yes` of the agent unit (systemd 252) when it was
/// last hardened. What is left is what its job needs: root (reading every watched file
/// whoever owns it), three capabilities (CAP_DAC_READ_SEARCH, CAP_CHOWN, CAP_FOWNER,
/// each justified in the unit), chown among its system calls, the network, the whole
/// /proc (process groups) and no IP allow list (the server's address is in the config).
/// A change that raises it must say why here.
const AGENT_EXPOSURE: f64 = 2.3;
/// The server's budget (it runs as its own user with no capabilities at all).
const SERVER_EXPOSURE: f64 = 3.0;

fn unit_path(name: &str) -> PathBuf {
    workspace_dir().join("deploy/systemd").join(name)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn has(program: &str, install: &str) -> bool {
    let present = Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success());
    outside_program(program, present, install)
}

/// The overall exposure `systemd-analyze security` gives `unit` (a file or, with
/// `root`, a unit name inside it).
fn exposure(unit: &str, root: Option<&Path>) -> f64 {
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(["security", "--offline=yes", "--no-pager"]);
    if let Some(r) = root {
        cmd.arg(format!("--root={}", r.display()));
    }
    let out = deploy::run(cmd.arg(unit)).unwrap_or_else(|e| panic!("{e}"));
    let line = out.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{out}"));
    let figure = line.rsplit(':').next().and_then(|t| t.split_whitespace().next()).unwrap_or_default();
    figure.parse().unwrap_or_else(|_| panic!("no figure in {line:?}"))
}

#[test]
fn units_are_hardened_within_their_exposure() {
    if !has("systemd-analyze", "apt-get install systemd") {
        return;
    }
    let server = exposure(&unit_path("driftwatch-server.service").display().to_string(), None);
    let agent = exposure(&unit_path("driftwatch-agent.service").display().to_string(), None);
    println!("systemd-analyze security --offline=yes: driftwatch-server {server:.1}, driftwatch-agent {agent:.1}");
    assert!(server <= SERVER_EXPOSURE, "driftwatch-server.service exposure {server} > {SERVER_EXPOSURE}");
    assert!(agent <= AGENT_EXPOSURE, "driftwatch-agent.service exposure {agent} > {AGENT_EXPOSURE} (recorded)");

    for name in ["driftwatch-server.service", "driftwatch-agent.service"] {
        let unit = Unit::parse(&[&read(&unit_path(name))]);
        assert_eq!(unit.get("Type"), Some("notify"), "{name}");
        assert_eq!(unit.get("NotifyAccess"), Some("main"), "{name}");
        assert_eq!(unit.get("WatchdogSec"), Some("30s"), "{name}");
        assert_eq!(unit.get("ExecReload"), Some("/bin/kill -HUP $MAINPID"), "{name}");
        let exec = unit.get("ExecStart").unwrap_or_default();
        assert!(exec.starts_with("/usr/bin/driftwatch-") && exec.ends_with("--log-format json"), "{name}: {exec}");
    }
    // The agent's unit opens only its state dir: the allowlist comes from the drop-in.
    let agent = Unit::parse(&[&read(&unit_path("driftwatch-agent.service"))]);
    assert_eq!(agent.list("ReadWritePaths"), ["/var/lib/driftwatch-agent"]);
}

/// Man pages and completions of this build's binaries, where the packages' assets are.
fn docs_for_packages() {
    deploy::run(
        Command::new(workspace_dir().join("scripts/docs-for-packages"))
            .arg(workspace_dir().join("target/docs"))
            .arg(profile_dir()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// `cargo deb` of `package` from this build's binaries (no release build: `--no-build`
/// with this profile; stripped, fast compression), into `out`; the .deb's path.
fn cargo_deb(package: &str, out: &Path) -> PathBuf {
    let profile = profile_dir();
    let profile = match profile.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(other) => other.to_string(),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_dir())
        .args(["deb", "-p", package, "--no-build", "--fast", "--profile", &profile, "--output"])
        .arg(out);
    let printed = deploy::run(&mut cmd).unwrap_or_else(|e| panic!("{e}"));
    let deb = printed.lines().rev().find(|l| l.trim().ends_with(".deb")).unwrap_or_else(|| panic!("{printed}"));
    PathBuf::from(deb.trim())
}

/// Mode, owner and group of `path` inside `root`, as names from the root's own databases.
fn stat(root: &DebianRoot, path: &str) -> String {
    root.chroot(None, &["stat", "-c", "%a %U:%G", path]).unwrap_or_else(|e| panic!("{e}")).trim().to_string()
}

#[test]
fn packages_install_into_a_fresh_debian_root() {
    if !privilege::require("installing packages into a Debian root", privilege::root())
        || !has("debootstrap", "apt-get install debootstrap")
        || !has("dpkg-deb", "apt-get install dpkg")
    {
        return;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let has_cargo_deb = Command::new(cargo).args(["deb", "--version"]).output().is_ok_and(|o| o.status.success());
    if !outside_program("cargo-deb", has_cargo_deb, "cargo install cargo-deb --locked") {
        return;
    }
    for bin in [cli_binary(), agent_binary(), server_binary()] {
        assert!(bin.is_file(), "{}", bin.display());
    }
    docs_for_packages();
    let out = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let debs: Vec<PathBuf> =
        ["driftwatch-server", "driftwatch-agent", "driftwatch-cli"].iter().map(|p| cargo_deb(p, out.path())).collect();
    println!("cargo deb (3 packages, --no-build): {:.1?}", started.elapsed());

    let started = std::time::Instant::now();
    let root = DebianRoot::fresh().unwrap_or_else(|e| panic!("{e}"));
    println!("Debian root ready: {:.1?}", started.elapsed());
    let inbox = root.path().join("tmp/debs");
    std::fs::create_dir_all(&inbox).unwrap();
    let mut args = vec!["dpkg".to_string(), "-i".to_string()];
    for deb in &debs {
        let name = deb.file_name().unwrap();
        std::fs::copy(deb, inbox.join(name)).unwrap();
        args.push(format!("/tmp/debs/{}", name.to_string_lossy()));
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let installed = root.chroot(None, &argv).unwrap_or_else(|e| panic!("{e}"));
    println!("{installed}");

    // The server's user and group, from sysusers.
    let user = root.chroot(None, &["getent", "passwd", "driftwatch"]).expect("the driftwatch user");
    let fields: Vec<&str> = user.trim().split(':').collect();
    assert_eq!(fields[5..], ["/var/lib/driftwatch", "/usr/sbin/nologin"], "{user}");
    let (uid, gid) = (fields[2], fields[3]);
    assert!(uid.parse::<u32>().is_ok_and(|u| u > 0 && u < 1000), "a system uid: {user}");
    let group = root.chroot(None, &["getent", "group", "driftwatch"]).expect("the driftwatch group");
    assert_eq!(group.trim().split(':').nth(2), Some(gid), "{group}");

    // Paths and modes: configs readable by the server's group, never writable by it.
    assert_eq!(stat(&root, "/etc/driftwatch"), "750 root:driftwatch");
    assert_eq!(stat(&root, "/etc/driftwatch/server.toml"), "640 root:driftwatch");
    assert_eq!(stat(&root, "/etc/driftwatch/agent.toml"), "640 root:root");
    assert_eq!(stat(&root, "/var/lib/driftwatch"), "750 driftwatch:driftwatch");
    assert_eq!(stat(&root, "/var/lib/driftwatch-agent"), "700 root:root");
    let conffiles =
        root.chroot(None, &["dpkg-query", "-W", "-f", "${Conffiles}\n", "driftwatch-server", "driftwatch-agent"]);
    let conffiles = conffiles.unwrap_or_else(|e| panic!("{e}"));
    for c in ["/etc/driftwatch/server.toml", "/etc/driftwatch/agent.toml"] {
        assert!(conffiles.contains(c), "{c} is a conffile: {conffiles}");
    }
    for (installed, shipped) in [
        ("usr/lib/systemd/system/driftwatch-server.service", "deploy/systemd/driftwatch-server.service"),
        ("usr/lib/systemd/system/driftwatch-agent.service", "deploy/systemd/driftwatch-agent.service"),
        ("usr/lib/sysusers.d/driftwatch.conf", "deploy/systemd/driftwatch.sysusers"),
        ("usr/lib/tmpfiles.d/driftwatch.conf", "deploy/systemd/driftwatch.tmpfiles"),
        ("usr/lib/tmpfiles.d/driftwatch-agent.conf", "deploy/systemd/driftwatch-agent.tmpfiles"),
    ] {
        assert_eq!(read(&root.path().join(installed)), read(&workspace_dir().join(shipped)), "{installed}");
    }
    for f in [
        "usr/share/man/man1/driftwatch.1",
        "usr/share/man/man1/driftwatch-agent.1",
        "usr/share/man/man1/driftwatch-server.1",
        "usr/share/bash-completion/completions/driftwatch",
        "usr/share/zsh/vendor-completions/_driftwatch",
        "usr/share/fish/vendor_completions.d/driftwatch.fish",
    ] {
        let p = root.path().join(f);
        assert!(p.is_file() || p.with_extension("1.gz").is_file(), "{f} installed");
    }

    // Every binary runs; the server as the numeric driftwatch user, as its unit runs it.
    let ids = format!("{uid}:{gid}");
    for (who, bin) in [
        (Some(ids.as_str()), "/usr/bin/driftwatch-server"),
        (None, "/usr/bin/driftwatch-agent"),
        (None, "/usr/bin/driftwatch"),
    ] {
        let v = root.chroot(who, &[bin, "--version"]).unwrap_or_else(|e| panic!("{e}"));
        assert!(v.starts_with("driftwatch"), "{bin} --version: {v}");
    }

    // The units as systemd loads them, with their binaries where ExecStart says.
    for unit in ["driftwatch-server.service", "driftwatch-agent.service"] {
        let path = format!("/usr/lib/systemd/system/{unit}");
        // Warnings too (stderr): a unit that loads with an unknown key is not as written.
        let verify = format!("systemd-analyze verify --man=no {path} 2>&1");
        let verified = root.chroot(None, &["sh", "-c", &verify]);
        assert!(verified.as_ref().is_ok_and(|o| o.trim().is_empty()), "systemd-analyze verify {unit}: {verified:?}");
        println!("{unit}: exposure {:.1} in the Debian root", exposure(unit, Some(root.path())));
    }

    // Removal takes the units and (purge) the configs; the user stays with its data.
    root.chroot(None, &["dpkg", "--purge", "driftwatch-server", "driftwatch-agent", "driftwatch"])
        .unwrap_or_else(|e| panic!("{e}"));
    for gone in ["usr/lib/systemd/system/driftwatch-server.service", "usr/bin/driftwatch", "etc/driftwatch/server.toml"]
    {
        assert!(!root.path().join(gone).exists(), "{gone} removed");
    }
}

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sandbox_from_its_unit_writes_its_allowlist_and_nothing_else() {
    if !privilege::require("the agent's sandbox", privilege::root()) || !has("bwrap", "apt-get install bubblewrap") {
        return;
    }
    // Not under /tmp or /var/tmp (the unit's PrivateTmp= gives the agent its own) nor the
    // build's target dir, which may be there: the test's files and the agent binary it
    // runs sit below /var/lib, which the sandbox shows read-only like the rest.
    let dir = tempfile::Builder::new().prefix("driftwatch-sandbox-test-").tempdir_in("/var/lib").unwrap();
    let agent_bin = dir.path().join("driftwatch-agent");
    std::fs::copy(agent_binary(), &agent_bin).unwrap();
    let server_dir = tempfile::tempdir().unwrap();
    let server = start_server(server_dir.path()).await;
    let (allowed, grown) = (dir.path().join("allowed"), dir.path().join("grown"));
    for d in [&allowed, &grown] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join("app.env"), "WORKERS=4\n").unwrap();
    }
    let (ok_file, ro_file) = (allowed.join("app.env"), grown.join("app.env"));

    // The drop-in as the operator generated it, when only `allowed` was writable ...
    let mut file = driftwatch_tests::agent::agent_file(
        &server_url(&server),
        "sandboxed",
        &dir.path().join("unused-state"),
        &[ok_file.display().to_string(), ro_file.display().to_string()],
    );
    file.state_dir = None;
    file.writable = vec![allowed.display().to_string()];
    let then = dir.path().join("agent-then.toml");
    std::fs::write(&then, agent_toml(&file)).unwrap();
    let dropin = deploy::run(Command::new(&agent_bin).arg("--config").arg(&then).arg("--print-systemd-dropin"))
        .unwrap_or_else(|e| panic!("{e}"));
    println!("{dropin}");
    // ... and the config since: `grown` added, the drop-in not regenerated.
    file.writable.push(grown.display().to_string());
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, agent_toml(&file)).unwrap();

    let unit = Unit::parse(&[&read(&unit_path("driftwatch-agent.service")), &dropin]);
    let unmodelled: Vec<&str> = unit.keys().filter(|k| deploy::UNMODELLED_PATH_SETTINGS.contains(k)).collect();
    assert!(unmodelled.is_empty(), "the unit sets {unmodelled:?}, which this sandbox does not rebuild");
    assert_eq!(
        unit.list("ReadWritePaths"),
        ["/var/lib/driftwatch-agent".to_string(), format!("-{}", allowed.display())]
    );
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let _mount_point = MountPoint::ensure(Path::new("/var/lib/driftwatch-agent"));
    let bwrap =
        deploy::bwrap_args(&unit, &HashMap::from([(PathBuf::from("/var/lib/driftwatch-agent"), state.clone())]))
            .unwrap_or_else(|e| panic!("{e}"));
    println!("bwrap {}", bwrap.join(" "));

    // ExecStart with this build's binary and the test's config; Environment= as set.
    let exec: Vec<String> = unit.get("ExecStart").unwrap().split_whitespace().map(str::to_string).collect();
    let mut cmd = Command::new("bwrap");
    cmd.args(&bwrap).arg("--").arg(&agent_bin);
    let mut rest = exec[1..].iter();
    while let Some(a) = rest.next() {
        cmd.arg(a);
        if a == "--config" {
            rest.next();
            cmd.arg(&config);
        }
    }
    for env in unit.list("Environment") {
        let (k, v) = env.split_once('=').unwrap();
        cmd.env(k, v);
    }
    let log = dir.path().join("agent.log");
    let mut agent = ChildProcess::spawn("sandboxed agent", cmd, Some(&log)).unwrap();

    let mut changes = ChangesClient::new(connect(&server_url(&server)).await);
    let mut correct = async |path: &Path| {
        server_file(&server, "sandboxed", path).await;
        let req = v1::CorrectRequest {
            host_id: "sandboxed".into(),
            path: path.display().to_string(),
            action: set_keys(&[("WORKERS", "8")]),
            ..Default::default()
        };
        tokio::time::timeout(T, changes.correct(req))
            .await
            .expect("Correct answers")
            .unwrap()
            .into_inner()
            .result
            .unwrap()
    };
    let applied = correct(&ok_file).await;
    assert_eq!(applied.outcome, v1::ChangeOutcome::Applied as i32, "{applied:?}\n{}", agent.log());
    assert_eq!(read(&ok_file), "WORKERS=8\n");
    let refused = correct(&ro_file).await;
    assert_eq!(refused.outcome, v1::ChangeOutcome::Failed as i32, "{refused:?}\n{}", agent.log());
    assert!(refused.message.contains("Read-only file system"), "EROFS: {refused:?}");
    assert_eq!(read(&ro_file), "WORKERS=4\n", "untouched");
    println!("outside the drop-in: {}", refused.message);
    // The state dir is the agent's: its spool and backups are there.
    assert!(std::fs::read_dir(&state).unwrap().next().is_some(), "the agent wrote its state dir");

    // The same sandbox for any writer: the kernel says EROFS, whatever the allowlist.
    let sh = deploy::run(
        Command::new("bwrap")
            .args(&bwrap)
            .args(["--", "sh", "-c"])
            .arg(format!("echo WORKERS=9 > '{}'", ro_file.display())),
    );
    assert!(sh.as_ref().is_err_and(|e| e.contains("Read-only file system")), "{sh:?}");
    agent.stop(Duration::from_secs(10)).await;
    server.stop().await.unwrap();
}
