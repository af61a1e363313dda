//! The pure steps of applying a change (3 to 6 of the pipeline in `mod.rs`): refuse key
//! edits that touch a secret, check the expected hash, build the new content (key edits
//! in the file's own syntax, or a backup by hash), check that it parses, and diff it. No
//! file system: the caller hands in the current content and a way to look up backups, so
//! the same steps serve the agent and anything that must answer exactly as the agent does.

use driftwatch_formats::{EditError, EditOp, FileStatus, Format, Limits, Masker, NewValue, Value};
use driftwatch_proto::v1::value::Kind as ValueKind;
use driftwatch_proto::v1::{ApplyChange, ChangeOutcome, ChangeResult};

pub use super::backup::Lookup;
use super::backup::short;

/// How a refused secret edit ends, after saying which key and why.
const ONLY_BY_RESTORE: &str = "the agent never writes a secret from a key edit: the only remote way to change it is RestoreVersion of a \
     backup of this same file";

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

/// A backup's content by hash, for a restore of this file.
pub type BackupLookup<'a> = &'a dyn Fn(&str) -> Lookup;

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

/// Steps 3 to 6 for a change that passed [`validate`]; `r` carries the change id and path.
pub fn plan(c: &ApplyChange, mut r: ChangeResult, held: Held<'_>, masker: &Masker, limits: &Limits) -> Planned {
    let restore = !c.restore_hash.is_empty();
    r.before_hash = held.content.map(|b| masker.content_hash(b)).unwrap_or_default();

    // 3. Secrets: before anything is compared, so that no answer (not even "unchanged"
    // to a dry run) tells anything about a secret value.
    if !restore && let Err(m) = touches_no_secret(c, held.format, held.content, masker) {
        return ended(r, ChangeOutcome::Refused, m);
    }

    // 4. The expected hash.
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

    // 5. The new content.
    let format = held.format;
    let new: Vec<u8> = if restore {
        match (held.backup)(&c.restore_hash) {
            Lookup::Found(b) => b,
            Lookup::Missing => {
                return ended(r, ChangeOutcome::Rejected, format!("no backup with hash {}", short(&c.restore_hash)));
            }
            Lookup::Refused(m) => return ended(r, ChangeOutcome::Refused, format!("{m}; nothing written")),
            Lookup::Failed(e) => return ended(r, ChangeOutcome::Failed, e),
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
        // A value the masker hides in the result was not caught above (typing): refused too.
        if !restore && let Some(kv) = a.keys.iter().find(|kv| is_set(c, &kv.key) && is_masked(kv.value.as_ref())) {
            let m = format!("the new value for '{}' would be masked as a secret; {ONLY_BY_RESTORE}", kv.key);
            return ended(r, ChangeOutcome::Refused, m);
        }
    }
    let after_hash = masker.content_hash(&new);
    if held.content.is_some_and(|old| old == new) {
        return ended(r, ChangeOutcome::Unchanged, "the file already has this content; nothing written");
    }
    let old_bytes = held.content.unwrap_or_default();
    r.diff = match (std::str::from_utf8(old_bytes), std::str::from_utf8(&new)) {
        (Ok(a), Ok(b)) => driftwatch_formats::unified_diff(&c.path, a, b, masker),
        _ => "(binary content: no diff)\n".into(),
    };

    // 6. A dry run stops here.
    if c.dry_run {
        r.after_hash = after_hash;
        return ended(r, ChangeOutcome::DryRun, "dry run: nothing written");
    }
    Planned::Write { result: r, new, after_hash }
}

fn is_masked(v: Option<&Value>) -> bool {
    matches!(v.and_then(|v| v.kind.as_ref()), Some(ValueKind::Masked(_)))
}

/// Whether the change sets `key`.
fn is_set(c: &ApplyChange, key: &str) -> bool {
    c.set_keys.iter().any(|kv| kv.key == key) || c.set_text.contains_key(key)
}

/// Whether two key paths overlap: the same key, or one inside the other (`db` and
/// `db.password`, `hosts` and `hosts[0]`).
fn overlaps(a: &str, b: &str) -> bool {
    let inside = |long: &str, short: &str| {
        long.strip_prefix(short).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    };
    a == b || inside(a, b) || inside(b, a)
}

/// A key edit may neither touch a key whose current value the agent masks (set or
/// remove it, or a key above or below it) nor set a value that looks secret itself.
/// The error names the key and the rule, never a value.
pub fn touches_no_secret(
    c: &ApplyChange,
    format: Format,
    content: Option<&[u8]>,
    masker: &Masker,
) -> Result<(), String> {
    masked_keys_untouched(c, format, content, masker)?;
    let texts = c.set_text.iter().map(|(k, t)| (k.as_str(), Some(t.clone())));
    let typed = c.set_keys.iter().map(|kv| {
        let text = match kv.value.as_ref().and_then(|v| v.kind.as_ref()) {
            Some(ValueKind::StringValue(s)) => Some(s.clone()),
            Some(ValueKind::IntValue(i)) => Some(i.to_string()),
            Some(ValueKind::FloatValue(f)) => Some(f.to_string()),
            // null and bool are never secret; a masked value cannot be written at all
            // (the edit says so).
            _ => None,
        };
        (kv.key.as_str(), text)
    });
    for (key, text) in texts.chain(typed) {
        if let Some(reason) = text.and_then(|t| driftwatch_formats::secret_reason(key, &t)) {
            return Err(format!("the new value for '{key}' looks like a secret ({reason}); {ONLY_BY_RESTORE}"));
        }
    }
    Ok(())
}

/// No key the change names overlaps a key whose current value is masked.
fn masked_keys_untouched(
    c: &ApplyChange,
    format: Format,
    content: Option<&[u8]>,
    masker: &Masker,
) -> Result<(), String> {
    let Some(content) = content else { return Ok(()) };
    if matches!(format, Format::Text | Format::Unspecified) {
        return Ok(()); // no keys: the edit is refused as unsupported
    }
    // Every key, however many (as the edit itself reads the file).
    let all = Limits { max_file_bytes: u64::MAX, max_keys: usize::MAX, max_depth: usize::MAX };
    let current = driftwatch_formats::analyze(content, format, masker, &all);
    if current.status != FileStatus::Ok {
        return Ok(()); // the edit cannot be made either: it reads the file the same way
    }
    let touched = c.set_keys.iter().map(|kv| kv.key.as_str()).chain(c.set_text.keys().map(String::as_str));
    for key in touched.chain(c.remove_keys.iter().map(String::as_str)) {
        let secret = current.keys.iter().find(|kv| is_masked(kv.value.as_ref()) && overlaps(&kv.key, key));
        if let Some(kv) = secret {
            let reason = match kv.value.as_ref().and_then(|v| v.kind.as_ref()) {
                Some(ValueKind::Masked(m)) if !m.reason.is_empty() => m.reason.as_str(),
                _ => "masked",
            };
            let which = if kv.key == key { format!("'{key}'") } else { format!("'{key}' (through '{}')", kv.key) };
            return Err(format!("the current value of {which} is a secret ({reason}); {ONLY_BY_RESTORE}"));
        }
    }
    Ok(())
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
        let none = |_: &str| Lookup::Missing;
        let c = change(|c| {
            c.expected_hash = m.content_hash(OLD.as_bytes());
            c.set_text.insert("PORT".into(), "9090".into());
        });
        let r = ChangeResult::default();
        let Planned::Write { result, new, after_hash } =
            plan(&c, r, held(Some(OLD.as_bytes()), &none), &m, &Limits::default())
        else {
            panic!("not a write")
        };
        assert_eq!(String::from_utf8(new.clone()).unwrap(), "# app\nPORT=9090\n", "comments kept");
        assert_eq!(after_hash, m.content_hash(&new));
        assert_eq!(result.before_hash, m.content_hash(OLD.as_bytes()));
        assert!(result.diff.contains("-PORT=8080") && result.diff.contains("+PORT=9090"), "{}", result.diff);
    }

    #[test]
    fn refusals_write_nothing_and_say_why() {
        let m = Masker::new(b"0123456789abcdef");
        let none = |_: &str| Lookup::Missing;
        let old = Some(OLD.as_bytes());
        let good = m.content_hash(OLD.as_bytes());
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
        let backup = |h: &str| if h == "old" { Lookup::Found(OLD.as_bytes().to_vec()) } else { Lookup::Missing };
        let c = change(|c| c.restore_hash = "old".into());
        let p = plan(&c, ChangeResult::default(), held(None, &backup), &m, &Limits::default());
        let Planned::Write { new, result, .. } = p else { panic!("recreated") };
        assert_eq!(new, OLD.as_bytes());
        assert!(result.before_hash.is_empty());
        let failing = |_: &str| Lookup::Failed("disk on fire".to_string());
        let p = plan(&c, ChangeResult::default(), held(None, &failing), &m, &Limits::default());
        assert_eq!(outcome(&p), ChangeOutcome::Failed);
        // Another file's version: refused, with the store's reason.
        let elsewhere = |_: &str| Lookup::Refused("version old was backed up from /a, not /b".into());
        let p = plan(&c, ChangeResult::default(), held(None, &elsewhere), &m, &Limits::default());
        let Planned::Ended { outcome, message, .. } = p else { panic!("refused") };
        assert_eq!(outcome, ChangeOutcome::Refused);
        assert!(message.contains("backed up from /a, not /b"), "{message}");
    }

    type Edit = Box<dyn FnOnce(&mut ApplyChange)>;

    const WITH_SECRETS: &str = "PORT=8080\nDB_PASSWORD=hunter2hunter2\nDATABASE_URL=postgres://app:s3cretpass@db/app\n";

    /// A change against [`WITH_SECRETS`]; its outcome and message.
    fn against_secrets(f: impl FnOnce(&mut ApplyChange)) -> (ChangeOutcome, String, ChangeResult) {
        let m = Masker::new(b"0123456789abcdef");
        let none = |_: &str| Lookup::Missing;
        let c = change(|c| {
            c.expected_hash = m.content_hash(WITH_SECRETS.as_bytes());
            f(c)
        });
        match plan(&c, ChangeResult::default(), held(Some(WITH_SECRETS.as_bytes()), &none), &m, &Limits::default()) {
            Planned::Ended { outcome, message, result, .. } => (outcome, message, result),
            Planned::Write { result, .. } => (ChangeOutcome::Applied, String::new(), result),
        }
    }

    #[test]
    fn a_key_whose_value_is_masked_is_never_edited() {
        let text = |k: &str, v: &str| [(k.to_string(), v.to_string())].into();
        let cases: Vec<(&str, Edit)> = vec![
            ("set by key name", Box::new(move |c: &mut ApplyChange| c.set_text = text("DB_PASSWORD", "other"))),
            (
                "set by value",
                Box::new(move |c: &mut ApplyChange| c.set_text = text("DATABASE_URL", "postgres://db/app")),
            ),
            (
                "typed",
                Box::new(|c: &mut ApplyChange| {
                    c.set_keys = vec![KeyValue { key: "DATABASE_URL".into(), value: Some(Value::string("x")) }]
                }),
            ),
            ("removed", Box::new(|c: &mut ApplyChange| c.remove_keys = vec!["DB_PASSWORD".into()])),
        ];
        for (what, f) in cases {
            let (outcome, message, result) = against_secrets(f);
            assert_eq!(outcome, ChangeOutcome::Refused, "{what}: {message}");
            assert!(message.contains("RestoreVersion") && message.contains("same file"), "{what}: {message}");
            assert!(message.contains("DB_PASSWORD") || message.contains("DATABASE_URL"), "{what}: {message}");
            assert!(!message.contains("hunter2") && !message.contains("s3cretpass"), "{what}: {message}");
            assert!(result.diff.is_empty(), "{what}: no diff");
        }
        // A dry run with the same value as now: refused, never "unchanged" (that would
        // confirm a guess), and no diff.
        let (outcome, message, result) = against_secrets(|c| {
            c.dry_run = true;
            c.expected_hash.clear();
            c.set_text = text("DB_PASSWORD", "hunter2hunter2");
        });
        assert_eq!(outcome, ChangeOutcome::Refused, "{message}");
        assert!(result.diff.is_empty() && result.after_hash.is_empty());
        // A wrong guess answers exactly the same.
        let (outcome, again, _) = against_secrets(|c| {
            c.dry_run = true;
            c.expected_hash.clear();
            c.set_text = text("DB_PASSWORD", "wrong-guess");
        });
        assert_eq!((outcome, again.replace("wrong-guess", "")), (ChangeOutcome::Refused, message));
        // A stale hash does not come first either.
        let (outcome, _, _) = against_secrets(|c| {
            c.expected_hash = "0".repeat(64);
            c.remove_keys = vec!["DB_PASSWORD".into()];
        });
        assert_eq!(outcome, ChangeOutcome::Refused);
        // Other keys of the same file are edited as usual.
        let (outcome, message, result) = against_secrets(|c| c.set_text = text("PORT", "9090"));
        assert_eq!(outcome, ChangeOutcome::Applied, "{message}");
        assert!(!result.diff.contains("hunter2") && !result.diff.contains("s3cretpass"), "{}", result.diff);
    }

    #[test]
    fn keys_above_and_below_a_masked_key_are_refused() {
        assert!(overlaps("db", "db.password") && overlaps("db.password", "db"));
        assert!(overlaps("hosts", "hosts[0]") && overlaps("a.b", "a.b"));
        assert!(!overlaps("db", "db_password") && !overlaps("db.pass", "db.password"));
        let m = Masker::new(b"0123456789abcdef");
        let yaml = "db:\n  host: x\n  password: hunter2hunter2\n";
        for key in ["db", "db.password.x"] {
            let c = change(|c| c.remove_keys = vec![key.into()]);
            let e = touches_no_secret(&c, Format::Yaml, Some(yaml.as_bytes()), &m).unwrap_err();
            assert!(e.contains(&format!("'{key}' (through 'db.password')")), "{e}");
        }
        let c = change(|c| c.remove_keys = vec!["db.host".into()]);
        assert!(touches_no_secret(&c, Format::Yaml, Some(yaml.as_bytes()), &m).is_ok());
    }

    #[test]
    fn a_new_value_that_looks_secret_is_refused() {
        let text = |k: &str, v: &str| [(k.to_string(), v.to_string())].into();
        for (what, f) in [
            (
                "secret key name",
                Box::new(|c: &mut ApplyChange| c.set_text = text("API_TOKEN", "abc"))
                    as Box<dyn FnOnce(&mut ApplyChange)>,
            ),
            (
                "token shape",
                Box::new(|c: &mut ApplyChange| c.set_text = text("PORT", "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB")),
            ),
            (
                "typed number under a secret name",
                Box::new(|c: &mut ApplyChange| {
                    c.set_keys = vec![KeyValue { key: "NEW_PIN".into(), value: Some(Value::int(1234)) }]
                }),
            ),
        ] {
            let (outcome, message, _) = against_secrets(f);
            assert_eq!(outcome, ChangeOutcome::Refused, "{what}: {message}");
            assert!(message.contains("looks like a secret") && message.contains("RestoreVersion"), "{what}: {message}");
            assert!(!message.contains("ghp_"), "{what}: {message}");
        }
        // A key that only refers to a secret is fine.
        let (outcome, message, _) = against_secrets(|c| c.set_text = text("TOKEN_FILE", "/run/secrets/token"));
        assert_eq!(outcome, ChangeOutcome::Applied, "{message}");
    }
}
