//! Who is calling. Authentication produces an [`Identity`] for every request it admits; audit
//! records and metrics read it from the request's exchange record.
//!
//! Invariant: an `Identity` never carries the caller's credential, only what was derived from it.

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Stable subject: the JWT `sub`, the static key's configured identity, or `anonymous`.
    pub subject: String,
    /// Groups from the token's groups claim or the static key's configuration.
    pub groups: Vec<String>,
    /// Name of the policy profile that applies to this caller.
    pub profile: String,
}

impl Identity {
    /// The caller when authentication is off (`auth.mode = "none"`).
    pub fn anonymous() -> Identity {
        Identity {
            subject: "anonymous".to_string(),
            groups: Vec::new(),
            profile: "default".to_string(),
        }
    }
}
