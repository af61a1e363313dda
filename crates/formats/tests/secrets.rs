//! Secret detection rules (table-driven) and how `analyze` applies them to typed values.

mod common;

use common::*;
use driftwatch_formats::{
    FileStatus, Format, REASON_HIGH_ENTROPY, REASON_KEY_NAME, REASON_TOKEN_SHAPE, REASON_URL_CREDENTIALS, Value,
    is_secret_key_name, secret_reason,
};

const KEY: Option<&str> = Some(REASON_KEY_NAME);
const URL: Option<&str> = Some(REASON_URL_CREDENTIALS);
const TOKEN: Option<&str> = Some(REASON_TOKEN_SHAPE);
const ENTROPY: Option<&str> = Some(REASON_HIGH_ENTROPY);

fn check(cases: &[(&str, &str, Option<&str>)]) {
    let mut failures = Vec::new();
    for &(key, value, want) in cases {
        let got = secret_reason(key, value);
        if got != want {
            failures.push(format!("secret_reason({key:?}, {value:?}) = {got:?}, want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn reasons_are_the_documented_strings() {
    assert_eq!(REASON_KEY_NAME, "key name");
    assert_eq!(REASON_URL_CREDENTIALS, "url with credentials");
    assert_eq!(REASON_TOKEN_SHAPE, "token shape");
    assert_eq!(REASON_HIGH_ENTROPY, "high entropy");
}

#[test]
fn key_name_positive() {
    let v = "plain-value";
    check(&[
        ("password", v, KEY),
        ("PASSWORD", v, KEY),
        ("db_password", v, KEY),
        ("DB_PASSWORD", v, KEY),
        ("dbPassword", v, KEY),
        ("DB_USER_PASSWORD", v, KEY),
        ("EMAIL_PASSWORD", v, KEY),
        ("password2", v, KEY),
        ("passwd", v, KEY),
        ("MYSQL_PWD", v, KEY),
        ("SMTP_PASS", v, KEY),
        ("PGPASSWORD", v, KEY),
        ("secret", v, KEY),
        ("client_secret", v, KEY),
        ("clientSecret", v, KEY),
        ("CLIENT_SECRET", v, KEY),
        ("webhook_secret", v, KEY),
        ("SECRET_KEY_BASE", v, KEY),
        ("token", v, KEY),
        ("access_token", v, KEY),
        ("refreshToken", v, KEY),
        ("GITHUB_TOKEN", v, KEY),
        ("huggingface_token", v, KEY),
        ("credential", v, KEY),
        ("credentials", v, KEY),
        ("passphrase", v, KEY),
        ("auth", v, KEY),
        ("basic_auth", v, KEY),
        ("authorization", v, KEY),
        ("Authorization", v, KEY),
        ("apikey", v, KEY),
        ("APIKEY", v, KEY),
        ("api_key", v, KEY),
        ("apiKey", v, KEY),
        ("APIKey", v, KEY),
        ("X-API-KEY", v, KEY),
        ("STORAGE_API_KEY", v, KEY),
        ("private_key", v, KEY),
        ("privateKey", v, KEY),
        ("access_key", v, KEY),
        ("AWS_SECRET_ACCESS_KEY", v, KEY),
        ("secret_key", v, KEY),
        ("session_key", v, KEY),
        ("signing_key", v, KEY),
        ("encryption_key", v, KEY),
        ("master_key", v, KEY),
        ("APP_KEY", v, KEY),
        ("secret_id", v, KEY),
        // Path handling: last segment, indexes stripped.
        ("spring.datasource.password", v, KEY),
        ("database.password", v, KEY),
        ("users[3].password", v, KEY),
        ("passwords[0]", v, KEY),
        ("api_keys[1]", v, KEY),
        ("tokens", v, KEY),
        // Directly under a collection of secrets.
        ("secrets.db", v, KEY),
        ("credentials.github", v, KEY),
        ("app.secrets[2].stripe", v, KEY),
    ]);
}

#[test]
fn key_name_negative() {
    let v = "plain-value";
    check(&[
        ("max_tokens", v, None),
        ("maxTokens", v, None),
        ("num_tokens", v, None),
        ("tokens_per_minute", v, None),
        ("token_ttl_seconds", v, None),
        ("TOKEN_EXPIRES_IN", v, None),
        ("token_expiry", v, None),
        ("auth_enabled", v, None),
        ("password_min_length", v, None),
        ("min_password_length", v, None),
        ("password_required", v, None),
        ("token_file", v, None),
        ("password_file", v, None),
        ("private_key_path", v, None),
        ("secrets_dir", v, None),
        ("credentials_file", v, None),
        ("mask_sensitive_data", v, None),
        ("author", v, None),
        ("authors", v, None),
        ("oauth_provider", v, None),
        ("tokenizer", v, None),
        ("tokenizer_path", v, None),
        ("token_url", v, None),
        ("auth_url", v, None),
        ("token_endpoint", v, None),
        ("secret_name", v, None),
        ("secretName", v, None),
        ("secret_ref", v, None),
        ("api_key_header", v, None),
        ("auth_provider", v, None),
        ("auth_method", v, None),
        ("auth_type", v, None),
        ("auth_mode", v, None),
        ("auth_user", v, None),
        ("password_rotation_days", v, None),
        ("token_refresh_interval", v, None),
        ("passkey", v, None),
        ("monkey", v, None),
        ("primary_key", v, None),
        ("public_key", v, None),
        ("sort_key", v, None),
        ("cache_key", v, None),
        ("keyboard_layout", v, None),
        ("DATABASE_URL", v, None),
        ("huggingface_repo", v, None),
        ("credentials.username", v, None),
        ("secrets.type", v, None),
        ("secret_store.backend", v, None),
        ("", v, None),
        ("[0]", v, None),
    ]);
}

#[test]
fn key_name_needs_a_real_value() {
    check(&[
        ("password", "", None),
        ("password", "   ", None),
        // References to a secret, not the secret.
        ("GOOGLE_APPLICATION_CREDENTIALS", "/etc/gcp/service-account.json", None),
        ("ssh_key", "~/.ssh/id_ed25519", None),
        ("password", "${DB_PASSWORD}", None),
        ("password", "$DB_PASSWORD", None),
        ("password", "{{ vault_db_password }}", None),
        // ... but not when the "reference" carries the secret.
        ("password", "${DB_PASSWORD:-hunter2}", KEY),
        ("password", "/hunter2", KEY),
        ("password", "/a b/c", KEY),
        ("password", "$", KEY),
    ]);
    assert!(is_secret_key_name("db.password"));
    assert!(!is_secret_key_name("db.password_file"));
}

#[test]
fn url_with_credentials() {
    check(&[
        ("DATABASE_URL", "postgresql://web2img:s3cr3t@db.internal:5432/web2img", URL),
        ("dsn", "redis://:password@cache:6379/0", URL),
        ("broker", "amqp://guest:guest@rabbit", URL),
        ("url", "https://user:pa/ss@host/x", URL),
        ("jdbc", "jdbc:postgresql://u:p@h/db", URL),
        ("JAVA_OPTS", "-Ddb=mysql://root:pw@localhost/x -Xmx1g", URL),
        ("repo", "https://ghp_abcdefghijklmnopqrstuvwxyz0123456789@github.com/org/repo.git", URL),
        ("repo", "https://x-access-token:abc@github.com/org/repo", URL),
        ("repo", "https://averyveryverylongusername@host/x", URL),
        // Negative.
        ("homepage", "https://example.com", None),
        ("repo", "ssh://git@github.com/org/repo.git", None),
        ("db", "postgres://postgres@localhost/db", None),
        ("db", "postgres://user:@localhost/db", None),
        ("profile", "https://medium.com/@user", None),
        ("x", "https://host:8080/@user/x", None),
        ("x", "https://example.com/path?email=a@b.com", None),
        ("x", "https://x.com/a:b@c", None),
        ("mail", "mailto:user@example.com", None),
        ("mail", "user@example.com", None),
        ("x", "://u:p@h", None),
        ("x", "1://u:p@h", None),
        ("x", "http://", None),
    ]);
}

#[test]
fn token_shapes() {
    let jwt =
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    check(&[
        ("v", "hf_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", TOKEN),
        ("v", "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx1234", TOKEN),
        ("v", "sk-AbCdEfGhIjKlMnOpQrStUvWx1234", TOKEN),
        ("v", "sk_live_51HxYzAbCdEfGhIjKlMn", TOKEN),
        ("v", "sk_test_51HxYzAbCdEfGhIjKlMn", TOKEN),
        ("v", "rk_live_51HxYzAbCdEfGhIjKlMn", TOKEN),
        ("v", "ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", TOKEN),
        ("v", "gho_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", TOKEN),
        ("v", "ghu_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", TOKEN),
        ("v", "ghs_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", TOKEN),
        ("v", "ghr_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", TOKEN),
        ("v", "github_pat_11ABCDEFG0123456789_abcdefghijklmnop", TOKEN),
        ("v", "glpat-AbCdEfGhIj1234567890", TOKEN),
        ("v", "xoxb-1234567890-abcdEFGH", TOKEN),
        ("v", "xoxp-1234567890-abcdEFGH", TOKEN),
        ("v", "xapp-1-A0123456789-abcdef", TOKEN),
        ("v", "AKIAIOSFODNN7EXAMPLE", TOKEN),
        ("v", "ASIAIOSFODNN7EXAMPLE", TOKEN),
        ("v", "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUv", TOKEN),
        ("v", "npm_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", TOKEN),
        ("v", jwt, TOKEN),
        ("v", "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----", TOKEN),
        ("v", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n-----END OPENSSH PRIVATE KEY-----", TOKEN),
        ("v", "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXX", TOKEN),
        ("v", "https://discord.com/api/webhooks/123456789/abcdefgHIJK", TOKEN),
        ("v", "https://discordapp.com/api/webhooks/123456789/abcdefgHIJK", TOKEN),
        // Embedded in a longer value.
        ("v", "Bearer ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", TOKEN),
        ("v", "--token=hf_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789 --verbose", TOKEN),
        // Negative: too short, wrong shape, not at a word boundary, no randomness.
        ("v", "hf_model", None),
        ("v", "hf_transfer_enabled", None),
        ("v", "hf_abcdefghijklmnopqrstuvwxyz", None),
        ("v", "sk_", None),
        ("v", "sk-learn", None),
        ("v", "task-abcdefghijklmnopqrstuvwx1", None),
        ("v", "ghp_short", None),
        ("v", "xoxb-", None),
        ("v", "AKIA", None),
        ("v", "AKIAIOSFODNN7EXAMPLEXX", None),
        ("v", "eyJhbGciOiJIUzI1NiJ9", None),
        ("v", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----", None),
        ("v", "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----", None),
        ("v", "https://hooks.slack.com/", None),
        ("v", "https://discord.com/api/webhooks/", None),
    ]);
}

#[test]
fn high_entropy() {
    check(&[
        ("v", "Zq8vN3xR7tLm2KpW9sYd4HcB", ENTROPY),
        ("v", "q7Xk2LmN9pR4sT1vW8yZ3bC6dF0gH5jK", ENTROPY),
        ("v", "wJalrXUtnFI/K7MDENG/bPxRfiCYEXAMPLEKEY", ENTROPY),
        ("v", "k3j4h5g6f7d8s9a0q1w2e3r4t5y6", ENTROPY),
        ("v", "Xk9+Lm2/Qp7=Rt4*Vw1&Yz8#Ab3!", ENTROPY),
        ("v", "wk_9f8e7d6c5b4a39281706f5e4d3c2b1a0", ENTROPY),
        // Negative: identifiers, paths, URLs, names, hex, UUIDs, digests, versions, e-mail.
        ("v", "short1A", None),
        ("v", "enable_multi_strategy_discovery_v2", None),
        ("v", "BrowserPoolManagerConfig2024", None),
        ("v", "ScreenshotServiceDefaultProfile", None),
        ("v", "UPPER_CASE_CONSTANT_NAME_2024", None),
        ("v", "x86_64-unknown-linux-gnu-2024", None),
        ("v", "abcdefghijklmnopqrstuvwxyz", None),
        ("v", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", None),
        ("v", "com.example.service.MyApplication", None),
        ("v", "my-long-file-name-2024-01-01.tar.gz", None),
        ("v", "/var/lib/Xk9Lm2Qp7Rt4Vw1Yz8Ab3/state.db", None),
        ("v", "~/Xk9Lm2Qp7Rt4Vw1Yz8Ab3/state.db", None),
        ("v", "C:\\Users\\Xk9Lm2Qp7Rt4Vw1Yz8Ab3", None),
        ("v", "projects/my-project-123456/secrets/db", None),
        ("v", "https://example.com/a/b?c=D3f4G5h6J7k8L9m0N1p2", None),
        ("v", "api.eu-west-1.k8s.internal.example.com", None),
        ("v", "db-7f9c2a1b.eu-west-1.rds.amazonaws.com:5432", None),
        ("v", "v1.2.3-beta.4+build.20240101", None),
        ("v", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", None),
        ("v", "D41D8CD98F00B204E9800998ECF8427E", None),
        ("v", "da39a3ee5e6b4b0d3255bfef95601890afd80709", None),
        ("v", "123e4567-e89b-12d3-a456-426614174000", None),
        ("v", "{123e4567-e89b-12d3-a456-426614174000}", None),
        ("v", "nginx@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", None),
        ("v", "sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg==", None),
        ("v", "firstname.lastname2024@company-domain.com", None),
        ("v", "arn:aws:iam::123456789012:role/MyRole", None),
        ("v", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36", None),
    ]);
}

#[test]
fn rule_precedence() {
    check(&[
        ("password", "postgres://u:p@h/db", KEY),
        ("token", "ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", KEY),
        ("gh", "ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", TOKEN),
        ("auth_url", "https://user:pw@auth.example.com", URL),
        ("hook", "https://user:pw@hooks.slack.com/services/T000/B000/XXXXXXXXXXXX", URL),
    ]);
}

// ---------------------------------------------------------------------------------------
// How analyze applies the rules to typed values

#[test]
fn key_name_masks_strings_and_numbers_never_null_bool_or_empty() {
    let yaml = "\
password: 1234
pin_password: 12.5
other_password: true
null_password: null
empty_password: \"\"
str_password: hunter2
max_tokens: 4096
context_tokens: 8192
tokens:
  - abc
auth_enabled: true
";
    let a = ok(yaml, Format::Yaml);
    assert_eq!(masked_keys(&a), ["password", "pin_password", "str_password", "tokens[0]"]);
    let m = masker();
    assert_eq!(get(&a, "password"), &Value::masked_by(m.key_id(), m.fingerprint(b"1234"), "key name"));
    assert_eq!(get(&a, "pin_password"), &Value::masked_by(m.key_id(), m.fingerprint(b"12.5"), "key name"));
    assert_eq!(*get(&a, "other_password"), Value::bool(true));
    assert_eq!(*get(&a, "null_password"), Value::null());
    assert_eq!(*get(&a, "empty_password"), string(""));
    assert_eq!(*get(&a, "max_tokens"), Value::int(4096));
    assert_eq!(*get(&a, "context_tokens"), Value::int(8192));
    assert_eq!(*get(&a, "auth_enabled"), Value::bool(true));
}

#[test]
fn equal_secrets_give_equal_fingerprints_across_formats_and_keys() {
    let m = masker();
    let cases = [
        ("PASSWORD=hunter2-legacy\n", Format::Env, "PASSWORD"),
        ("PASSWORD='hunter2-legacy'\n", Format::Env, "PASSWORD"),
        ("[db]\npassword = hunter2-legacy\n", Format::Ini, "db.password"),
        ("[db]\npassword = \"hunter2-legacy\"\n", Format::Ini, "db.password"),
        ("db:\n  password: hunter2-legacy\n", Format::Yaml, "db.password"),
        ("{\"db\": {\"secret\": \"hunter2-legacy\"}}", Format::Json, "db.secret"),
        ("[db]\napi_key = \"hunter2-legacy\"\n", Format::Toml, "db.api_key"),
    ];
    for (text, format, key) in cases {
        let a = ok(text, format);
        assert_eq!(masked_fingerprint(&a, key), m.fingerprint(b"hunter2-legacy"), "{format:?}");
        assert_eq!(masked_reason(&a, key).as_deref(), Some("key name"));
    }
    // Numbers: the fingerprint is over the text as written (env/INI) or the canonical form.
    for (text, format, key) in [
        ("PASSWORD=1234\n", Format::Env, "PASSWORD"),
        ("[s]\npassword = 1234\n", Format::Ini, "s.password"),
        ("password: 1234\n", Format::Yaml, "password"),
        ("{\"password\": 1234}", Format::Json, "password"),
        ("password = 1234\n", Format::Toml, "password"),
    ] {
        let a = ok(text, format);
        assert_eq!(masked_fingerprint(&a, key), m.fingerprint(b"1234"), "{format:?}");
    }
    // The same secret under a different key name: same fingerprint.
    let a = ok("A_TOKEN=hunter2-legacy\nB_SECRET=hunter2-legacy\nC_PASSWORD=other\n", Format::Env);
    assert_eq!(masked_fingerprint(&a, "A_TOKEN"), masked_fingerprint(&a, "B_SECRET"));
    assert_ne!(masked_fingerprint(&a, "A_TOKEN"), masked_fingerprint(&a, "C_PASSWORD"));
}

#[test]
fn value_rules_apply_under_any_key_in_every_format() {
    let token = "ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";
    let url = "postgresql://app:s3cr3t@db:5432/app";
    for (text, format, prefix) in [
        (format!("A={token}\nB={url}\n"), Format::Env, ""),
        (format!("[s]\nA={token}\nB={url}\n"), Format::Ini, "s."),
        (format!("s:\n  A: {token}\n  B: {url}\n"), Format::Yaml, "s."),
        (format!("{{\"s\": {{\"A\": \"{token}\", \"B\": \"{url}\"}}}}"), Format::Json, "s."),
        (format!("[s]\nA = \"{token}\"\nB = \"{url}\"\n"), Format::Toml, "s."),
    ] {
        let a = ok(&text, format);
        assert_eq!(masked_reason(&a, &format!("{prefix}A")).as_deref(), Some("token shape"), "{format:?}");
        assert_eq!(masked_reason(&a, &format!("{prefix}B")).as_deref(), Some("url with credentials"), "{format:?}");
        let debug = format!("{a:?}");
        assert!(!debug.contains("AbCdEfGh") && !debug.contains("s3cr3t"), "{format:?}");
    }
}

#[test]
fn list_items_and_multiline_secrets_are_masked() {
    let env = "PRIVATE_KEY=\"-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg\n-----END EC PRIVATE KEY-----\"\n";
    let a = ok(env, Format::Env);
    assert_eq!(masked_keys(&a), ["PRIVATE_KEY"]);
    let a = ok(
        "cert: |\n  -----BEGIN OPENSSH PRIVATE KEY-----\n  b3Bl\n  -----END OPENSSH PRIVATE KEY-----\n",
        Format::Yaml,
    );
    assert_eq!(masked_reason(&a, "cert").as_deref(), Some("token shape"));
    let a = ok("{\"api_keys\": [\"k-one\", \"k-two\"], \"ports\": [1, 2]}", Format::Json);
    assert_eq!(masked_keys(&a), ["api_keys[0]", "api_keys[1]"]);
}

#[test]
fn nothing_secret_in_a_parse_error_either() {
    let a = run("password: \"hunter2-legacy\nnext: 1\n", Format::Yaml);
    assert_eq!(a.status, FileStatus::ParseError);
    assert!(!format!("{a:?}").contains("hunter2"));
}

#[test]
fn secret_looking_keys_are_masked_too() {
    let token = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx1234";
    let m = masker();
    let short = |s: &str| format!("<masked:{}>", &m.fingerprint(s.as_bytes())[..16]);
    let a = ok(&format!("{{\"api_keys\": {{\"{token}\": \"client-a\"}}, \"plain\": {{\"k\": 1}}}}"), Format::Json);
    assert_eq!(keys(&a), [format!("api_keys.{}", short(token)).as_str(), "plain.k"]);
    assert_eq!(*get(&a, &format!("api_keys.{}", short(token))), string("client-a"));
    let a = ok(&format!("clients:\n  {token}:\n    name: a\n"), Format::Yaml);
    assert_eq!(keys(&a), [format!("clients.{}.name", short(token)).as_str()]);
    let env_key = "ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";
    let a = ok(&format!("{env_key}=1\n"), Format::Env);
    assert_eq!(keys(&a), [short(env_key).as_str()]);
    let a = ok(&format!("[{env_key}]\nx = 1\n"), Format::Ini);
    assert_eq!(keys(&a), [format!("{}.x", short(env_key)).as_str()]);
    let a = ok(&format!("[t]\n\"{token}\" = 1\n"), Format::Toml);
    assert_eq!(keys(&a), [format!("t.{}", short(token)).as_str()]);
    assert!(!format!("{a:?}").contains("AbCdEf"));
}

/// The masking table: names a secret hides behind, each masked with a realistic value in
/// an `.env` file (typed as the agent types it), and 30 ordinary settings that must stay
/// clear. Borderline cases, decided:
/// - `ENABLE_AUTH=true`: `auth` is a secret word and words before it never cancel it, but
///   a boolean is never masked, so the toggle stays readable; a string there is masked.
/// - `MAX_TOKENS=4096`: a plural after a count word is a count, and numbers under a
///   plural are never masked anyway.
/// - `PIN_MEMORY=true`: `pin` is a secret word (`secrets.pin: 123456`); the boolean stays
///   readable, and `PIN_VERSION=3` is a setting (`version` comes after it).
/// - `SORT_KEY`, `CACHE_KEY`, `PUBLIC_KEY`: `key` after a word that is not a purpose
///   or a primitive is an identifier, not key material.
#[test]
fn masking_table_of_secret_names_and_ordinary_settings() {
    let secrets = [
        ("AUTH_SERVER_SECRET", "s3rv3r-s1de"),
        ("AUTH_SERVICE_TOKEN", "svc-tok-123"),
        ("MS_CLIENT_SECRET", "abc~def"),
        ("HMAC_KEY", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
        ("JWT_KEY", "changeme"),
        ("DB_PW", "hunter2"),
        ("PSK", "wifi-preshared"),
        ("AES_KEY", "0123456789abcdef"),
        ("SESSION_COOKIE_KEY", "k3y"),
        ("SMTP_PASS", "mail"),
        ("REDIS_PASSWORD", "r"),
        ("STORAGE_API_KEY", "sk"),
        ("MAX_TOKEN", "t0k"),
        ("SECRET", "x"),
        ("PIN", "1234"),
    ];
    let ordinary = [
        ("MAX_CONNECTIONS", "100"),
        ("TOKEN_BUCKET_SIZE", "50"),
        ("SECRET_ROTATION_DAYS", "30"),
        ("MAX_TOKENS", "4096"),
        ("TOKENS_PER_MINUTE", "600"),
        ("TOKEN_TTL_SECONDS", "3600"),
        ("PASSWORD_MIN_LENGTH", "12"),
        ("AUTH_TIMEOUT", "30s"),
        ("AUTH_ENABLED", "true"),
        ("ENABLE_AUTH", "true"),
        ("TOKEN_FILE", "/run/secrets/token"),
        ("PASSWORD_FILE", "/run/secrets/db"),
        ("SECRET_NAME", "db-credentials"),
        ("AUTH_PROVIDER", "oidc"),
        ("API_KEY_HEADER", "X-Api-Key"),
        ("TOKEN_URL", "https://idp.example.com/token"),
        ("SORT_KEY", "created_at"),
        ("CACHE_KEY", "user_profile"),
        ("PUBLIC_KEY_PATH", "/etc/app/pub.pem"),
        ("PRIMARY_KEY", "id"),
        ("PIN_MEMORY", "true"),
        ("PIN_VERSION", "3"),
        ("AUTHOR", "alice"),
        ("TOKENIZER", "bpe"),
        ("WORKERS", "8"),
        ("LOG_LEVEL", "info"),
        ("DATABASE_HOST", "db.internal"),
        ("PASSWORD_POLICY", "strong"),
        ("SECRET_STORE_BACKEND", "vault"),
        ("CREDENTIALS_DIR", "/etc/creds"),
    ];
    assert_eq!(ordinary.len(), 30);
    let text: String = secrets.iter().chain(&ordinary).map(|(k, v)| format!("{k}={v}\n")).collect();
    let a = ok(&text, Format::Env);
    let masked = masked_keys(&a);
    let mut failures = Vec::new();
    for (k, _) in secrets {
        if !masked.contains(&k) {
            failures.push(format!("{k} should be masked"));
        }
    }
    for (k, _) in ordinary {
        if masked.contains(&k) {
            failures.push(format!("{k} should stay clear"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    // A string under a secret word before a toggle word is masked: only the type spares the toggle.
    check(&[("enable_auth", "plain-value", KEY), ("secrets.pin", "123456", KEY)]);
    let a = ok("secrets:\n  pin: 123456\n", Format::Yaml);
    assert_eq!(masked_keys(&a), ["secrets.pin"], "a number under a secret word is masked");
}

/// The rule generalises: no key name of the tables above is spelled out in the
/// masking code (it works on words, not names).
#[test]
fn the_masking_code_names_words_not_keys() {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/secrets/names.rs")).unwrap();
    let code: String = src.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
    for name in ["AUTH_SERVER_SECRET", "AUTH_SERVICE_TOKEN", "MS_CLIENT_SECRET", "HMAC_KEY", "JWT_KEY", "DB_PW"] {
        for spelled in [name.to_string(), name.to_lowercase()] {
            assert!(!code.contains(&format!("\"{spelled}\"")), "{spelled} is spelled out in names.rs");
        }
    }
}
