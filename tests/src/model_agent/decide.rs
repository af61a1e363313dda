//! What an agent answers to one `ApplyChange`, without a disk: the steps of the real
//! agent's pipeline that do not touch the file system are the agent's own
//! (`driftwatch_agent::apply::plan`: expected hash, format-preserving edit, parse
//! check, masked diff), so the model cannot drift from it.
//!
//! Left out, because they are I/O: the allowlist's path resolution (the model may write
//! its one file and nothing else), reading the file, the backup store on disk, the
//! atomic write, and reload/health commands (a model file has none).

use std::collections::HashMap;

use driftwatch_agent::apply::plan;
use driftwatch_formats::{Format, Limits, Masker};
use driftwatch_proto::v1::{self, ChangeOutcome};

/// What the agent makes of one change.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub result: v1::ChangeResult,
    /// The new content, when the change is written (the agent backs up the old and the
    /// new content first).
    pub written: Option<Vec<u8>>,
}

/// The file an agent holds.
#[derive(Debug, Clone, Copy)]
pub struct Held<'a> {
    pub path: &'a str,
    pub format: Format,
    pub content: &'a [u8],
    /// The agent's backup store: content by its keyed hash.
    pub backups: &'a HashMap<String, Vec<u8>>,
}

fn end(mut r: v1::ChangeResult, outcome: ChangeOutcome, message: impl Into<String>) -> Decision {
    r.outcome = outcome as i32;
    r.message = message.into();
    if r.after_hash.is_empty() {
        r.after_hash = r.before_hash.clone();
    }
    Decision { result: r, written: None }
}

/// The agent's answer to `c` for the file `held`, hashing and masking with `masker`.
pub fn decide(masker: &Masker, held: Held<'_>, c: &v1::ApplyChange) -> Decision {
    let r = v1::ChangeResult { change_id: c.change_id.clone(), path: c.path.clone(), ..Default::default() };
    // 1. The allowlist: this agent may write its one file.
    if c.path != held.path {
        return end(r, ChangeOutcome::Refused, format!("'{}' is not inside the writable paths", c.path));
    }
    if let Err(m) = plan::validate(c) {
        return end(r, ChangeOutcome::Rejected, m);
    }
    // 2.–4. The agent's own pure steps.
    // Every backup of the model is of its one file.
    let backup = |hash: &str| match held.backups.get(hash) {
        Some(b) => plan::Lookup::Found(b.clone()),
        None => plan::Lookup::Missing,
    };
    let file = plan::Held { format: held.format, content: Some(held.content), backup: &backup };
    match plan::plan(c, r, file, masker, &Limits::default()) {
        plan::Planned::Ended { result, outcome, message, .. } => end(result, outcome, message),
        // 5.–7. Backed up, written; a model file has no reload or health command.
        plan::Planned::Write { mut result, new, after_hash } => {
            result.after_hash = after_hash;
            result.backup_hash = result.before_hash.clone();
            let mut d = end(result, ChangeOutcome::Applied, "applied");
            d.written = Some(new);
            d
        }
    }
}
