//! The request half of restore: after a request is masked, learn what its placeholders stand
//! for, keep that for its caller, mask every other occurrence of the caller's secrets, and hand
//! the response phase the caller's [`RestoreMap`].
//!
//! Invariants:
//! - the map holds only secrets this caller sent: learned from this request, or read from the
//!   vault under this caller's own key (its whole group, one round trip). Without
//!   authentication there is no owner to tell apart, so nothing is kept or recalled: only
//!   what the same request carried comes back;
//! - every occurrence of a secret the request taught or the caller's vault holds is masked in
//!   the body that goes upstream, in the escaped forms JSON writers use (a restored value in
//!   the history of a later turn goes back as its placeholder, so the model never gets it and
//!   the prompt cache still sees the same bytes) — except inside signed thinking the walk left
//!   as it was, which is the upstream's own text under its signature;
//! - this runs for every route with a JSON body (`count_tokens` carries the same history);
//! - a vault that fails or is slow (`[restore] redis_timeout_ms`) costs restores, not the
//!   request, unless the request carries placeholders of earlier requests: their secrets may
//!   have been restored into it and could not be masked again, so it is refused (503);
//! - the log lines here name counts and the store's error kind, never a secret or placeholder.

use super::{ProxyState, RequestCtx};
use crate::anthropic::api::{ApiError, ErrorKind};
use crate::anthropic::restore::{
    escaped_forms, find_placeholders, placeholder_rule_id, RestoreMap, RestoreScopes,
};
use crate::engine::json_walk::Learned;
use crate::engine::{Action, Engine, Finding};
use crate::policy::profiles::Profile;
use crate::policy::restore_vault::{Owner, RestoreVault, MIN_SECRET_BYTES};
use aho_corasick::{AhoCorasick, MatchKind};
use std::collections::HashSet;
use std::sync::Arc;

/// The restore state of the proxy (`[restore]`): the vault and where restore applies.
#[derive(Clone)]
pub struct Restore {
    pub vault: Arc<RestoreVault>,
    pub scopes: RestoreScopes,
    /// Tools whose inputs get secrets back (`None`: every tool).
    pub tools: Option<Arc<HashSet<String>>>,
    /// Whether callers are authenticated (otherwise nothing is recalled across requests).
    pub owners_known: bool,
}

/// What the request walk learned: placeholders with what they replaced, and where the signed
/// thinking is in the forwarded body (left as it is: rewriting it breaks its signature).
#[derive(Debug, Default)]
pub(super) struct Learning {
    pub learned: Vec<Learned>,
    pub signed_thinking: Vec<std::ops::Range<usize>>,
}

/// Learn, keep and recall for this request; returns the body to forward (with every other
/// occurrence of a secret the caller has in the vault, or this request taught, masked). Sets
/// `ctx.restore` when restore applies. Refuses (503) a request that carries placeholders of
/// earlier requests while the vault cannot be read: what was restored for them may be in it,
/// and could not be masked again.
pub(super) async fn prepare(
    state: &ProxyState,
    profile: &Profile,
    ctx: &mut RequestCtx,
    learning: Learning,
    body: Vec<u8>,
) -> Result<Vec<u8>, ApiError> {
    let Learning {
        learned,
        signed_thinking,
    } = learning;
    let Some(restore) = state
        .restore
        .as_ref()
        .filter(|_| profile.restore && !body.is_empty())
    else {
        return Ok(body);
    };
    let engine = &profile.engine;
    let mut map = RestoreMap::new(restore.scopes).with_tools(restore.tools.clone());
    for rule in engine.non_restoring_rule_ids() {
        map.opt_out(rule);
    }
    let mut known: Vec<(String, String)> = Vec::new();
    let mut keep: Vec<(String, String)> = Vec::new();
    for learned in learned {
        if map.restores_rule_of(&learned.placeholder) && restore.vault.keeps(&learned.secret) {
            map.insert(learned.placeholder.clone(), learned.secret.clone());
            keep.push((learned.placeholder.clone(), learned.secret.clone()));
        }
        known.push((learned.placeholder, learned.secret));
    }
    if restore.owners_known {
        let subject = ctx
            .exchange
            .caller
            .as_ref()
            .map_or("anonymous", |c| c.subject.as_str())
            .to_string();
        let session = ctx.exchange.session_id.clone();
        let owner = Owner {
            subject: &subject,
            session: session.as_deref(),
        };
        // One round trip each, in parallel: a store that is down costs at most one timeout.
        let (recalled, remembered) = tokio::join!(
            restore.vault.recall_all(owner),
            restore.vault.remember(owner, &keep)
        );
        if let Err(error) = remembered {
            ctx.exchange.restore_store_failed = true;
            tracing::warn!(%error, backend = restore.vault.backend(), "restore vault unavailable: secrets of this request are not kept");
        }
        match recalled {
            Ok(all) => {
                let taught: HashSet<&str> = keep.iter().map(|(p, _)| p.as_str()).collect();
                let carried: HashSet<String> = carried_placeholders(&body).into_iter().collect();
                let mut refresh = Vec::new();
                for (placeholder, secret) in all {
                    if taught.contains(placeholder.as_str()) {
                        continue;
                    }
                    if map.restores_rule_of(&placeholder) && restore.vault.keeps(&secret) {
                        map.insert(placeholder.clone(), secret.clone());
                        if carried.contains(&placeholder) {
                            refresh.push((placeholder.clone(), secret.clone()));
                        }
                    }
                    // Masked again whether or not it may come back now.
                    known.push((placeholder, secret));
                }
                if !refresh.is_empty() {
                    // A placeholder still in use keeps its secret alive; off the request path.
                    let vault = Arc::clone(&restore.vault);
                    let subject = subject.clone();
                    tokio::spawn(async move {
                        let owner = Owner {
                            subject: &subject,
                            session: session.as_deref(),
                        };
                        if let Err(error) = vault.remember(owner, &refresh).await {
                            tracing::warn!(%error, "restore vault: refreshing kept secrets failed");
                        }
                    });
                }
            }
            Err(error) => {
                map.set_store_failed();
                ctx.exchange.restore_store_failed = true;
                let taught: HashSet<&str> = known.iter().map(|(p, _)| p.as_str()).collect();
                let foreign = carried_placeholders(&body)
                    .iter()
                    .any(|p| !taught.contains(p.as_str()));
                tracing::warn!(%error, backend = restore.vault.backend(), refused = foreign, "restore vault unavailable");
                if foreign {
                    return Err(ApiError::new(
                        ErrorKind::Api,
                        "streammask: the restore vault is unavailable, and this request carries \
                         placeholders of earlier requests whose secrets could not be masked \
                         again; retry shortly",
                    )
                    .with_status(503));
                }
            }
        }
    }
    let body = mask_repeats(
        engine,
        &mut ctx.exchange.request_findings,
        &known,
        &signed_thinking,
        body,
    );
    ctx.restore = Some(Arc::new(map));
    Ok(body)
}

/// Whether `body` holds a `\uXXXX` escape of a character at or above U+0020: writers that
/// escape only what JSON requires (control characters) never write one.
fn has_printable_unicode_escape(body: &[u8]) -> bool {
    memchr::memmem::find_iter(body, b"\\u").any(|at| {
        body.get(at + 2..at + 6)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            .is_some_and(|unit| unit >= 0x20)
    })
}

/// Every distinct well-formed placeholder in `body`, in order of first appearance.
fn carried_placeholders(body: &[u8]) -> Vec<String> {
    let mut seen = HashSet::new();
    find_placeholders(body)
        .map(|range| String::from_utf8_lossy(&body[range]).into_owned())
        .filter(|placeholder| seen.insert(placeholder.clone()))
        .collect()
}

/// `body` with every occurrence of a known secret (as it appears inside a JSON string)
/// replaced by its placeholder, except inside `protected` ranges (signed thinking, sorted);
/// each replacement is recorded as a finding of the rule the placeholder names, at path `*`
/// (anywhere in the body).
pub fn mask_repeats(
    engine: &Engine,
    findings: &mut crate::engine::Findings,
    known: &[(String, String)],
    protected: &[std::ops::Range<usize>],
    body: Vec<u8>,
) -> Vec<u8> {
    // The other writers' forms are searched for only when the body uses their escapes at all
    // (`JSON.stringify`, what Claude Code sends, uses neither): each form costs search time.
    let slashes = memchr::memmem::find(&body, b"\\/").is_some();
    let unicode = has_printable_unicode_escape(&body);
    let (patterns, placeholders): (Vec<Vec<u8>>, Vec<&str>) = known
        .iter()
        .filter(|(_, secret)| secret.len() >= MIN_SECRET_BYTES)
        .flat_map(|(placeholder, secret)| {
            escaped_forms(secret)
                .into_iter()
                .enumerate()
                .filter(|(i, form)| {
                    *i == 0
                        || (slashes && memchr::memmem::find(form, b"\\/").is_some())
                        || (unicode && memchr::memmem::find(form, b"\\u").is_some())
                })
                .map(move |(_, form)| (form, placeholder.as_str()))
        })
        .unzip();
    if patterns.is_empty() {
        return body;
    }
    let Ok(searcher) = AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostLongest)
        .build(&patterns)
    else {
        return body;
    };
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    for found in searcher.find_iter(&body) {
        let after = protected.partition_point(|r| r.end <= found.start());
        if protected.get(after).is_some_and(|r| r.start < found.end()) {
            continue;
        }
        let placeholder = placeholders[found.pattern().as_usize()];
        let out = out.get_or_insert_with(|| Vec::with_capacity(body.len()));
        out.extend_from_slice(&body[copied..found.start()]);
        out.extend_from_slice(placeholder.as_bytes());
        copied = found.end();
        let rule_id = placeholder_rule_id(placeholder).unwrap_or_default();
        findings.push(
            "*",
            Finding {
                rule: engine.rule_index(rule_id).unwrap_or(u32::MAX),
                rule_id: rule_id.to_string(),
                action: Action::Mask,
                span: 0..0,
                placeholder: placeholder.to_string(),
                rewritten: true,
                secret_chars: found.len(),
                checksum_valid: None,
                detail: None,
            },
        );
    }
    match out {
        Some(mut out) => {
            out.extend_from_slice(&body[copied..]);
            out
        }
        None => body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_masked_everywhere_but_in_signed_thinking() {
        let engine = crate::engine::test_engine(
            "[[rules]]\nid = \"t\"\ndescription = \"t\"\npattern = 'tok_[a-z]{8}'\naction = \"mask\"\n",
        );
        let secret = "bare-value-7Hq2\"x";
        let placeholder = "[MASKED:t:01234567]";
        let body = br#"{"a":"grep bare-value-7Hq2\"x .env","thinking":"bare-value-7Hq2\"x","b":"bare-value-7Hq2\"x"}"#;
        let thinking_at = memchr::memmem::find(body, b"\"thinking\":").expect("key") + 11;
        let protected: Vec<std::ops::Range<usize>> =
            std::iter::once(thinking_at..thinking_at + 21).collect();
        let mut findings = crate::engine::Findings::new();
        let known = vec![(placeholder.to_string(), secret.to_string())];
        let out = mask_repeats(&engine, &mut findings, &known, &protected, body.to_vec());
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            r#"{"a":"grep [MASKED:t:01234567] .env","thinking":"bare-value-7Hq2\"x","b":"[MASKED:t:01234567]"}"#
        );
        assert_eq!(findings.len(), 2);
        // Short values are not masked by occurrence alone.
        let short = vec![(placeholder.to_string(), "abc".to_string())];
        let out = mask_repeats(
            &engine,
            &mut findings,
            &short,
            &[],
            b"{\"a\":\"abc\"}".to_vec(),
        );
        assert_eq!(out, b"{\"a\":\"abc\"}");
    }

    #[test]
    fn other_writers_escapes_are_masked_when_the_body_uses_them() {
        let engine = crate::engine::test_engine(
            "[[rules]]\nid = \"t\"\ndescription = \"t\"\npattern = 'tok_[a-z]{8}'\naction = \"mask\"\n",
        );
        let known = vec![("[MASKED:t:01234567]".to_string(), "ab+cd/ef12".to_string())];
        let mut findings = crate::engine::Findings::new();
        for (body, expected) in [
            (
                r#"{"a":"ab\u002Bcd\u002Fef12"}"#,
                r#"{"a":"[MASKED:t:01234567]"}"#,
            ),
            (r#"{"a":"ab+cd\/ef12"}"#, r#"{"a":"[MASKED:t:01234567]"}"#),
            (
                r#"{"a":"ab+cd/ef12 \u001b"}"#,
                r#"{"a":"[MASKED:t:01234567] \u001b"}"#,
            ),
        ] {
            let out = mask_repeats(
                &engine,
                &mut findings,
                &known,
                &[],
                body.as_bytes().to_vec(),
            );
            assert_eq!(String::from_utf8(out).expect("utf-8"), expected);
        }
        assert!(!has_printable_unicode_escape(br#"{"a":"\u001b[0m"}"#));
        assert!(has_printable_unicode_escape(br#"{"a":"\u00e9"}"#));
    }

    #[test]
    fn carried_placeholders_are_found_once_each() {
        let body = br#"{"a":"[MASKED:x-y:0123abcd] [MASKED:x-y:0123abcd] [MASKED:bad] [MASKED:z:ffffffff]"}"#;
        assert_eq!(
            carried_placeholders(body),
            ["[MASKED:x-y:0123abcd]", "[MASKED:z:ffffffff]"]
        );
    }
}
