//! What an agent answers to one `ApplyChange`, without a disk: the steps of the real
//! agent's pipeline (`driftwatch_agent::apply`) that do not touch the file system, each
//! through the same `driftwatch_formats` call the agent makes (keyed content hash,
//! format-preserving edit, parse check, masked unified diff) and with its messages.
//!
//! Left out, because they are I/O: the allowlist's path resolution (the model may write
//! its one file and nothing else), reading the file, the backup store on disk, the
//! atomic write, and reload/health commands (a model file has none).

use std::collections::HashMap;

use driftwatch_agent::apply::backup::short;
use driftwatch_formats::{EditOp, FileStatus, Format, Limits, Masker, NewValue};
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

/// The edit operations of a key change, as the agent builds them.
fn edit_ops(c: &v1::ApplyChange) -> Result<Vec<EditOp>, String> {
    let mut ops = Vec::with_capacity(c.set_keys.len() + c.set_text.len() + c.remove_keys.len());
    for kv in &c.set_keys {
        let Some(v) = &kv.value else {
            return Err(format!("set_keys: '{}' has no value", kv.key));
        };
        ops.push(EditOp::Set { key: kv.key.clone(), value: NewValue::Typed(v.clone()) });
    }
    for (k, t) in &c.set_text {
        ops.push(EditOp::Set { key: k.clone(), value: NewValue::Text(t.clone()) });
    }
    ops.extend(c.remove_keys.iter().map(|k| EditOp::Remove { key: k.clone() }));
    Ok(ops)
}

/// The agent's answer to `c` for the file `held`, hashing and masking with `masker`.
pub fn decide(masker: &Masker, held: Held<'_>, c: &v1::ApplyChange) -> Decision {
    let r = v1::ChangeResult { change_id: c.change_id.clone(), path: c.path.clone(), ..Default::default() };
    // 1. The allowlist: this agent may write its one file.
    if c.path != held.path {
        return end(r, ChangeOutcome::Refused, format!("'{}' is not inside the writable paths", c.path));
    }
    if c.change_id.is_empty() {
        return end(r, ChangeOutcome::Rejected, "the change has no change_id");
    }
    let edits = !c.set_keys.is_empty() || !c.set_text.is_empty() || !c.remove_keys.is_empty();
    let restore = !c.restore_hash.is_empty();
    if edits && restore {
        return end(r, ChangeOutcome::Rejected, "a change is either key edits or restore_hash, not both");
    }
    if !edits && !restore {
        return end(
            r,
            ChangeOutcome::Rejected,
            "the change asks for nothing (no keys to set or remove, no restore_hash)",
        );
    }
    let mut r = r;
    r.before_hash = masker.fingerprint(held.content);

    // 2. The expected hash.
    if c.expected_hash.is_empty() {
        if !c.dry_run {
            return end(r, ChangeOutcome::Rejected, "expected_hash is required (only a dry run may omit it)");
        }
    } else if c.expected_hash != r.before_hash {
        let m = format!(
            "the file changed: expected hash {}, found {}; nothing written",
            short(&c.expected_hash),
            short(&r.before_hash)
        );
        return end(r, ChangeOutcome::Conflict, m);
    }

    // 3. The new content: from the backups, or the keys edited in place.
    let new: Vec<u8> = if restore {
        match held.backups.get(&c.restore_hash) {
            Some(b) => b.clone(),
            None => return end(r, ChangeOutcome::Rejected, format!("no backup with hash {}", short(&c.restore_hash))),
        }
    } else {
        let Ok(text) = std::str::from_utf8(held.content) else {
            return end(r, ChangeOutcome::Rejected, "the file is not UTF-8 text; keys cannot be edited");
        };
        let ops = match edit_ops(c) {
            Ok(ops) => ops,
            Err(m) => return end(r, ChangeOutcome::Rejected, m),
        };
        match driftwatch_formats::edit(held.format, text, &ops) {
            Ok(s) => s.into_bytes(),
            Err(e) => return end(r, ChangeOutcome::Rejected, e.to_string()),
        }
    };
    if held.format != Format::Text {
        let a = driftwatch_formats::analyze(&new, held.format, masker, &Limits::default());
        let what = if restore { "the backup" } else { "the result" };
        let format = driftwatch_proto::format_name(held.format as i32);
        match a.status {
            FileStatus::ParseError => {
                let e = a.error.unwrap_or_default();
                let at = if e.line > 0 { format!(" (line {}, column {})", e.line, e.column) } else { String::new() };
                let m = format!("{what} would not parse as {format}: {}{at}", e.message);
                return end(r, ChangeOutcome::Rejected, m);
            }
            FileStatus::Binary => return end(r, ChangeOutcome::Rejected, format!("{what} is not text ({format})")),
            FileStatus::TooLarge => {
                return end(r, ChangeOutcome::Rejected, format!("{what} is larger than max_file_bytes"));
            }
            _ => {}
        }
    }
    let after_hash = masker.fingerprint(&new);
    if new == held.content {
        return end(r, ChangeOutcome::Unchanged, "the file already has this content; nothing written");
    }
    r.diff = match (std::str::from_utf8(held.content), std::str::from_utf8(&new)) {
        (Ok(a), Ok(b)) => driftwatch_formats::unified_diff(&c.path, a, b, masker),
        _ => "(binary content: no diff)\n".into(),
    };

    // 4. A dry run stops here.
    r.after_hash = after_hash;
    if c.dry_run {
        return end(r, ChangeOutcome::DryRun, "dry run: nothing written");
    }

    // 5.–7. Backed up, written; a model file has no reload or health command.
    r.backup_hash = r.before_hash.clone();
    let mut d = end(r, ChangeOutcome::Applied, "applied");
    d.written = Some(new);
    d
}
