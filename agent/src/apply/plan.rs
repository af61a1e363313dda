//! The pure steps of applying a change (2 to 4 of the pipeline in `mod.rs`): check
//! the expected hash, build the new content (key edits in the file's own syntax, or
//! a backup by hash), check that it parses, and diff it. No file system: the caller
//! hands in the current content and a way to look up backups, so the same steps
//! serve the agent and anything that must answer exactly as the agent does.

use driftwatch_formats::{EditError, EditOp, FileStatus, Format, Limits, Masker, NewValue};
use driftwatch_proto::v1::{ApplyChange, ChangeOutcome, ChangeResult};

use super::backup::short;

/// What a change asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Keys to set or remove, edited in place.
    Edit,
    /// Earlier content, by its hash, from the backup store.
    Restore,
}

/// The shape of the change itself, before anything is read: an id, and exactly one
/// kind of change.
pub fn validate(c: &ApplyChange) -> Result<Kind, &'static str> {
    if c.change_id.is_empty() {
        return Err("the change has no change_id");
    }
    let edits = !c.set_keys.is_empty() || !c.set_text.is_empty() || !c.remove_keys.is_empty();
    let restore = !c.restore_hash.is_empty();
    match (edits, restore) {
        (true, true) => Err("a change is either key edits or restore_hash, not both"),
        (false, false) => Err("the change asks for nothing (no keys to set or remove, no restore_hash)"),
        (true, false) => Ok(Kind::Edit),
        (false, true) => Ok(Kind::Restore),
    }
}

/// A backup's content by hash; `Ok(None)` when there is none.
pub type BackupLookup<'a> = &'a dyn Fn(&str) -> Result<Option<Vec<u8>>, String>;

/// The file as it is, and the backups it could be restored from.
pub struct Held<'a> {
    pub format: Format,
    /// `None`: the file does not exist.
    pub content: Option<&'a [u8]>,
    pub backup: BackupLookup<'a>,
}

/// Where planning left the change.
#[derive(Debug)]
pub enum Planned {
    /// Nothing to write: refused, a conflict, unchanged, or a dry run (with its diff).
    Ended {
        result: ChangeResult,
        outcome: ChangeOutcome,
        message: String,
        /// What to log instead of `message` when that may quote a value (edit errors).
        log_message: Option<String>,
    },
    /// Write `new` (its keyed hash `after_hash`); `result` holds the before hash and the diff.
    Write { result: ChangeResult, new: Vec<u8>, after_hash: String },
}

fn ended(result: ChangeResult, outcome: ChangeOutcome, message: impl Into<String>) -> Planned {
    Planned::Ended { result, outcome, message: message.into(), log_message: None }
}

/// Steps 2 to 4 for a change that passed [`validate`]; `r` carries the change id and path.
pub fn plan(c: &ApplyChange, mut r: ChangeResult, held: Held<'_>, masker: &Masker, limits: &Limits) -> Planned {
    let restore = !c.restore_hash.is_empty();
    r.before_hash = held.content.map(|b| masker.fingerprint(b)).unwrap_or_default();

    // 2. The expected hash.
    if c.expected_hash.is_empty() {
        // A restore of a missing file: the server's view of it has no hash either.
        let recreate = restore && held.content.is_none();
        if !c.dry_run && !recreate {
            return ended(r, ChangeOutcome::Rejected, "expected_hash is required (only a dry run may omit it)");
        }
    } else if c.expected_hash != r.before_hash {
        let m = if held.content.is_none() {
            format!("the file does not exist (expected hash {}); nothing written", short(&c.expected_hash))
        } else {
            format!(
                "the file changed: expected hash {}, found {}; nothing written",
                short(&c.expected_hash),
                short(&r.before_hash)
            )
        };
        return ended(r, ChangeOutcome::Conflict, m);
    }

    // 3. The new content.
    let format = held.format;
    let new: Vec<u8> = if restore {
        match (held.backup)(&c.restore_hash) {
            Ok(Some(b)) => b,
            Ok(None) => {
                return ended(r, ChangeOutcome::Rejected, format!("no backup with hash {}", short(&c.restore_hash)));
            }
            Err(e) => return ended(r, ChangeOutcome::Failed, e),
        }
    } else {
        let Some(old) = held.content else {
            return ended(r, ChangeOutcome::Rejected, "the file does not exist; only restore_hash can create it");
        };
        let Ok(text) = std::str::from_utf8(old) else {
            return ended(r, ChangeOutcome::Rejected, "the file is not UTF-8 text; keys cannot be edited");
        };
        let ops = match edit_ops(c) {
            Ok(ops) => ops,
            Err(m) => return ended(r, ChangeOutcome::Rejected, m),
        };
        match driftwatch_formats::edit(format, text, &ops) {
            Ok(s) => s.into_bytes(),
            Err(e) => {
                let log_message = Some(edit_error_label(&e));
                return Planned::Ended {
                    result: r,
                    outcome: ChangeOutcome::Rejected,
                    message: e.to_string(),
                    log_message,
                };
            }
        }
    };
    if format != Format::Text {
        let a = driftwatch_formats::analyze(&new, format, masker, limits);
        let what = if restore { "the backup" } else { "the result" };
        let name = driftwatch_proto::format_name(format as i32);
        match a.status {
            FileStatus::ParseError => {
                let e = a.error.unwrap_or_default();
                let at = if e.line > 0 { format!(" (line {}, column {})", e.line, e.column) } else { String::new() };
                let m = format!("{what} would not parse as {name}: {}{at}", e.message);
                return ended(r, ChangeOutcome::Rejected, m);
            }
            FileStatus::Binary => return ended(r, ChangeOutcome::Rejected, format!("{what} is not text ({name})")),
            FileStatus::TooLarge => {
                return ended(r, ChangeOutcome::Rejected, format!("{what} is larger than max_file_bytes"));
            }
            _ => {}
        }
    }
    let after_hash = masker.fingerprint(&new);
    if held.content.is_some_and(|old| old == new) {
        return ended(r, ChangeOutcome::Unchanged, "the file already has this content; nothing written");
    }
    let old_bytes = held.content.unwrap_or_default();
    r.diff = match (std::str::from_utf8(old_bytes), std::str::from_utf8(&new)) {
        (Ok(a), Ok(b)) => driftwatch_formats::unified_diff(&c.path, a, b, masker),
        _ => "(binary content: no diff)\n".into(),
    };

    // 4. A dry run stops here.
    if c.dry_run {
        r.after_hash = after_hash;
        return ended(r, ChangeOutcome::DryRun, "dry run: nothing written");
    }
    Planned::Write { result: r, new, after_hash }
}

/// The edit operations of a key change: typed values, operator text, removals.
fn edit_ops(c: &ApplyChange) -> Result<Vec<EditOp>, String> {
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

/// A short label for an edit error, for the log (the message itself may quote a value).
fn edit_error_label(e: &EditError) -> String {
    match e {
        EditError::Unsupported { format, .. } => format!("format {format} cannot be edited in place"),
        EditError::UnknownKey(k) => format!("unknown key {k}"),
        EditError::Masked(_) => "a masked value was sent".into(),
        EditError::InvalidInput(_) => "invalid input".into(),
        EditError::Verification(_) => "the edited file did not verify".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftwatch_proto::v1::KeyValue;

    const OLD: &str = "# app\nPORT=8080\n";

    fn change(f: impl FnOnce(&mut ApplyChange)) -> ApplyChange {
        let mut c = ApplyChange { change_id: "c1".into(), path: "/etc/app.env".into(), ..Default::default() };
        f(&mut c);
        c
    }

    fn held<'a>(content: Option<&'a [u8]>, backup: BackupLookup<'a>) -> Held<'a> {
        Held { format: Format::Env, content, backup }
    }

    fn outcome(p: &Planned) -> ChangeOutcome {
        match p {
            Planned::Ended { outcome, .. } => *outcome,
            Planned::Write { .. } => ChangeOutcome::Applied,
        }
    }

    #[test]
    fn a_change_is_one_kind_with_an_id() {
        assert_eq!(validate(&change(|c| c.remove_keys = vec!["A".into()])), Ok(Kind::Edit));
        assert_eq!(validate(&change(|c| c.restore_hash = "h".into())), Ok(Kind::Restore));
        assert!(validate(&change(|_| {})).unwrap_err().contains("asks for nothing"));
        let both = change(|c| {
            c.restore_hash = "h".into();
            c.set_text.insert("A".into(), "1".into());
        });
        assert!(validate(&both).unwrap_err().contains("not both"));
        assert!(validate(&change(|c| c.change_id.clear())).unwrap_err().contains("change_id"));
    }

    #[test]
    fn an_edit_plans_the_write_with_its_diff() {
        let m = Masker::new(b"0123456789abcdef");
        let none = |_: &str| Ok(None);
        let c = change(|c| {
            c.expected_hash = m.fingerprint(OLD.as_bytes());
            c.set_text.insert("PORT".into(), "9090".into());
        });
        let r = ChangeResult::default();
        let Planned::Write { result, new, after_hash } =
            plan(&c, r, held(Some(OLD.as_bytes()), &none), &m, &Limits::default())
        else {
            panic!("not a write")
        };
        assert_eq!(String::from_utf8(new.clone()).unwrap(), "# app\nPORT=9090\n", "comments kept");
        assert_eq!(after_hash, m.fingerprint(&new));
        assert_eq!(result.before_hash, m.fingerprint(OLD.as_bytes()));
        assert!(result.diff.contains("-PORT=8080") && result.diff.contains("+PORT=9090"), "{}", result.diff);
    }

    #[test]
    fn refusals_write_nothing_and_say_why() {
        let m = Masker::new(b"0123456789abcdef");
        let none = |_: &str| Ok(None);
        let old = Some(OLD.as_bytes());
        let good = m.fingerprint(OLD.as_bytes());
        let run =
            |c: ApplyChange, content| plan(&c, ChangeResult::default(), held(content, &none), &m, &Limits::default());

        let stale = change(|c| {
            c.expected_hash = "0000".into();
            c.set_text.insert("PORT".into(), "1".into());
        });
        assert_eq!(outcome(&run(stale, old)), ChangeOutcome::Conflict);
        let no_hash = change(|c| {
            c.set_text.insert("PORT".into(), "1".into());
        });
        assert_eq!(outcome(&run(no_hash, old)), ChangeOutcome::Rejected, "only a dry run may omit the hash");
        let same = change(|c| {
            c.expected_hash = good.clone();
            c.set_text.insert("PORT".into(), "8080".into());
        });
        assert_eq!(outcome(&run(same, old)), ChangeOutcome::Unchanged);
        let unknown = change(|c| {
            c.expected_hash = good.clone();
            c.set_keys.push(KeyValue { key: "PORT".into(), value: None });
        });
        assert_eq!(outcome(&run(unknown, old)), ChangeOutcome::Rejected);
        let missing = change(|c| {
            c.dry_run = true;
            c.set_text.insert("PORT".into(), "1".into());
        });
        assert_eq!(outcome(&run(missing, None)), ChangeOutcome::Rejected, "only a restore can create a file");
        let no_backup = change(|c| {
            c.expected_hash = good.clone();
            c.restore_hash = "feed".into();
        });
        let Planned::Ended { message, .. } = run(no_backup, old) else { panic!() };
        assert_eq!(message, "no backup with hash feed");
        let dry = change(|c| {
            c.dry_run = true;
            c.set_text.insert("PORT".into(), "9090".into());
        });
        let Planned::Ended { outcome, result, .. } = run(dry, old) else { panic!("a dry run writes nothing") };
        assert_eq!(outcome, ChangeOutcome::DryRun);
        assert!(result.diff.contains("+PORT=9090"));
    }

    #[test]
    fn a_restore_takes_the_backup_and_may_recreate_a_missing_file() {
        let m = Masker::new(b"0123456789abcdef");
        let backup = |h: &str| Ok((h == "old").then(|| OLD.as_bytes().to_vec()));
        let c = change(|c| c.restore_hash = "old".into());
        let p = plan(&c, ChangeResult::default(), held(None, &backup), &m, &Limits::default());
        let Planned::Write { new, result, .. } = p else { panic!("recreated") };
        assert_eq!(new, OLD.as_bytes());
        assert!(result.before_hash.is_empty());
        let failing = |_: &str| Err("disk on fire".to_string());
        let p = plan(&c, ChangeResult::default(), held(None, &failing), &m, &Limits::default());
        assert_eq!(outcome(&p), ChangeOutcome::Failed);
    }
}
