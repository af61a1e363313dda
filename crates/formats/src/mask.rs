//! Keyed fingerprints: HMAC-SHA256 with the per-fleet key.
//!
//! A plain hash of a low-entropy secret (`hunter2`) can be reversed by hashing
//! guesses; a keyed hash cannot without the fleet key, yet equal secrets still
//! give equal fingerprints on every host of the fleet.
//!
//! Digests are separated by purpose only: a value's fingerprint and a file's
//! content hash are HMACs of different messages (`driftwatch value\0…`,
//! `driftwatch content\0…`), so a one-line file can never be matched with the
//! value it holds. They are never separated by host or key name: the same value
//! must compare equal across hosts.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The message whose keyed hash names the key publicly (see [`Masker::key_id`]).
const KEY_ID_LABEL: &[u8] = b"driftwatch fleet key id";
/// What a value's fingerprint and a content hash start their message with.
pub const VALUE_DOMAIN: &[u8] = b"driftwatch value\0";
pub const CONTENT_DOMAIN: &[u8] = b"driftwatch content\0";

/// Number of hex characters in [`Masker::key_id`].
pub const KEY_ID_HEX_LEN: usize = 16;

/// Keyed fingerprints (HMAC-SHA256 with the per-fleet key).
///
/// Only the keyed HMAC state is kept, and `Debug` shows the public key id only,
/// never the key.
#[derive(Clone)]
pub struct Masker {
    /// HMAC states already keyed with the fleet key and fed their purpose's domain;
    /// cloned for each digest.
    value: HmacSha256,
    content: HmacSha256,
    key_id: String,
}

impl Masker {
    pub fn new(fleet_key: &[u8]) -> Self {
        // HMAC accepts keys of any length (long keys are hashed, short ones padded),
        // so this cannot fail.
        let mac = <HmacSha256 as Mac>::new_from_slice(fleet_key).expect("HMAC-SHA256 accepts any key length");
        let mut id = mac.clone();
        id.update(KEY_ID_LABEL);
        let mut key_id = hex::encode(id.finalize().into_bytes());
        key_id.truncate(KEY_ID_HEX_LEN);
        let (mut value, mut content) = (mac.clone(), mac);
        value.update(VALUE_DOMAIN);
        content.update(CONTENT_DOMAIN);
        Self { value, content, key_id }
    }

    /// A short public id of the key (hex), so server and agents can tell they share one.
    ///
    /// It is the first 16 hex characters of HMAC(key, "driftwatch fleet key id"): stable
    /// for a key, different for different keys, and it reveals nothing about the key.
    pub fn key_id(&self) -> String {
        self.key_id.clone()
    }

    /// A value's fingerprint: lower-case hex HMAC-SHA256 of [`VALUE_DOMAIN`] + `data`.
    pub fn fingerprint(&self, data: &[u8]) -> String {
        let mut mac = self.value.clone();
        mac.update(data);
        hex::encode(mac.finalize().into_bytes())
    }

    /// A file's content hash: lower-case hex HMAC-SHA256 of [`CONTENT_DOMAIN`] + `content`.
    pub fn content_hash(&self, content: &[u8]) -> String {
        let mut h = self.content_hasher();
        h.update(content);
        h.finish()
    }

    /// [`Masker::content_hash`] fed in pieces, for content too large to hold in memory.
    pub fn content_hasher(&self) -> ContentHasher {
        ContentHasher { mac: self.content.clone() }
    }
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

/// Incremental HMAC-SHA256 over a file's content; `finish()` gives lower-case hex.
///
/// Feeding the content in any number of pieces gives the same digest as
/// [`Masker::content_hash`] over the whole content.
#[derive(Clone)]
pub struct ContentHasher {
    mac: HmacSha256,
}

impl ContentHasher {
    pub fn update(&mut self, data: &[u8]) {
        self.mac.update(data);
    }
    pub fn finish(self) -> String {
        hex::encode(self.mac.finalize().into_bytes())
    }
}

impl fmt::Debug for ContentHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContentHasher").finish_non_exhaustive()
    }
}
