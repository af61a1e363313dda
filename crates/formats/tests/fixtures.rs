//! The real config files from the fixtures: exactly which keys are masked, and how the
//! rest is typed.

mod common;

use common::*;
use driftwatch_formats::{FileStatus, Format, Value, detect_format};
use std::path::Path;

const ENV_PRODUCTION: &str = include_str!("../../../deploy/examples/configs/web2img/.env.production");
const ENV_REGRESSED: &str = include_str!("../../../deploy/examples/scenarios/web2img.env.regressed");
const SYNC_PRODUCTION: &str = include_str!("../../../deploy/examples/configs/gguf-sync/sync-config-production.yaml");
const SYNC_STAGING: &str = include_str!("../../../deploy/examples/configs/gguf-sync/sync-config-staging.yaml");
const SYNC_DEVELOPMENT: &str = include_str!("../../../deploy/examples/configs/gguf-sync/sync-config-development.yaml");
const SYNC_BROKEN: &str = include_str!("../../../deploy/examples/scenarios/sync-config-broken.yaml");
const LEGACY_INI: &str = include_str!("../../../deploy/examples/configs/swarm/legacy.ini");
const MESSAGING_TOML: &str = include_str!("../../../deploy/examples/configs/swarm/messaging.toml");
const COORDINATES_JSON: &str = include_str!("../../../deploy/examples/configs/swarm/coordinates.json");
const UNIFIED_YAML: &str = include_str!("../../../deploy/examples/configs/swarm/unified_config.yaml");
const UNIFIED_SCHEMA: &str = include_str!("../../../deploy/examples/configs/swarm/unified_config.schema.json");

#[test]
fn fixture_formats_are_detected() {
    assert_eq!(detect_format(Path::new("deploy/examples/configs/web2img/.env.production")), Format::Env);
    assert_eq!(detect_format(Path::new("gguf-sync/sync-config-production.yaml")), Format::Yaml);
    assert_eq!(detect_format(Path::new("swarm/legacy.ini")), Format::Ini);
    assert_eq!(detect_format(Path::new("swarm/messaging.toml")), Format::Toml);
    assert_eq!(detect_format(Path::new("swarm/coordinates.json")), Format::Json);
    assert_eq!(detect_format(Path::new("gguf-sync/rules.md")), Format::Text);
}

#[test]
fn web2img_env_production() {
    let a = ok(ENV_PRODUCTION, Format::Env);
    assert_eq!(
        keys(&a),
        [
            "BROWSER_POOL_MIN_SIZE",
            "BROWSER_POOL_MAX_SIZE",
            "BROWSER_POOL_IDLE_TIMEOUT",
            "BROWSER_POOL_MAX_AGE",
            "MAX_CONCURRENT_SCREENSHOTS",
            "MAX_CONCURRENT_CONTEXTS",
            "BROWSER_CACHE_MAX_SIZE_MB",
            "CACHE_MAX_ITEMS",
            "WORKERS",
            "MEMORY_CLEANUP_THRESHOLD",
            "FORCE_BROWSER_RESTART_INTERVAL",
            "DATABASE_URL",
            "STORAGE_API_KEY",
        ]
    );
    assert_eq!(masked_keys(&a), ["DATABASE_URL", "STORAGE_API_KEY"]);
    assert_eq!(masked_reason(&a, "DATABASE_URL").as_deref(), Some("url with credentials"));
    assert_eq!(masked_reason(&a, "STORAGE_API_KEY").as_deref(), Some("key name"));
    assert_eq!(*get(&a, "BROWSER_POOL_MAX_SIZE"), Value::int(12));
    assert_eq!(*get(&a, "BROWSER_POOL_MIN_SIZE"), Value::int(4));
    assert_eq!(*get(&a, "MEMORY_CLEANUP_THRESHOLD"), Value::int(80));
    assert_eq!(*get(&a, "FORCE_BROWSER_RESTART_INTERVAL"), Value::int(7200));
    // Fingerprints are over the raw value.
    let m = masker();
    assert_eq!(
        masked_fingerprint(&a, "DATABASE_URL"),
        m.fingerprint(b"postgresql://web2img:s3cr3t-Pa55word@db.internal:5432/web2img")
    );
    assert_eq!(masked_fingerprint(&a, "STORAGE_API_KEY"), m.fingerprint(b"wk_9f8e7d6c5b4a39281706f5e4d3c2b1a0"));
    let debug = format!("{a:?}");
    assert!(!debug.contains("s3cr3t"));
    assert!(!debug.contains("9f8e7d6c5b4a"));
}

#[test]
fn web2img_env_regressed_shares_secret_fingerprints() {
    let prod = ok(ENV_PRODUCTION, Format::Env);
    let regressed = ok(ENV_REGRESSED, Format::Env);
    assert_eq!(masked_keys(&regressed), ["DATABASE_URL", "STORAGE_API_KEY"]);
    assert_eq!(*get(&regressed, "BROWSER_POOL_MAX_SIZE"), Value::int(50));
    assert_eq!(*get(&regressed, "WORKERS"), Value::int(16));
    for k in ["DATABASE_URL", "STORAGE_API_KEY"] {
        assert_eq!(masked_fingerprint(&prod, k), masked_fingerprint(&regressed, k));
    }
    assert_ne!(prod.content_hash, regressed.content_hash);
}

#[test]
fn gguf_sync_production() {
    let a = ok(SYNC_PRODUCTION, Format::Yaml);
    assert_eq!(masked_keys(&a), Vec::<&str>::new());
    assert_eq!(*get(&a, "huggingface_token"), Value::null());
    assert_eq!(*get(&a, "security.mask_sensitive_data"), Value::bool(true));
    assert_eq!(*get(&a, "rate_limiting.requests_per_second"), Value::float(1.2));
    assert_eq!(*get(&a, "rate_limiting.requests_per_hour"), Value::int(4800));
    assert_eq!(*get(&a, "monitoring.alert_channels[0]"), string("log"));
    assert_eq!(*get(&a, "monitoring.alert_channels[1]"), string("github"));
    assert_eq!(*get(&a, "monitoring.alert_channels[2]"), string("webhook"));
    assert_eq!(*get(&a, "security.allowed_domains[1]"), string("api.huggingface.co"));
    assert_eq!(*get(&a, "validation.min_completeness_score"), Value::float(0.95));
    assert_eq!(*get(&a, "log_level"), string("INFO"));
    assert_eq!(*get(&a, "debug_mode"), Value::bool(false));
    // File order.
    assert_eq!(
        &keys(&a)[..6],
        [
            "environment",
            "log_level",
            "debug_mode",
            "huggingface_token",
            "rate_limiting.requests_per_second",
            "rate_limiting.requests_per_hour"
        ]
    );
    assert_eq!(keys(&a).last(), Some(&"storage.enable_compression"));
    assert_eq!(a.keys.len(), 38);
}

#[test]
fn gguf_sync_staging_and_development() {
    let staging = ok(SYNC_STAGING, Format::Yaml);
    assert!(masked_keys(&staging).is_empty());
    assert_eq!(*get(&staging, "rate_limiting.requests_per_second"), Value::float(1.0));
    assert_eq!(*get(&staging, "monitoring.alert_channels[1]"), string("webhook"));
    let dev = ok(SYNC_DEVELOPMENT, Format::Yaml);
    assert!(masked_keys(&dev).is_empty());
    assert_eq!(*get(&dev, "validation.min_completeness_score"), Value::float(0.8));
    assert_eq!(*get(&dev, "huggingface_token"), Value::null());
}

#[test]
fn gguf_sync_broken_masks_the_token() {
    let a = ok(SYNC_BROKEN, Format::Yaml);
    assert_eq!(masked_keys(&a), ["huggingface_token"]);
    let reason = masked_reason(&a, "huggingface_token").unwrap();
    assert!(reason == "key name" || reason == "token shape", "{reason}");
    assert_eq!(
        masked_fingerprint(&a, "huggingface_token"),
        masker().fingerprint(b"hf_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789")
    );
    assert_eq!(*get(&a, "rate_limiting.requests_per_second"), Value::int(0));
    assert_eq!(*get(&a, "rate_limiting.max_concurrent_requests"), Value::int(-1));
    assert_eq!(*get(&a, "validation.min_completeness_score"), Value::float(1.5));
    assert_eq!(*get(&a, "debug_mode"), Value::bool(true));
    assert!(!format!("{a:?}").contains("hf_aBcDe"));
}

#[test]
fn swarm_legacy_ini() {
    let a = ok(LEGACY_INI, Format::Ini);
    assert_eq!(
        keys(&a),
        ["scheduler.workers", "scheduler.interval_seconds", "database.host", "database.port", "database.password"]
    );
    assert_eq!(masked_keys(&a), ["database.password"]);
    assert_eq!(masked_reason(&a, "database.password").as_deref(), Some("key name"));
    assert_eq!(masked_fingerprint(&a, "database.password"), masker().fingerprint(b"hunter2-legacy"));
    assert_eq!(*get(&a, "scheduler.workers"), Value::int(4));
    assert_eq!(*get(&a, "database.port"), Value::int(5432));
    assert_eq!(*get(&a, "database.host"), string("db.internal"));
    assert!(!format!("{a:?}").contains("hunter2"));
}

#[test]
fn swarm_messaging_toml() {
    let a = ok(MESSAGING_TOML, Format::Toml);
    assert_eq!(
        keys(&a),
        [
            "delivery.mode",
            "delivery.retry_attempts",
            "delivery.retry_backoff_ms",
            "queue.max_depth",
            "queue.persist",
            "discord.enabled",
            "discord.webhook_url"
        ]
    );
    assert!(masked_keys(&a).is_empty());
    assert_eq!(*get(&a, "discord.webhook_url"), string(""));
    assert_eq!(*get(&a, "delivery.mode"), string("pyautogui"));
    assert_eq!(*get(&a, "queue.max_depth"), Value::int(1000));
    assert_eq!(*get(&a, "queue.persist"), Value::bool(true));
}

#[test]
fn swarm_coordinates_json() {
    let a = ok(COORDINATES_JSON, Format::Json);
    assert!(masked_keys(&a).is_empty());
    assert_eq!(*get(&a, "agents.Agent-1.x"), Value::int(-1269));
    assert_eq!(*get(&a, "agents.Agent-4.role"), string("quality"));
    assert_eq!(*get(&a, "version"), string("2.0.0"));
    assert_eq!(
        &keys(&a)[..5],
        ["version", "agents.Agent-1.x", "agents.Agent-1.y", "agents.Agent-1.role", "agents.Agent-2.x"]
    );
    assert_eq!(a.keys.len(), 13);
}

#[test]
fn swarm_unified_config() {
    let a = ok(UNIFIED_YAML, Format::Yaml);
    assert!(masked_keys(&a).is_empty());
    assert_eq!(*get(&a, "version"), string("2.1.0"));
    assert_eq!(*get(&a, "monitoring.thresholds.cpu_percent"), Value::int(85));
    assert_eq!(*get(&a, "cache.ttl_seconds"), Value::int(300));
    let schema = ok(UNIFIED_SCHEMA, Format::Json);
    assert!(masked_keys(&schema).is_empty());
    assert_eq!(*get(&schema, "$schema"), string("https://json-schema.org/draft/2020-12/schema"));
    assert_eq!(*get(&schema, "required[2]"), string("monitoring"));
    assert_eq!(*get(&schema, "properties.version.pattern"), string("^\\d+\\.\\d+\\.\\d+$"));
    assert_eq!(*get(&schema, "properties.system.additionalProperties"), Value::bool(false));
}

#[test]
fn every_fixture_status() {
    for (text, format) in [
        (ENV_PRODUCTION, Format::Env),
        (ENV_REGRESSED, Format::Env),
        (SYNC_PRODUCTION, Format::Yaml),
        (SYNC_STAGING, Format::Yaml),
        (SYNC_DEVELOPMENT, Format::Yaml),
        (SYNC_BROKEN, Format::Yaml),
        (LEGACY_INI, Format::Ini),
        (MESSAGING_TOML, Format::Toml),
        (COORDINATES_JSON, Format::Json),
        (UNIFIED_YAML, Format::Yaml),
        (UNIFIED_SCHEMA, Format::Json),
    ] {
        let a = run(text, format);
        assert_eq!(a.status, FileStatus::Ok, "{format:?}: {:?}", a.error);
        assert_eq!(a.content_hash, masker().content_hash(text.as_bytes()));
    }
}
