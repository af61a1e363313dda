//! The exit status of every `driftwatch` command, decided here and nowhere else, from
//! what the command returned: its [`Outcome`], or the kind of its error. Scripts can
//! tell "the files differ" from "the server is down" from "you may not".

use std::fmt;
use std::process::ExitCode;

/// The table `driftwatch --help` prints after the commands (and the man page's
/// EXIT STATUS section); README.md "Exit codes" says the same.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  ok
  1  differences or findings: diff and baseline diff found
     differences, rules check|test|reload found problems, audit
     verify found the chain broken, a correction or rollout did
     not succeed
  2  usage: an unknown command or flag, a bad argument
  3  server unreachable: no connection (refused, timed out, TLS
     handshake failed), or the server answered UNAVAILABLE
  4  denied: UNAUTHENTICATED (no or unknown credentials) or
     PERMISSION_DENIED (the role does not allow the call)
  5  any other error: not found, invalid argument, a file that
     cannot be read, ...";

/// The codes of [`EXIT_STATUS_HELP`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok = 0,
    Findings = 1,
    /// clap's own (`Cli::parse` exits with it); listed for the table's sake.
    #[allow(dead_code)]
    Usage = 2,
    Unreachable = 3,
    Denied = 4,
    Failed = 5,
}

/// What a command that ran to its end found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to report: no differences, no problems, the change applied.
    Clean,
    /// Differences, problems or a change that did not succeed: already printed.
    Findings,
}

impl Outcome {
    /// `Clean` when `ok`, else `Findings`.
    pub fn clean_if(ok: bool) -> Self {
        if ok { Outcome::Clean } else { Outcome::Findings }
    }
}

/// No connection to the server: the connect failed (the cause follows in the chain).
#[derive(Debug)]
pub struct Unreachable(pub String);

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot reach the driftwatch server at {}", self.0)
    }
}

/// A call the server refused or failed: its status code kept for [`status_of`], its
/// message shown as `not found: no host "x"`.
#[derive(Debug)]
pub struct CallFailed {
    pub code: tonic::Code,
    pub text: String,
}

impl fmt::Display for CallFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for CallFailed {}

/// A finding reported as an error message (e.g. `audit verify`'s broken chain).
#[derive(Debug)]
pub struct Finding(pub String);

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Finding {}

/// The exit status of a command's error. Pure: the whole table in one match.
pub fn status_of(e: &anyhow::Error) -> Status {
    if e.downcast_ref::<Unreachable>().is_some() {
        return Status::Unreachable;
    }
    if e.downcast_ref::<Finding>().is_some() || e.chain().any(|c| c.is::<Finding>()) {
        return Status::Findings;
    }
    let code = e
        .downcast_ref::<CallFailed>()
        .map(|c| c.code)
        .or_else(|| e.downcast_ref::<tonic::Status>().map(tonic::Status::code))
        .or_else(|| {
            e.chain().find_map(|c| {
                c.downcast_ref::<CallFailed>()
                    .map(|c| c.code)
                    .or_else(|| c.downcast_ref::<tonic::Status>().map(tonic::Status::code))
            })
        });
    match code {
        Some(tonic::Code::Unavailable) => Status::Unreachable,
        Some(tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) => Status::Denied,
        _ => Status::Failed,
    }
}

/// The process's exit: the error printed (as `main` returning it would) and mapped.
pub fn finish(result: anyhow::Result<Outcome>) -> ExitCode {
    let status = match result {
        Ok(Outcome::Clean) => Status::Ok,
        Ok(Outcome::Findings) => Status::Findings,
        Err(e) => {
            eprintln!("Error: {e:?}");
            status_of(&e)
        }
    };
    ExitCode::from(status as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    fn call(code: tonic::Code) -> anyhow::Error {
        anyhow::Error::new(CallFailed { code, text: "x".into() })
    }

    #[test]
    fn every_error_kind_has_its_code() {
        assert_eq!(status_of(&call(tonic::Code::Unavailable)), Status::Unreachable);
        assert_eq!(status_of(&call(tonic::Code::Unauthenticated)), Status::Denied);
        assert_eq!(status_of(&call(tonic::Code::PermissionDenied)), Status::Denied);
        assert_eq!(status_of(&call(tonic::Code::NotFound)), Status::Failed);
        assert_eq!(status_of(&call(tonic::Code::Internal)), Status::Failed);
        assert_eq!(status_of(&anyhow::anyhow!("--token-file x: cannot read")), Status::Failed);
        let e = anyhow::anyhow!("connection refused").context(Unreachable("http://127.0.0.1:1".into()));
        assert_eq!(status_of(&e), Status::Unreachable);
        assert!(format!("{e:?}").contains("cannot reach the driftwatch server at http://127.0.0.1:1"), "{e:?}");
        assert_eq!(status_of(&anyhow::Error::new(Finding("chain broken".into()))), Status::Findings);
        assert_eq!(status_of(&anyhow::Error::from(tonic::Status::permission_denied("no"))), Status::Denied);
    }

    #[test]
    fn context_added_on_the_way_keeps_the_code() {
        let e = Err::<(), _>(call(tonic::Code::PermissionDenied)).context("token create").unwrap_err();
        assert_eq!(status_of(&e), Status::Denied);
        let e = Err::<(), _>(call(tonic::Code::Unavailable)).context("a").context("b").unwrap_err();
        assert_eq!(status_of(&e), Status::Unreachable);
        let e = Err::<(), _>(Finding("f".into())).context("audit").unwrap_err();
        assert_eq!(status_of(&e), Status::Findings);
    }

    #[test]
    fn the_help_table_lists_every_code() {
        for code in 0..=5 {
            assert!(EXIT_STATUS_HELP.contains(&format!("\n  {code}  ")), "{code}");
        }
        assert_eq!(Outcome::clean_if(true), Outcome::Clean);
        assert_eq!(Outcome::clean_if(false), Outcome::Findings);
    }
}
