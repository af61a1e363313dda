//! `driftwatch completions SHELL` and the hidden `driftwatch man DIR` (packaging:
//! `scripts/docs-for-packages`): both from the clap definition, so they never drift from the flags.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

/// The completion script for `shell`, on stdout.
pub fn completions(shell: clap_complete::Shell, mut cmd: clap::Command) -> anyhow::Result<()> {
    // Into a buffer first: clap_complete panics on a failed write (`| head`).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "driftwatch", &mut script);
    std::io::stdout().lock().write_all(&script).context("stdout")
}

/// `driftwatch man DIR`: hidden, for packaging.
pub fn man_command() -> clap::Command {
    clap::Command::new("man")
        .hide(true)
        .about("Write the man pages of driftwatch and each of its commands into DIR")
        .arg(clap::Arg::new("dir").value_name("DIR").required(true).value_parser(clap::value_parser!(PathBuf)))
}

/// `driftwatch.1` and one page per command (`driftwatch-rules-check.1`, ...) in the
/// directory `man DIR` names.
pub fn man_pages(cmd: clap::Command, args: &clap::ArgMatches) -> anyhow::Result<()> {
    let dir = args.get_one::<PathBuf>("dir").context("man: DIR is required")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let write = || -> std::io::Result<()> {
        clap_mangen::generate_to(cmd.clone(), dir)?;
        // The top page again, with the exit codes in their usual section (EXIT STATUS),
        // not the generic one clap_mangen gives the help's trailer.
        let man = clap_mangen::Man::new(cmd.clone().after_help(None::<&str>).disable_help_subcommand(true));
        let mut page = Vec::new();
        man.render_title(&mut page)?;
        man.render_name_section(&mut page)?;
        man.render_synopsis_section(&mut page)?;
        man.render_description_section(&mut page)?;
        man.render_options_section(&mut page)?;
        man.render_subcommands_section(&mut page)?;
        page.extend_from_slice(exit_status_roff().as_bytes());
        man.render_version_section(&mut page)?;
        std::fs::write(dir.join(man.get_filename()), page)
    };
    write().with_context(|| format!("cannot write the man pages into {}", dir.display()))
}

/// [`crate::exit::EXIT_STATUS_HELP`] as a roff section, each line kept as it is.
fn exit_status_roff() -> String {
    let mut s = String::from(".SH \"EXIT STATUS\"\n.nf\n");
    for line in crate::exit::EXIT_STATUS_HELP.lines().skip(1) {
        // A line starting with `.` or `'` would be a request; `\` starts an escape.
        s.push_str("\\&");
        s.push_str(&line.replace('\\', "\\e"));
        s.push('\n');
    }
    s.push_str(".fi\n");
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_exit_status_section_keeps_every_line() {
        let roff = super::exit_status_roff();
        assert!(roff.starts_with(".SH \"EXIT STATUS\"\n.nf\n") && roff.ends_with(".fi\n"), "{roff}");
        assert!(roff.contains("\\&  4  denied"), "{roff}");
        assert!(!roff.contains("Exit status:"), "{roff}");
    }
}
