//! Message batch objects: where their results live.
//!
//! Invariant: a batch object that reaches a client points its `results_url` at the proxy, so
//! SDKs fetch the results through it (masked) and never around it.

use serde_json::Value;

/// `body` (a batch object or a list of them) with every `results_url` pointed at `host`
/// (the proxy as the client addressed it); `None` when nothing changed or `host` is not a
/// plain authority.
pub fn point_results_url_at_proxy(body: &[u8], host: &str, tls: bool) -> Option<Vec<u8>> {
    let scheme = if tls { "https" } else { "http" };
    let rewrite = |batch: &mut Value| -> bool {
        let Some(url) = batch.get("results_url").and_then(|u| u.as_str()) else {
            return false;
        };
        let Some(rest) = url.split_once("://").map(|(_, rest)| rest) else {
            return false;
        };
        let path = rest.find('/').map_or("", |slash| &rest[slash..]);
        batch["results_url"] = Value::String(format!("{scheme}://{host}{path}"));
        true
    };
    if host.is_empty()
        || host
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b == b'/' || b == b'@')
    {
        return None;
    }
    let mut value: Value = serde_json::from_slice(body).ok()?;
    let mut changed = rewrite(&mut value);
    if let Some(batches) = value.get_mut("data").and_then(|d| d.as_array_mut()) {
        for batch in batches {
            changed |= rewrite(batch);
        }
    }
    changed.then(|| serde_json::to_vec(&value).ok()).flatten()
}
