//! Shell completions and man pages: what packaging installs (`scripts/docs-for-packages`), rendered
//! by each binary from its own flags.

use std::path::Path;
use std::process::Command;

fn completions(shell: &str) -> String {
    // Credentials that cannot be read do not matter here.
    let out = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args(["completions", shell])
        .env("DRIFTWATCH_TOKEN_FILE", "/nonexistent/token")
        .output()
        .unwrap();
    assert!(out.status.success(), "completions {shell}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completion_scripts_name_the_commands() {
    let bash = completions("bash");
    assert!(bash.contains("_driftwatch()") && bash.contains("complete -F _driftwatch"), "{bash}");
    for word in ["rollout", "enroll-token", "baseline", "--server", "--output"] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    assert!(completions("zsh").starts_with("#compdef driftwatch"));
    let fish = completions("fish");
    assert!(fish.contains("complete -c driftwatch") && fish.contains("rollout"), "{fish}");
    // The hidden packaging command is not offered.
    assert!(!bash.contains(" man "), "man offered by completion");
    assert!(bash.contains(" whoami "), "{bash}");
}

/// A man page: roff with a title line naming it.
fn page(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join(format!("{name}.1")))
        .unwrap_or_else(|e| panic!("{name}.1 in {}: {e}", dir.display()));
    assert!(text.contains(&format!(".TH {name} 1")), "{name}.1 has no .TH line:\n{text}");
    assert!(text.contains(".SH NAME") && text.contains(".SH SYNOPSIS"), "{text}");
    text
}

#[test]
fn every_binary_renders_its_man_pages() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man");
    let status = Command::new(env!("CARGO_BIN_EXE_driftwatch")).arg("man").arg(&out).status().unwrap();
    assert!(status.success());
    let top = page(&out, "driftwatch");
    assert!(top.contains(".SH \"EXIT STATUS\"") && top.contains("4  denied"), "{top}");
    assert!(top.contains("DRIFTWATCH_SERVER"), "environment variables not listed:\n{top}");
    let check = page(&out, "driftwatch-rules-check");
    assert!(check.contains("exit status 1"), "{check}");
    page(&out, "driftwatch-completions");
    assert!(!out.join("driftwatch-man.1").exists(), "the hidden command got a page");

    for (bin, flag) in [(driftwatch_tests::agent_binary(), "--watch"), (driftwatch_tests::server_binary(), "--listen")]
    {
        let status = Command::new(bin).arg("--man").arg(&out).status().unwrap();
        assert!(status.success(), "{} --man", bin.display());
        let name = bin.file_name().unwrap().to_string_lossy().into_owned();
        let text = page(&out, &name);
        assert!(text.contains(&flag.replace('-', "\\-")), "{name}.1 lacks {flag}:\n{text}");
    }
    page(&out, "driftwatch-server-rotate-ca");
}
