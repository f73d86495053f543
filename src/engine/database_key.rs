//! The identity of a compiled Hyperscan database: a SHA-256 over the Hyperscan version, the
//! mode, and every expression with its id and flags, in order.
//!
//! Invariants:
//! - two pattern lists get the same key only if Hyperscan would compile the same database from
//!   them, so a database stored under a key may stand in for compiling those patterns;
//! - this file depends on nothing but `sha2`: `build.rs` includes it (`#[path]`) to key the
//!   databases it embeds, and the runtime keys what it wants to load the same way, so an
//!   embedded database is only ever used for exactly the patterns it was compiled from.

use sha2::{Digest, Sha256};

/// One expression as Hyperscan receives it.
pub struct KeyedPattern<'a> {
    pub id: usize,
    pub flags: u32,
    pub expression: &'a str,
}

pub fn database_key<'a>(
    hyperscan_version: &[u8],
    mode: &str,
    patterns: impl IntoIterator<Item = KeyedPattern<'a>>,
) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(hyperscan_version);
    hasher.update(mode.as_bytes());
    for pattern in patterns {
        hasher.update((pattern.id as u64).to_le_bytes());
        hasher.update(pattern.flags.to_le_bytes());
        hasher.update((pattern.expression.len() as u64).to_le_bytes());
        hasher.update(pattern.expression.as_bytes());
    }
    hasher.finalize().into()
}
