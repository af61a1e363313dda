//! Masker: keyed fingerprints, the public key id, incremental content hashing.

mod common;

use common::*;
use driftwatch_formats::{Format, KEY_ID_HEX_LEN, Limits, Masker, analyze};
use hmac::{Hmac, Mac};
use sha2::Sha256;

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

fn hmac_hex(key: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for p in parts {
        mac.update(p);
    }
    hex::encode(mac.finalize().into_bytes())
}

#[test]
fn fingerprint_is_hmac_sha256_lower_hex_of_the_value_domain() {
    // RFC 4231 test case 2 checks the HMAC this is built on.
    assert_eq!(
        hmac_hex(b"Jefe", &[b"what do ya want for nothing?"]),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    let fp = masker().fingerprint(b"hunter2");
    assert!(is_lower_hex(&fp, 64));
    assert_eq!(fp, hmac_hex(FLEET_KEY, &[b"driftwatch value\0", b"hunter2"]));
    assert_eq!(masker().content_hash(b"hunter2"), hmac_hex(FLEET_KEY, &[b"driftwatch content\0", b"hunter2"]));
}

#[test]
fn values_and_contents_are_separated_by_purpose_only() {
    let m = masker();
    // A one-line file never hashes like the value it holds.
    assert_ne!(m.fingerprint(b"hunter2"), m.content_hash(b"hunter2"));
    // The same value gives the same fingerprint wherever it is (no host or key in it).
    let a = analyze(b"DB_PASSWORD=hunter2\n", Format::Env, &m, &Limits::default());
    let b = analyze(b"database:\n  password: hunter2\n", Format::Yaml, &m, &Limits::default());
    assert_eq!(masked_fingerprint(&a, "DB_PASSWORD"), masked_fingerprint(&b, "database.password"));
}

#[test]
fn fingerprints_are_deterministic_and_keyed() {
    let a = Masker::new(b"fleet-a");
    let a2 = Masker::new(b"fleet-a");
    let b = Masker::new(b"fleet-b");
    assert_eq!(a.fingerprint(b"s3cr3t"), a2.fingerprint(b"s3cr3t"));
    assert_eq!(a.fingerprint(b"s3cr3t"), a.clone().fingerprint(b"s3cr3t"));
    assert_ne!(a.fingerprint(b"s3cr3t"), b.fingerprint(b"s3cr3t"));
    assert_ne!(a.fingerprint(b"s3cr3t"), a.fingerprint(b"s3cr3u"));
    // Not a plain hash of the value.
    assert_ne!(a.fingerprint(b"s3cr3t"), hex::encode(<Sha256 as sha2::Digest>::digest(b"s3cr3t")));
    // Empty key and empty data are fine.
    let empty = Masker::new(b"");
    assert!(is_lower_hex(&empty.fingerprint(b""), 64));
    // Long keys (> block size) work too.
    let long = Masker::new(&[7u8; 200]);
    assert!(is_lower_hex(&long.fingerprint(b"x"), 64));
}

#[test]
fn masked_values_depend_on_the_fleet_key() {
    let limits = Limits::default();
    let text = b"PASSWORD=hunter2\n";
    let a = analyze(text, Format::Env, &Masker::new(b"fleet-a"), &limits);
    let a2 = analyze(text, Format::Env, &Masker::new(b"fleet-a"), &limits);
    let b = analyze(text, Format::Env, &Masker::new(b"fleet-b"), &limits);
    assert_eq!(a, a2);
    assert_ne!(masked_fingerprint(&a, "PASSWORD"), masked_fingerprint(&b, "PASSWORD"));
    assert_ne!(a.content_hash, b.content_hash);
    // Each masked value names the key that made it, so values masked under different
    // keys are never taken as equal (even were their digits to agree).
    let key_of = |an: &driftwatch_formats::Analysis| match &an.keys[0].value.as_ref().unwrap().kind {
        Some(driftwatch_proto::v1::value::Kind::Masked(m)) => m.key_id.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(key_of(&a), Masker::new(b"fleet-a").key_id());
    assert_eq!(key_of(&b), Masker::new(b"fleet-b").key_id());
}

#[test]
fn key_id_is_short_stable_and_reveals_nothing() {
    let key = b"super secret fleet key material";
    let m = Masker::new(key);
    let id = m.key_id();
    assert!(is_lower_hex(&id, KEY_ID_HEX_LEN), "{id}");
    assert_eq!(KEY_ID_HEX_LEN, 16);
    assert_eq!(id, Masker::new(key).key_id());
    assert_ne!(id, Masker::new(b"another key").key_id());
    assert!(!hex::encode(key).contains(&id));
    assert!(!id.contains(&hex::encode(&key[..4])));
    // Not the fingerprint of an empty value, nor of the key itself.
    assert!(!m.fingerprint(b"").starts_with(&id));
    assert!(!m.fingerprint(key).starts_with(&id));
    // It is HMAC(key, label) truncated: no value's fingerprint, not even the label's.
    assert!(hmac_hex(key, &[b"driftwatch fleet key id"]).starts_with(&id));
    assert!(!m.fingerprint(b"driftwatch fleet key id").starts_with(&id));
}

#[test]
fn debug_never_shows_the_key() {
    let key = b"KEYMATERIAL-0123456789";
    let m = Masker::new(key);
    let debug = format!("{m:?} {:?}", m.content_hasher());
    assert!(!debug.contains("KEYMATERIAL"), "{debug}");
    assert!(!debug.contains(&hex::encode(key)), "{debug}");
    assert!(!debug.contains("75, 69, 89"), "{debug}"); // b"KEY" as a byte list
    assert!(debug.contains(&m.key_id()));
}

#[test]
fn content_hasher_matches_fingerprint() {
    let m = masker();
    let content: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
    for chunk in [1, 7, 64, 1000, 10_000] {
        let mut h = m.content_hasher();
        for piece in content.chunks(chunk) {
            h.update(piece);
        }
        assert_eq!(h.finish(), m.content_hash(&content), "chunk {chunk}");
    }
    assert_eq!(m.content_hasher().finish(), m.content_hash(b""));
    let mut h = m.content_hasher();
    h.update(b"");
    h.update(b"abc");
    h.update(b"");
    assert_eq!(h.finish(), m.content_hash(b"abc"));
}

#[test]
fn content_hash_is_the_fingerprint_of_the_raw_bytes() {
    let m = masker();
    for (text, format) in [
        ("A=1\n", Format::Env),
        ("\u{feff}A=1\n", Format::Env),
        ("not: [valid\n", Format::Yaml),
        ("plain text", Format::Text),
    ] {
        let a = analyze(text.as_bytes(), format, &m, &Limits::default());
        assert_eq!(a.content_hash, m.content_hash(text.as_bytes()));
    }
}
