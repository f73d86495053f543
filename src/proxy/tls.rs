//! TLS on the listener (`[server.tls]`): the certificate and key checked and loaded.
//!
//! Invariants: the listener speaks TLS 1.2 and 1.3 only (Mozilla "intermediate" settings),
//! offers HTTP/2 by ALPN unless `http2 = false`, and start-up fails with a message naming the
//! key and the file when a certificate or key is unreadable, not PEM, or the two do not belong
//! together. File contents never appear in messages.

use crate::config::TlsConfig;
use pingora::listeners::tls::TlsSettings;
use pingora::tls::pkey::PKey;
use pingora::tls::x509::X509;
use std::path::Path;

/// Read and check the certificate and key, and build the listener's TLS settings.
pub fn listener_settings(config: &TlsConfig) -> Result<TlsSettings, String> {
    let cert_pem = std::fs::read(&config.cert_file).map_err(|e| {
        format!(
            "server.tls.cert_file: cannot read {}: {e}",
            config.cert_file.display()
        )
    })?;
    let key_pem = std::fs::read(&config.key_file).map_err(|e| {
        format!(
            "server.tls.key_file: cannot read {}: {e}",
            config.key_file.display()
        )
    })?;
    let chain = X509::stack_from_pem(&cert_pem)
        .ok()
        .filter(|c| !c.is_empty());
    let Some(chain) = chain else {
        return Err(format!(
            "server.tls.cert_file: {} holds no PEM certificate",
            config.cert_file.display()
        ));
    };
    let key = PKey::private_key_from_pem(&key_pem).map_err(|_| {
        format!(
            "server.tls.key_file: {} holds no PEM private key",
            config.key_file.display()
        )
    })?;
    let matches = chain[0]
        .public_key()
        .map(|public| public.public_eq(&key))
        .unwrap_or(false);
    if !matches {
        return Err(format!(
            "server.tls.key_file: {} is not the private key of the certificate in {}",
            config.key_file.display(),
            config.cert_file.display()
        ));
    }
    let cert = path_str("server.tls.cert_file", &config.cert_file)?;
    let key = path_str("server.tls.key_file", &config.key_file)?;
    let mut settings = TlsSettings::intermediate(cert, key)
        .map_err(|e| format!("server.tls: {}", e.context_str()))?;
    settings
        .check_private_key()
        .map_err(|_| "server.tls.key_file: the key does not match the certificate".to_string())?;
    if config.http2 {
        settings.enable_h2();
    }
    Ok(settings)
}

fn path_str<'p>(key: &str, path: &'p Path) -> Result<&'p str, String> {
    path.to_str()
        .ok_or_else(|| format!("{key}: the path {} is not UTF-8", path.display()))
}

trait ContextStr {
    fn context_str(&self) -> String;
}

impl ContextStr for pingora::BError {
    fn context_str(&self) -> String {
        self.context
            .as_ref()
            .map(|c| c.as_str().to_string())
            .unwrap_or_else(|| self.etype().as_str().to_string())
    }
}
