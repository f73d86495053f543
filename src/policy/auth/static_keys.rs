//! Static service-account keys (CI jobs): configured only as SHA-256 hashes, each mapped to a
//! subject and groups.
//!
//! Invariant: the proxy never holds a static key in clear, only its hash; lookups hash the
//! presented key and compare hashes, so neither the config nor memory gives the keys away.

use super::Caller;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

pub struct StaticKeys {
    by_hash: HashMap<[u8; 32], Caller>,
}

impl StaticKeys {
    pub fn new(entries: &[([u8; 32], String, Vec<String>)]) -> StaticKeys {
        StaticKeys {
            by_hash: entries
                .iter()
                .map(|(hash, subject, groups)| {
                    (
                        *hash,
                        Caller {
                            subject: subject.clone(),
                            groups: groups.clone(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// The caller whose key is `presented`, if any.
    pub fn find(&self, presented: &str) -> Option<Caller> {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.by_hash.get(&hash).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_by_hash_only() {
        let hash: [u8; 32] = Sha256::digest(b"sk-ci-123").into();
        let keys = StaticKeys::new(&[(hash, "ci-deploy".into(), vec!["ci".into()])]);
        let caller = keys.find("sk-ci-123").unwrap();
        assert_eq!(caller.subject, "ci-deploy");
        assert_eq!(caller.groups, ["ci"]);
        assert!(keys.find("sk-ci-124").is_none());
        assert!(keys.find(&hex::encode(hash)).is_none());
    }
}
