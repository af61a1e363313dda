//! Property tests: analyze never panics; planted secrets never leak; .env round-trips.

mod common;

use common::*;
use driftwatch_formats::{FileStatus, Format, Limits, analyze};
use driftwatch_proto::v1::value::Kind;
use proptest::prelude::*;

const FORMATS: [Format; 11] = [
    Format::Env,
    Format::Ini,
    Format::Yaml,
    Format::Json,
    Format::Toml,
    Format::Keyword,
    Format::Sysctl,
    Format::Nginx,
    Format::Systemd,
    Format::Text,
    Format::Unspecified,
];

fn any_format() -> impl Strategy<Value = Format> {
    prop::sample::select(FORMATS.to_vec())
}

/// Text that looks a bit like config files, to get past the first byte of each parser.
fn configish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("\n".to_string()),
            Just("  ".to_string()),
            Just("=".to_string()),
            Just(": ".to_string()),
            Just("- ".to_string()),
            Just("[".to_string()),
            Just("]".to_string()),
            Just("{".to_string()),
            Just("}".to_string()),
            Just(",".to_string()),
            Just("\"".to_string()),
            Just("'".to_string()),
            Just("#".to_string()),
            Just(";".to_string()),
            Just("\\".to_string()),
            Just("export ".to_string()),
            Just("<<: *a".to_string()),
            Just("&a ".to_string()),
            Just("---\n".to_string()),
            Just("!tag ".to_string()),
            Just("\u{feff}".to_string()),
            Just("\r\n".to_string()),
            "[a-zA-Z_][a-zA-Z0-9_.]{0,8}",
            "-?[0-9]{1,22}(\\.[0-9]{1,3})?",
            "[ -~]{0,6}",
            any::<char>().prop_map(String::from),
        ],
        0..60,
    )
    .prop_map(|parts| parts.concat())
}

fn check_invariants(content: &[u8], format: Format) {
    let m = masker();
    let a = analyze(content, format, &m, &Limits::default());
    assert_eq!(a.content_hash, m.content_hash(content));
    match a.status {
        FileStatus::Ok => assert!(a.error.is_none()),
        FileStatus::ParseError => {
            let e = a.error.as_ref().expect("parse error has an error");
            assert!(!e.message.is_empty());
            assert!(e.message.chars().count() <= 200);
        }
        FileStatus::Binary | FileStatus::HashOnly => assert!(a.keys.is_empty() && a.error.is_none()),
        other => panic!("unexpected status {other:?}"),
    }
    // Unique keys.
    let mut seen = std::collections::HashSet::new();
    for kv in &a.keys {
        assert!(seen.insert(kv.key.as_str()), "duplicate key {:?}", kv.key);
        assert!(kv.value.as_ref().and_then(|v| v.kind.as_ref()).is_some());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_on_arbitrary_bytes(content in prop::collection::vec(any::<u8>(), 0..512), format in any_format()) {
        check_invariants(&content, format);
    }

    #[test]
    fn never_panics_on_arbitrary_strings(content in any::<String>(), format in any_format()) {
        check_invariants(content.as_bytes(), format);
    }

    #[test]
    fn never_panics_on_config_like_text(content in configish()) {
        for format in FORMATS {
            check_invariants(content.as_bytes(), format);
        }
    }
}

fn secret_key_name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "password",
        "PASSWORD",
        "db_password",
        "DB_PASSWORD",
        "api_key",
        "API_KEY",
        "apiKey",
        "clientSecret",
        "client_secret",
        "secret",
        "token",
        "access_token",
        "GITHUB_TOKEN",
        "private_key",
        "passphrase",
        "auth",
        "SMTP_PASS",
        "credentials",
    ])
}

/// A secret value; "Canary" makes sure no format reads it as a number or bool.
fn canary() -> impl Strategy<Value = String> {
    "[A-Za-z0-9]{12,40}".prop_map(|s| format!("Canary{s}"))
}

/// The same key/secret written in each format, in a few styles.
fn documents(key: &str, secret: &str) -> Vec<(String, Format)> {
    vec![
        (format!("OTHER=1\n{key}={secret}\nLAST=x\n"), Format::Env),
        (format!("export {key}=\"{secret}\" # comment\n"), Format::Env),
        (format!("{key}='{secret}'\n"), Format::Env),
        (format!("[section]\nother = 1\n{key} = {secret}\n"), Format::Ini),
        (format!("{key}: \"{secret}\"\n"), Format::Ini),
        (format!("a:\n  other: 1\n  {key}: {secret}\n"), Format::Yaml),
        (format!("list:\n  - {key}: '{secret}'\n"), Format::Yaml),
        (format!("{{\"a\": {{\"{key}\": \"{secret}\", \"n\": [1]}}}}"), Format::Json),
        (format!("[{{\"{key}\": \"{secret}\"}}]"), Format::Json),
        (format!("[a]\n{key} = \"{secret}\"\n"), Format::Toml),
        (format!("a = {{ {key} = '{secret}' }}\n"), Format::Toml),
        (format!("Port 22\n{key} {secret}\n"), Format::Keyword),
        (format!("Match User a\n  {key}=\"{secret}\"\n"), Format::Keyword),
        (format!("kernel.x = 1\napp.{key} = {secret}\n"), Format::Sysctl),
        (format!("http {{ server {{ {key} \"{secret}\"; }} }}\n"), Format::Nginx),
        (format!("[Service]\nUser=x\n{key}={secret}\n"), Format::Systemd),
        (format!("[Service]\nEnvironment=A=1 \"{key}={secret}\"\n"), Format::Systemd),
    ]
}

/// The secret on a line that does not parse.
fn broken_documents(key: &str, secret: &str) -> Vec<(String, Format)> {
    vec![
        (format!("A=1\n{key} {secret}\n"), Format::Env),
        (format!("A=1\n{key}=\"{secret}\n"), Format::Env),
        (format!("{key}=\"{secret}\"{secret}\n"), Format::Env),
        (format!("[{secret}\n{key} = 1\n"), Format::Ini),
        (format!("[s]\n{secret}\n"), Format::Ini),
        (format!("{key}: \"{secret}\n"), Format::Yaml),
        (format!("{key}: [{secret}\n"), Format::Yaml),
        (format!("{key}: !!int {secret}\n"), Format::Yaml),
        (format!("{secret}: a: b\n"), Format::Yaml),
        (format!("{{\"{key}\": {secret}}}"), Format::Json),
        (format!("{{\"{key}\": \"{secret}}}"), Format::Json),
        (format!("{key} = {secret}\n"), Format::Toml),
        (format!("{key} = \"{secret}\n"), Format::Toml),
        (format!("{key} = \"{secret}\" {secret}\n"), Format::Toml),
        (format!("{key} \"{secret}\n"), Format::Keyword),
        (format!("a = 1\n{secret}\n"), Format::Sysctl),
        (format!("http {{ {key} {secret} }}\n"), Format::Nginx),
        (format!("http {{ {key} \"{secret}\"{secret}; }}\n"), Format::Nginx),
        (format!("{key}={secret}\n"), Format::Systemd),
        (format!("[Service]\nEnvironment=\"{key}={secret}\n"), Format::Systemd),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn planted_secrets_never_leak(key in secret_key_name(), secret in canary()) {
        for (text, format) in documents(key, &secret) {
            let a = run(&text, format);
            prop_assert_eq!(a.status, FileStatus::Ok, "{:?} {:?}: {:?}", format, text, a.error);
            let debug = format!("{a:?}");
            prop_assert!(!debug.contains(&secret), "{:?} leaked {}: {}", format, secret, debug);
            prop_assert!(!debug.contains("Canary"), "{:?}: {}", format, debug);
            prop_assert_eq!(masked_keys(&a).len(), 1, "{:?} {:?}", format, text);
            let masked = masked_keys(&a)[0].to_string();
            prop_assert_eq!(masked_fingerprint(&a, &masked), masker().fingerprint(secret.as_bytes()));
        }
    }

    #[test]
    fn secrets_on_broken_lines_never_leak(key in secret_key_name(), secret in canary()) {
        for (text, format) in broken_documents(key, &secret) {
            let a = run(&text, format);
            prop_assert_eq!(a.status, FileStatus::ParseError, "{:?} {:?} parsed", format, text);
            let debug = format!("{a:?}");
            prop_assert!(!debug.contains("Canary"), "{:?} {:?} leaked: {}", format, text, debug);
            let e = a.error.unwrap();
            prop_assert!(e.line >= 1 && e.column >= 1, "{:?} {:?}: {:?}", format, text, e);
        }
    }

    #[test]
    fn any_value_under_a_secret_name_is_masked(key in secret_key_name(), value in "[ -~]{1,40}") {
        // Any printable value, double-quoted with escapes: masked unless it is blank or a
        // reference to a secret (`$VAR`, `/path/to/file`, `{{ template }}`).
        let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
        let a = run(&format!("{key}=\"{escaped}\"\n"), Format::Env);
        prop_assert_eq!(a.status, FileStatus::Ok);
        let trimmed = value.trim();
        if masked_keys(&a).is_empty() {
            prop_assert!(
                trimmed.is_empty() || trimmed.starts_with('$') || trimmed.starts_with('/') || trimmed.starts_with("~/") || trimmed.starts_with("{{"),
                "{} = {:?} not masked", key, value
            );
        } else {
            prop_assert_eq!(masked_fingerprint(&a, key), masker().fingerprint(value.as_bytes()));
        }
    }
}

fn env_entries() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(("[A-Z_][A-Z0-9_]{0,15}", "[a-zA-Z0-9_./:@+-]{0,30}"), 0..30).prop_map(|pairs| {
        let mut seen = std::collections::HashSet::new();
        pairs.into_iter().filter(|(k, _)| seen.insert(k.clone())).collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn env_round_trips_keys_in_order(entries in env_entries(), crlf in any::<bool>(), export in any::<bool>()) {
        let newline = if crlf { "\r\n" } else { "\n" };
        let text: String = entries
            .iter()
            .map(|(k, v)| format!("{}{k}={v}{newline}", if export { "export " } else { "" }))
            .collect();
        let a = ok(&text, Format::Env);
        let want: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
        prop_assert_eq!(keys(&a), want);
        for ((_, raw), kv) in entries.iter().zip(&a.keys) {
            match kv.value.as_ref().and_then(|v| v.kind.as_ref()).unwrap() {
                Kind::StringValue(s) => prop_assert_eq!(s, raw),
                Kind::IntValue(i) => prop_assert_eq!(raw.parse::<i64>().ok(), Some(*i)),
                Kind::FloatValue(f) => prop_assert_eq!(raw.parse::<f64>().ok(), Some(*f)),
                Kind::BoolValue(b) => prop_assert_eq!(raw.to_ascii_lowercase(), b.to_string()),
                Kind::Masked(m) => prop_assert_eq!(&m.fingerprint, &masker().fingerprint(raw.as_bytes())),
                Kind::NullValue(_) => prop_assert!(false, "env values are never null"),
            }
        }
    }

    #[test]
    fn env_double_quoted_values_round_trip(entries in prop::collection::vec(("[A-Z][A-Z0-9_]{0,10}", "[ -~\n]{0,30}"), 1..10)) {
        let mut seen = std::collections::HashSet::new();
        let entries: Vec<_> = entries.into_iter().filter(|(k, _)| seen.insert(k.clone())).collect();
        let text: String = entries
            .iter()
            .map(|(k, v)| {
                let escaped = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                format!("{k}=\"{escaped}\"\n")
            })
            .collect();
        let a = ok(&text, Format::Env);
        prop_assert_eq!(a.keys.len(), entries.len());
        for ((k, raw), kv) in entries.iter().zip(&a.keys) {
            prop_assert_eq!(&kv.key, k);
            match kv.value.as_ref().and_then(|v| v.kind.as_ref()).unwrap() {
                Kind::StringValue(s) => prop_assert_eq!(s, raw),
                Kind::Masked(m) => prop_assert_eq!(&m.fingerprint, &masker().fingerprint(raw.as_bytes())),
                other => prop_assert!(false, "quoted value typed as {:?}", other),
            }
        }
    }

    #[test]
    fn json_objects_keep_file_order(entries in prop::collection::vec(("[a-z]{1,8}", any::<i32>()), 0..20)) {
        let mut seen = std::collections::HashSet::new();
        let entries: Vec<_> = entries.into_iter().filter(|(k, _)| seen.insert(k.clone())).collect();
        let body: Vec<String> = entries.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
        let a = ok(&format!("{{{}}}", body.join(", ")), Format::Json);
        let want: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
        prop_assert_eq!(keys(&a), want);
    }
}
