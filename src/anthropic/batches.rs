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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rewritten(body: &Value, host: &str, tls: bool) -> Option<Value> {
        let out = point_results_url_at_proxy(body.to_string().as_bytes(), host, tls)?;
        Some(serde_json::from_slice(&out).expect("rewritten body is JSON"))
    }

    #[test]
    fn results_urls_point_at_the_proxy_in_one_batch_and_in_a_list() {
        let batch = json!({
            "id": "msgbatch_1",
            "processing_status": "ended",
            "results_url": "https://api.anthropic.com/v1/messages/batches/msgbatch_1/results",
        });
        let out = rewritten(&batch, "proxy.corp:8443", true).expect("results_url rewritten");
        assert_eq!(
            out["results_url"],
            "https://proxy.corp:8443/v1/messages/batches/msgbatch_1/results"
        );
        assert_eq!(out["id"], "msgbatch_1", "nothing else changes");
        let list =
            json!({"data": [batch, {"id": "msgbatch_2", "results_url": null}], "has_more": false});
        let out = rewritten(&list, "127.0.0.1:8080", false).expect("results_url rewritten");
        assert_eq!(
            out["data"][0]["results_url"],
            "http://127.0.0.1:8080/v1/messages/batches/msgbatch_1/results"
        );
        assert_eq!(out["data"][1]["results_url"], Value::Null);
    }

    #[test]
    fn nothing_changes_without_a_url_or_with_a_host_that_is_not_an_authority() {
        let pending = json!({"id": "msgbatch_1", "results_url": null});
        assert_eq!(rewritten(&pending, "proxy:8080", false), None);
        let batch = json!({"results_url": "https://api.anthropic.com/v1/x/results"});
        for host in ["", "evil.example/path", "user@evil.example", "a b"] {
            assert_eq!(rewritten(&batch, host, true), None, "{host:?}");
        }
        assert_eq!(
            point_results_url_at_proxy(b"not json", "proxy", false),
            None
        );
        let no_scheme = json!({"results_url": "/v1/messages/batches/x/results"});
        assert_eq!(rewritten(&no_scheme, "proxy", false), None);
    }
}
