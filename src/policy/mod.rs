//! Policy: who is calling and what applies to them — authentication ([`auth`]: JWT/OIDC and
//! static service keys), the caller's [`identity`], per-group [`profiles`] (which rules, which
//! models, which size limit), the upstream [`credentials`] the proxy holds
//! (the Claude API key, and the cloud identities for Bedrock, [`aws`], and Vertex, [`google`]), the CA bundles
//! it [`trust`]s, the shared, sealed [`store`] of per-caller state (memory or Redis), human
//! [`approvals`] of requests that match `approve` rules, and the organisation's own data
//! ([`org_data`]: dictionaries of its terms, protected source trees, personal-data settings).
//!
//! Layer: above `engine` (each profile owns a compiled engine) and `anthropic` (routes and
//! request shapes); below the exchange record, observability and the proxy. It may import only
//! `config_error`, `engine` and `anthropic` (`tests/layers.rs`).
//!
//! Invariant: no credential leaves this layer — not the caller's token (only the identity
//! derived from it does) and not the upstream key (only as a sensitive header value).

pub mod approvals;
pub mod auth;
pub mod aws;
pub mod credentials;
pub mod google;
pub mod identity;
pub mod org_data;
pub mod profiles;
pub mod restore_vault;
pub mod store;
pub mod trust;

use std::sync::Arc;

/// Who may call and what applies to them: built at start-up, shared by every request.
pub struct Security {
    pub auth: auth::Authenticator,
    pub policy: profiles::Policy,
    /// The key injected upstream (`upstream.credentials = "inject"`).
    pub upstream_key: Option<Arc<credentials::UpstreamKey>>,
}
