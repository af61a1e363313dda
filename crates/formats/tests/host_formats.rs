//! The host config formats (keyword, sysctl, nginx, systemd) through `analyze`: detection
//! by name and place, typing, masking, and property tests (never panics, generated
//! configs read back to the keys they were made from).

mod common;

use common::*;
use driftwatch_formats::{
    FileStatus, Format, KeywordDialect, Limits, analyze, analyze_path, detect_format, is_secret_key_name, keyword_keys,
    parse_format_name, parse_keyword,
};
use driftwatch_proto::v1::value::Kind;
use proptest::prelude::*;
use std::path::Path;

#[test]
fn detect_host_formats_by_name_and_place() {
    let cases = [
        ("/etc/ssh/sshd_config", Format::Keyword),
        ("/etc/ssh/ssh_config", Format::Keyword),
        ("/etc/ssh/sshd_config.d/50-cloud-init.conf", Format::Keyword),
        ("/etc/ssh/ssh_config.d/20-systemd-ssh-proxy.conf", Format::Keyword),
        ("/etc/redis/redis.conf", Format::Keyword),
        ("/etc/chrony/chrony.conf", Format::Keyword),
        ("/etc/sysctl.conf", Format::Sysctl),
        ("/etc/sysctl.d/99-tuning.conf", Format::Sysctl),
        ("/usr/lib/sysctl.d/50-default.conf", Format::Sysctl),
        ("/etc/nginx/nginx.conf", Format::Nginx),
        ("/etc/nginx/conf.d/app.conf", Format::Nginx),
        ("/etc/nginx/sites-available/default", Format::Nginx),
        ("/etc/nginx/sites-enabled/example.com", Format::Nginx),
        ("/etc/nginx/snippets/fastcgi-php.conf", Format::Nginx),
        ("/lib/systemd/system/ssh.service", Format::Systemd),
        ("/etc/systemd/system/backup.timer", Format::Systemd),
        ("/etc/systemd/system/docker.socket", Format::Systemd),
        ("/etc/systemd/system/data.mount", Format::Systemd),
        ("/etc/systemd/system/multi-user.target", Format::Systemd),
        ("/etc/systemd/system/x.path", Format::Systemd),
        ("/etc/systemd/system/nginx.service.d/override.conf", Format::Systemd),
        ("/etc/systemd/system/app@.service.d/10-env.conf", Format::Systemd),
        // Not host formats: today's rules.
        ("/etc/app/app.conf", Format::Ini),
        ("/etc/sysctl.d/README", Format::Text),
        ("/etc/nginx/mime.types", Format::Text),
        ("/srv/sites-available/x", Format::Text),
        ("/etc/foo.d/x.conf", Format::Ini),
        ("/etc/systemd/system/nginx.service.d/README", Format::Text),
    ];
    for (path, want) in cases {
        assert_eq!(detect_format(Path::new(path)), want, "{path}");
    }
}

#[test]
fn host_format_names() {
    for (name, want) in [
        ("keyword", Format::Keyword),
        ("SSHD", Format::Keyword),
        ("sysctl", Format::Sysctl),
        ("nginx", Format::Nginx),
        ("systemd", Format::Systemd),
        (" unit ", Format::Systemd),
    ] {
        assert_eq!(parse_format_name(name), Some(want), "{name}");
    }
    assert_eq!(driftwatch_proto::format_name(Format::Keyword as i32), "keyword");
    assert_eq!(driftwatch_proto::format_name(Format::Systemd as i32), "systemd");
}

#[test]
fn values_are_typed_like_ini() {
    let a = ok("Port 22\nPermitRootLogin no\nBanner \"42\"\n", Format::Keyword);
    assert_eq!(kind(&a, "port[0]"), &Kind::IntValue(22));
    assert_eq!(kind(&a, "permitrootlogin"), &Kind::StringValue("no".into()));
    assert_eq!(kind(&a, "banner"), &Kind::StringValue("42".into()));
    let a = ok("net.ipv4.ip_forward = 1\nvm.dirty_ratio = 0.5\n", Format::Sysctl);
    assert_eq!(kind(&a, "net.ipv4.ip_forward"), &Kind::IntValue(1));
    let a = ok("worker_processes 4;\n", Format::Nginx);
    assert_eq!(kind(&a, "worker_processes"), &Kind::IntValue(4));
    let a = ok("[Service]\nLimitNOFILE=65536\nEnvironment=\"N=5\" M=6\n", Format::Systemd);
    assert_eq!(kind(&a, "Service.LimitNOFILE"), &Kind::IntValue(65536));
    assert_eq!(kind(&a, "Service.Environment.N"), &Kind::StringValue("5".into()));
    assert_eq!(kind(&a, "Service.Environment.M"), &Kind::IntValue(6));
}

#[test]
fn redis_dialect_by_path() {
    let text = b"maxmemory 100mb\nmaxmemory 200mb\n";
    let m = masker();
    let sshd = analyze(text, Format::Keyword, &m, &Limits::default());
    assert_eq!(get_value(&sshd, "maxmemory"), "100mb");
    let redis = analyze_path(Path::new("/etc/redis/redis.conf"), text, Format::Keyword, &m, &Limits::default());
    assert_eq!(get_value(&redis, "maxmemory"), "200mb");
}

fn get_value(a: &driftwatch_formats::Analysis, key: &str) -> String {
    match kind(a, key) {
        Kind::StringValue(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

#[test]
fn secrets_are_masked_in_every_host_format() {
    let cases = [
        ("requirepass CanaryRedisPass1\nmasterauth \"CanaryMasterAuth2\"\n", Format::Keyword, 2),
        (
            "[Service]\nEnvironment=DB_PASSWORD=CanaryDbPass3 \"API_TOKEN=CanaryTok 4\"\nEnvironment=PORT=1\n",
            Format::Systemd,
            2,
        ),
        ("[Service]\nPassword=CanaryUnitPass5\n", Format::Systemd, 1),
        (
            "http { server { location / { proxy_set_header Authorization \"Basic CanaryHeader6\"; set $api_key CanarySet7; } } }",
            Format::Nginx,
            2,
        ),
        ("app.secret_token = CanarySysctl8\n", Format::Sysctl, 1),
    ];
    for (text, format, n) in cases {
        let a = ok(text, format);
        let debug = format!("{a:?}");
        assert!(!debug.contains("Canary"), "{format:?} leaked: {debug}");
        assert_eq!(masked_keys(&a).len(), n, "{format:?}: {:?}", keys(&a));
    }
    // The effective view of an sshd config with includes is masked the same way.
    let main = parse_keyword("Include /etc/redis/extra.conf\n", KeywordDialect::Generic).unwrap();
    let extra = parse_keyword("requirepass CanaryIncluded9\n", KeywordDialect::Generic).unwrap();
    let (keys, error) = keyword_keys(&main.with_includes(&[extra]), &masker(), &Limits::default());
    assert!(error.is_none());
    assert_eq!(keys.len(), 2);
    assert!(!format!("{keys:?}").contains("Canary"));
}

#[test]
fn parse_errors_have_positions_and_no_content() {
    let cases = [
        ("Port 22\nBanner \"CanaryOpen\n", Format::Keyword, (2, 8)),
        ("a = 1\nCanaryNoEquals\n", Format::Sysctl, (2, 15)),
        ("http {\n  listen CanaryX\n}\n", Format::Nginx, (2, 3)),
        ("http {\n", Format::Nginx, (1, 6)),
        ("Password=CanaryOutside\n", Format::Systemd, (1, 1)),
    ];
    for (text, format, (line, column)) in cases {
        let a = run(text, format);
        assert_eq!(a.status, FileStatus::ParseError, "{format:?}");
        let e = a.error.clone().unwrap();
        assert_eq!((e.line, e.column), (line, column), "{format:?}: {}", e.message);
        assert!(!format!("{a:?}").contains("Canary"));
    }
}

// ---------------------------------------------------------------------------------------
// Property tests

const HOST_FORMATS: [Format; 4] = [Format::Keyword, Format::Sysctl, Format::Nginx, Format::Systemd];

fn hostish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("\n".to_string()),
            Just(" ".to_string()),
            Just("=".to_string()),
            Just("[".to_string()),
            Just("]".to_string()),
            Just("{".to_string()),
            Just("}".to_string()),
            Just(";".to_string()),
            Just("\"".to_string()),
            Just("'".to_string()),
            Just("#".to_string()),
            Just("\\".to_string()),
            Just("\\\n".to_string()),
            Just("$".to_string()),
            Just("-".to_string()),
            Just("/".to_string()),
            Just("Match ".to_string()),
            Just("Host ".to_string()),
            Just("Environment=".to_string()),
            Just("[Service]\n".to_string()),
            Just("server {".to_string()),
            "[a-zA-Z_][a-zA-Z0-9_.]{0,8}",
            "[ -~]{0,6}",
            any::<char>().prop_map(String::from),
        ],
        0..60,
    )
    .prop_map(|parts| parts.concat())
}

fn check(content: &str, format: Format) {
    let a = run(content, format);
    match a.status {
        FileStatus::Ok => assert!(a.error.is_none()),
        FileStatus::ParseError => {
            let e = a.error.as_ref().expect("parse error has an error");
            assert!(e.line >= 1 && e.column >= 1, "{format:?} {content:?}: {e:?}");
        }
        FileStatus::Binary => assert!(content.contains('\0')),
        other => panic!("unexpected status {other:?}"),
    }
    let mut seen = std::collections::HashSet::new();
    for kv in &a.keys {
        assert!(seen.insert(kv.key.as_str()), "duplicate key {:?}", kv.key);
    }
}

/// The text form of an analysed value.
fn text_of(kind: &Kind) -> String {
    match kind {
        Kind::StringValue(s) => s.clone(),
        Kind::IntValue(i) => i.to_string(),
        Kind::FloatValue(f) => f.to_string(),
        Kind::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn key_texts(text: &str, format: Format) -> Vec<(String, String)> {
    ok(text, format)
        .keys
        .iter()
        .map(|kv| (kv.key.clone(), text_of(kv.value.as_ref().and_then(|v| v.kind.as_ref()).unwrap())))
        .collect()
}

/// Word values that no rule masks and that read back as the same text.
fn word() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_/:-]{0,10}"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn host_parsers_never_panic(content in hostish(), i in 0..4usize) {
        check(&content, HOST_FORMATS[i]);
    }

    #[test]
    fn host_parsers_never_panic_on_any_string(content in any::<String>(), i in 0..4usize) {
        check(&content, HOST_FORMATS[i]);
    }

    #[test]
    fn keyword_round_trips(
        lines in prop::collection::vec(("[A-Za-z][A-Za-z]{0,8}", prop::collection::vec(word(), 1..3), 0..3usize), 0..20),
        matched in prop::option::of(word()),
    ) {
        let sep = [" ", "=", " = "];
        let mut text = String::new();
        let mut want: Vec<(String, String)> = Vec::new();
        for (kw, args, s) in &lines {
            let lower = kw.to_lowercase();
            // Only single-valued keywords: lists and blocks have their own tests.
            if matches!(lower.as_str(), "port" | "listenaddress" | "hostkey" | "hostcertificate" | "identityfile"
                | "certificatefile" | "localforward" | "remoteforward" | "dynamicforward" | "acceptenv" | "sendenv"
                | "setenv" | "allowusers" | "denyusers" | "allowgroups" | "denygroups" | "include" | "subsystem"
                | "match" | "host") || is_secret_key_name(&lower) {
                continue;
            }
            text.push_str(&format!("{kw}{}{}\n", sep[*s], args.join(" ")));
            if !want.iter().any(|(k, _)| *k == lower) {
                want.push((lower, args.join(" ")));
            }
        }
        if let Some(user) = &matched {
            text.push_str(&format!("Match User {user}\n  X11Forwarding no\n"));
            want.push((format!("match[user={user}].x11forwarding"), "no".into()));
        }
        prop_assert_eq!(key_texts(&text, Format::Keyword), want.clone());
        // Re-rendered in canonical form, it reads the same.
        let again: String = want.iter().filter(|(k, _)| !k.starts_with("match[")).map(|(k, v)| format!("{k} {v}\n")).collect();
        let mut again_want: Vec<_> = want.iter().filter(|(k, _)| !k.starts_with("match[")).cloned().collect();
        prop_assert_eq!(key_texts(&again, Format::Keyword), std::mem::take(&mut again_want));
    }

    #[test]
    fn sysctl_round_trips(lines in prop::collection::vec((prop::collection::vec("[a-z][a-z0-9_]{0,6}", 1..4), word(), 0..4usize), 0..20)) {
        let mut text = String::new();
        let mut want: Vec<(String, String)> = Vec::new();
        for (segments, value, style) in &lines {
            let key = segments.join(".");
            if is_secret_key_name(&key) {
                continue;
            }
            match style {
                0 => text.push_str(&format!("{key} = {value}\n")),
                1 => text.push_str(&format!("{key}={value}\n")),
                2 => text.push_str(&format!("-{key} = {value}\n")),
                _ => text.push_str(&format!("{} = {value}\n", segments.join("/"))),
            }
            match want.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value.clone(),
                None => want.push((key, value.clone())),
            }
        }
        prop_assert_eq!(key_texts(&text, Format::Sysctl), want.clone());
        let again: String = want.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        prop_assert_eq!(key_texts(&again, Format::Sysctl), want);
    }

    #[test]
    fn nginx_round_trips(
        top in prop::collection::vec(("[a-z][a-z_]{0,8}x", word()), 0..5),
        servers in prop::collection::vec(prop::collection::vec(word(), 0..4), 0..4),
    ) {
        let mut text = String::new();
        let mut want: Vec<(String, String)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (name, value) in &top {
            if !is_secret_key_name(name) && seen.insert(name.clone()) {
                text.push_str(&format!("{name} \"{value}\";\n"));
                want.push((name.clone(), value.clone()));
            }
        }
        text.push_str("http {\n");
        for (i, listens) in servers.iter().enumerate() {
            text.push_str("  server {\n");
            for (j, l) in listens.iter().enumerate() {
                text.push_str(&format!("    listen {l} ; # c\n"));
                want.push((format!("http.server[{i}].listen[{j}]"), l.clone()));
            }
            text.push_str("  }\n");
        }
        text.push_str("}\n");
        prop_assert_eq!(key_texts(&text, Format::Nginx), want);
    }

    #[test]
    fn systemd_round_trips(
        keys in prop::collection::vec(("[A-Z][A-Za-z]{0,8}", prop::collection::vec(word(), 0..3)), 0..10),
        env in prop::collection::vec(("[A-Z][A-Z_]{0,6}", "[a-z0-9 ]{0,8}"), 0..5),
    ) {
        let mut text = String::from("[Service]\n");
        let mut want: Vec<(String, String)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (key, values) in &keys {
            if key == "Environment" || is_secret_key_name(key) || !seen.insert(key.clone()) {
                continue;
            }
            for v in values {
                text.push_str(&format!("{key}={v}\n"));
            }
            match values.len() {
                0 => {}
                1 => want.push((format!("Service.{key}"), values[0].clone())),
                _ => want.extend(values.iter().enumerate().map(|(i, v)| (format!("Service.{key}[{i}]"), v.clone()))),
            }
        }
        let mut vars: Vec<(String, String)> = Vec::new();
        for (name, value) in &env {
            if is_secret_key_name(name) {
                continue;
            }
            text.push_str(&format!("Environment=\"{name}={value}\"\n"));
            match vars.iter_mut().find(|(n, _)| n == name) {
                Some(slot) => slot.1 = value.clone(),
                None => vars.push((name.clone(), value.clone())),
            }
        }
        want.extend(vars.into_iter().map(|(n, v)| (format!("Service.Environment.{n}"), v)));
        let got = key_texts(&text, Format::Systemd);
        // Environment keys come at the first Environment line, after the plain keys here.
        prop_assert_eq!(got, want);
    }
}

// ---------------------------------------------------------------------------------------
// Edits: setting or removing one key of a generated file reads back as intended (the
// editor verifies that itself; here it must never refuse a plain single-line key).

fn unique_pairs(key: &'static str) -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((key, word()), 1..8).prop_map(|pairs| {
        let mut seen = std::collections::HashSet::new();
        pairs.into_iter().filter(|(k, _)| seen.insert(k.to_lowercase()) && !is_secret_key_name(k)).collect()
    })
}

fn check_edit(format: Format, text: &str, key: &str, new: &str) -> Result<(), TestCaseError> {
    use driftwatch_formats::{EditOp, NewValue, edit};
    let set = EditOp::Set { key: key.to_owned(), value: NewValue::Text(new.to_owned()) };
    let edited = edit(format, text, &[set]).map_err(|e| TestCaseError::fail(format!("{format:?} set {key}: {e}")))?;
    prop_assert!(key_texts(&edited, format).contains(&(key.to_owned(), new.to_owned())), "{:?}", edited);
    let removed = edit(format, text, &[EditOp::Remove { key: key.to_owned() }])
        .map_err(|e| TestCaseError::fail(format!("{format:?} remove {key}: {e}")))?;
    prop_assert!(!key_texts(&removed, format).iter().any(|(k, _)| k == key), "{:?}", removed);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn host_edits_set_and_remove_one_key(
        pairs in unique_pairs("[a-z][a-z]{2,8}"),
        pick in any::<prop::sample::Index>(),
        new in word(),
        match_block in any::<bool>(),
    ) {
        let kw_reserved = |k: &str| matches!(k, "port" | "hostkey" | "identityfile" | "acceptenv" | "sendenv" | "setenv"
            | "allowusers" | "denyusers" | "allowgroups" | "denygroups" | "include" | "subsystem" | "match" | "host"
            | "listenaddress" | "hostcertificate" | "certificatefile" | "localforward" | "remoteforward" | "dynamicforward");
        let pairs: Vec<_> = pairs.into_iter().filter(|(k, _)| !kw_reserved(k)).collect();
        prop_assume!(!pairs.is_empty());
        let (key, _) = &pairs[pick.index(pairs.len())];

        let mut keyword: String = pairs.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
        if match_block {
            keyword.push_str("Match User alice\n  X11Forwarding no\n");
        }
        check_edit(Format::Keyword, &keyword, key, &new)?;

        let sysctl: String = pairs.iter().map(|(k, v)| format!("kernel.{k} = {v}\n")).collect();
        check_edit(Format::Sysctl, &sysctl, &format!("kernel.{key}"), &new)?;

        let unit: String = std::iter::once("[Service]\n".to_owned())
            .chain(pairs.iter().map(|(k, v)| format!("X{k}={v}\n")))
            .chain(pairs.iter().map(|(k, v)| format!("Environment=E{k}={v}\n")))
            .collect();
        check_edit(Format::Systemd, &unit, &format!("Service.X{key}"), &new)?;
        check_edit(Format::Systemd, &unit, &format!("Service.Environment.E{key}"), &new)?;
    }
}

#[test]
fn diffs_of_host_formats_hide_secrets() {
    let m = masker();
    let cases = [
        ("/etc/redis/redis.conf", "port 6379\nrequirepass CanaryOldPass1\n", "port 6380\nrequirepass CanaryNewPass2\n"),
        (
            "/etc/systemd/system/app.service.d/override.conf",
            "[Service]\nEnvironment=DB_PASSWORD=CanaryDbOld3 PORT=1\n",
            "[Service]\nEnvironment=DB_PASSWORD=CanaryDbNew4 PORT=2\n",
        ),
        (
            "/etc/nginx/sites-available/default",
            "server { proxy_set_header Authorization \"Basic CanaryHdr5\"; listen 80; }\n",
            "server { proxy_set_header Authorization \"Basic CanaryHdr6\"; listen 81; }\n",
        ),
    ];
    for (path, old, new) in cases {
        let diff = driftwatch_formats::unified_diff(path, old, new, &m);
        assert!(!diff.is_empty(), "{path}");
        assert!(!diff.contains("Canary"), "{path} leaked: {diff}");
    }
}
