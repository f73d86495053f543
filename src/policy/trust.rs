//! Trust anchors: CA bundles that replace the system roots for an HTTPS peer (the upstream API,
//! the identity provider's JWKS).
//!
//! Invariant: a bundle is checked at start-up — readable, at least one PEM certificate, a UTF-8
//! path — because Pingora's connector panics on a bad one at the first connection instead.

use pingora::tls::x509::X509;
use std::path::Path;

/// Check the CA bundle at `path`; the error names the file, never its contents.
pub fn check_ca_file(path: &Path) -> Result<(), String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    match X509::stack_from_pem(&pem) {
        Ok(certs) if !certs.is_empty() => match path.to_str() {
            Some(_) => Ok(()),
            None => Err(format!("ca_file: the path {} is not UTF-8", path.display())),
        },
        _ => Err(format!("{} holds no PEM certificate", path.display())),
    }
}
