//! The restore vault: placeholder → secret, per caller, for giving masked secrets back to the
//! caller who sent them (see `crate::anthropic::restore` for the response half).
//!
//! Invariants:
//! - entries are grouped by caller: a keyed hash of the caller's subject and, with
//!   `per_session`, the Claude Code session id. A caller can only ever read its own group, so
//!   another caller's placeholder is simply unknown to it;
//! - what the store holds is a keyed hash per placeholder and the secret sealed with
//!   AES-256-GCM (key derived with HKDF from the placeholder key, label [`VAULT_LABEL`]), the
//!   group and placeholder ids as associated data: a value moved to another caller or
//!   placeholder does not open. No raw secret, placeholder or subject reaches the store;
//! - every entry expires `ttl` after the last request that carried its secret; a caller's group
//!   is bounded in entries and bytes (the earliest to expire go first), and secrets longer than
//!   `max_secret_bytes` are never kept;
//! - `Debug` and every error print no secret, placeholder or subject.

use crate::policy::store::{now_ms, GroupLimits, GroupStore, Id, Sealer, StoreEntry, StoreError};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The HKDF label of the vault's keys (domain separation from every other use of the
/// placeholder key).
pub const VAULT_LABEL: &str = "streammask restore vault v1";

/// Shorter secrets are never kept, so never restored: the proxy could not tell a later
/// occurrence of one from ordinary text, and a restored value must always be masked again.
pub const MIN_SECRET_BYTES: usize = 8;

/// Whose secrets: the caller's subject and, when the vault is per session, its session id.
#[derive(Clone, Copy)]
pub struct Owner<'a> {
    pub subject: &'a str,
    pub session: Option<&'a str>,
}

/// How the vault is bounded and keyed.
#[derive(Debug, Clone, Copy)]
pub struct VaultSettings {
    pub ttl: Duration,
    pub per_session: bool,
    pub limits: GroupLimits,
    pub max_secret_bytes: usize,
}

pub struct RestoreVault {
    store: Arc<dyn GroupStore>,
    sealer: Sealer,
    settings: VaultSettings,
}

impl fmt::Debug for RestoreVault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestoreVault")
            .field("store", &self.store)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl RestoreVault {
    pub fn new(
        store: Arc<dyn GroupStore>,
        sealer: Sealer,
        settings: VaultSettings,
    ) -> RestoreVault {
        RestoreVault {
            store,
            sealer,
            settings,
        }
    }

    pub fn settings(&self) -> &VaultSettings {
        &self.settings
    }

    /// The store's backend name (`memory`, `redis`).
    pub fn backend(&self) -> &'static str {
        self.store.backend()
    }

    fn group(&self, owner: Owner<'_>) -> Id {
        let session = match (self.settings.per_session, owner.session) {
            (true, Some(session)) => session.as_bytes(),
            _ => b"",
        };
        self.sealer
            .id(&[b"owner", owner.subject.as_bytes(), session])
    }

    fn field(&self, placeholder: &str) -> Id {
        self.sealer.id(&[b"placeholder", placeholder.as_bytes()])
    }

    fn aad(group: &Id, field: &Id) -> [u8; 64] {
        let mut aad = [0u8; 64];
        aad[..32].copy_from_slice(group);
        aad[32..].copy_from_slice(field);
        aad
    }

    /// Whether a secret of this length is kept at all.
    pub fn keeps(&self, secret: &str) -> bool {
        (MIN_SECRET_BYTES..=self.settings.max_secret_bytes).contains(&secret.len())
    }

    /// Keep (or refresh) each placeholder → secret for `owner`, in one store round trip.
    pub async fn remember(
        &self,
        owner: Owner<'_>,
        learned: &[(String, String)],
    ) -> Result<(), StoreError> {
        let group = self.group(owner);
        let expires_at_ms = now_ms().saturating_add(self.settings.ttl.as_millis() as u64);
        let mut entries = Vec::with_capacity(learned.len());
        for (placeholder, secret) in learned.iter().filter(|(_, s)| self.keeps(s)) {
            let field = self.field(placeholder);
            let mut plain = Vec::with_capacity(placeholder.len() + 1 + secret.len());
            plain.extend_from_slice(placeholder.as_bytes());
            plain.push(0);
            plain.extend_from_slice(secret.as_bytes());
            let value = self
                .sealer
                .seal(&Self::aad(&group, &field), &plain)
                .map_err(|_| StoreError::Unavailable("sealing failed".into()))?;
            entries.push(StoreEntry {
                field,
                value,
                expires_at_ms,
            });
        }
        if entries.is_empty() {
            return Ok(());
        }
        self.store.put(&group, entries, self.settings.limits).await
    }

    /// The secret of each placeholder `owner` has, in order (`None`: not this owner's, expired,
    /// evicted, or a value that does not open).
    pub async fn recall(
        &self,
        owner: Owner<'_>,
        placeholders: &[String],
    ) -> Result<Vec<Option<String>>, StoreError> {
        if placeholders.is_empty() {
            return Ok(Vec::new());
        }
        let group = self.group(owner);
        let fields: Vec<Id> = placeholders.iter().map(|p| self.field(p)).collect();
        let values = self.store.fetch(&group, &fields).await?;
        Ok(values
            .into_iter()
            .zip(&fields)
            .zip(placeholders)
            .map(|((value, field), placeholder)| {
                let (stored, secret) = self.open(&group, field, &value?)?;
                (stored == *placeholder).then_some(secret)
            })
            .collect())
    }

    /// Every placeholder and secret `owner` has, in one round trip.
    pub async fn recall_all(&self, owner: Owner<'_>) -> Result<Vec<(String, String)>, StoreError> {
        let group = self.group(owner);
        let entries = self.store.fetch_group(&group).await?;
        Ok(entries
            .into_iter()
            .filter_map(|(field, value)| {
                let (placeholder, secret) = self.open(&group, &field, &value)?;
                // The field names the placeholder: a value under another field does not count.
                (self.field(&placeholder) == field).then_some((placeholder, secret))
            })
            .collect())
    }

    /// A sealed value as (placeholder, secret), when it opens under its group and field.
    fn open(&self, group: &Id, field: &Id, value: &[u8]) -> Option<(String, String)> {
        let plain = self.sealer.open(&Self::aad(group, field), value)?;
        let split = plain.iter().position(|b| *b == 0)?;
        let placeholder = String::from_utf8(plain.get(..split)?.to_vec()).ok()?;
        let secret = String::from_utf8(plain.get(split + 1..)?.to_vec()).ok()?;
        Some((placeholder, secret))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::store::MemoryStore;

    fn vault(per_session: bool) -> RestoreVault {
        RestoreVault::new(
            Arc::new(MemoryStore::new(1024, 1 << 20)),
            Sealer::derive(b"0123456789abcdef0123", VAULT_LABEL),
            VaultSettings {
                ttl: Duration::from_secs(60),
                per_session,
                limits: GroupLimits {
                    max_entries: 16,
                    max_bytes: 4096,
                },
                max_secret_bytes: 256,
            },
        )
    }

    fn learned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(p, s)| (p.to_string(), s.to_string()))
            .collect()
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    #[test]
    fn a_caller_gets_back_only_its_own_secrets() {
        let vault = vault(false);
        let alice = Owner {
            subject: "alice",
            session: Some("s1"),
        };
        let bob = Owner {
            subject: "bob",
            session: Some("s1"),
        };
        let asked = vec![
            "[MASKED:a:00000001]".to_string(),
            "[MASKED:a:00000002]".to_string(),
        ];
        block_on(async {
            vault
                .remember(alice, &learned(&[("[MASKED:a:00000001]", "secret-one")]))
                .await
                .expect("kept");
            let mine = vault.recall(alice, &asked).await.expect("read");
            assert_eq!(mine, vec![Some("secret-one".to_string()), None]);
            let other_session = Owner {
                subject: "alice",
                session: Some("s2"),
            };
            assert_eq!(
                vault.recall(other_session, &asked).await.expect("read")[0].as_deref(),
                Some("secret-one")
            );
            assert_eq!(
                vault.recall(bob, &asked).await.expect("read"),
                vec![None, None]
            );
        });
    }

    #[test]
    fn per_session_vaults_separate_sessions_of_one_subject() {
        let vault = vault(true);
        let s1 = Owner {
            subject: "alice",
            session: Some("s1"),
        };
        let s2 = Owner {
            subject: "alice",
            session: Some("s2"),
        };
        let asked = vec!["[MASKED:a:00000001]".to_string()];
        block_on(async {
            vault
                .remember(s1, &learned(&[("[MASKED:a:00000001]", "secret-one")]))
                .await
                .expect("kept");
            assert_eq!(
                vault.recall(s1, &asked).await.expect("read"),
                vec![Some("secret-one".into())]
            );
            assert_eq!(vault.recall(s2, &asked).await.expect("read"), vec![None]);
        });
    }

    #[test]
    fn a_callers_whole_group_reads_back_as_pairs() {
        let vault = vault(false);
        let alice = Owner {
            subject: "alice",
            session: None,
        };
        block_on(async {
            vault
                .remember(
                    alice,
                    &learned(&[
                        ("[MASKED:a:00000001]", "secret-one"),
                        ("[MASKED:b:00000002]", "secret-two"),
                        ("[MASKED:c:00000003]", "short"),
                    ]),
                )
                .await
                .expect("kept");
            let mut all = vault.recall_all(alice).await.expect("read");
            all.sort();
            assert_eq!(
                all,
                learned(&[
                    ("[MASKED:a:00000001]", "secret-one"),
                    ("[MASKED:b:00000002]", "secret-two")
                ])
            );
            let bob = Owner {
                subject: "bob",
                session: None,
            };
            assert!(vault.recall_all(bob).await.expect("read").is_empty());
        });
    }

    #[test]
    fn over_long_secrets_are_not_kept_and_debug_prints_nothing() {
        let vault = vault(false);
        let owner = Owner {
            subject: "alice",
            session: None,
        };
        let long = "x".repeat(300);
        block_on(async {
            vault
                .remember(owner, &learned(&[("[MASKED:a:00000003]", &long)]))
                .await
                .expect("nothing to keep is fine");
            let got = vault
                .recall(owner, &["[MASKED:a:00000003]".to_string()])
                .await
                .expect("read");
            assert_eq!(got, vec![None]);
        });
        let shown = format!("{vault:?}");
        assert!(
            !shown.contains("alice") && !shown.contains("0123456789"),
            "{shown}"
        );
    }
}
