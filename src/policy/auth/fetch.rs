//! A small HTTP(S) client: GET for JWKS and OIDC discovery documents, any method for the
//! approvals webhook and the `approvals` CLI; built on Pingora's
//! upstream connector (so TLS verification, SNI and a custom CA work as for the upstream API).
//!
//! Invariants: certificates are verified (a custom CA replaces the system roots only when
//! configured); bodies are capped at [`MAX_DOCUMENT_BYTES`]; every fetch has a deadline; the
//! host is resolved asynchronously (Pingora's resolver blocks and panics).

use bytes::BytesMut;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::RequestHeader;
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use std::time::Duration;

pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;
const FETCH_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("invalid URL: {0}")]
    Url(&'static str),
    #[error("{0}")]
    Failed(String),
}

/// An `http://` or `https://` URL split into what a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub path_and_query: String,
}

impl Url {
    pub fn parse(url: &str) -> Result<Url, FetchError> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(FetchError::Url("must start with http:// or https://"));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(FetchError::Url("no usable host"));
        }
        let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
            let (host, after) = stripped
                .split_once(']')
                .ok_or(FetchError::Url("bad IPv6 host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| FetchError::Url("invalid port"))?,
                None => default_port(tls),
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (
                    host.to_string(),
                    port.parse().map_err(|_| FetchError::Url("invalid port"))?,
                ),
                None => (authority.to_string(), default_port(tls)),
            }
        };
        let path_and_query = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        Ok(Url {
            tls,
            host,
            port,
            path_and_query,
        })
    }

    fn authority(&self) -> String {
        if self.port == default_port(self.tls) {
            self.host.clone()
        } else if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn default_port(tls: bool) -> u16 {
    if tls {
        443
    } else {
        80
    }
}

/// Fetches documents; one per verifier.
pub struct Fetcher {
    connector: Connector,
}

impl Fetcher {
    pub fn new(ca_file: Option<&std::path::Path>) -> Fetcher {
        let options = ca_file.map(|path| {
            let mut options = ConnectorOptions::new(1);
            options.ca_file = Some(path.display().to_string());
            options
        });
        Fetcher {
            connector: Connector::new(options),
        }
    }

    /// GET `url`, expecting 200 and at most [`MAX_DOCUMENT_BYTES`].
    pub async fn get(&self, url: &Url) -> Result<Vec<u8>, FetchError> {
        let (status, body) = self
            .send("GET", url, &[("accept", "application/json")], None)
            .await?;
        if status != 200 {
            return Err(FetchError::Failed(format!("HTTP status {status}")));
        }
        Ok(body)
    }

    /// One request (`method`, `url`, extra `headers`, optional `body`) with a deadline; the
    /// status and at most [`MAX_DOCUMENT_BYTES`] of the response body, whatever the status.
    pub async fn send(
        &self,
        method: &str,
        url: &Url,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), FetchError> {
        match tokio::time::timeout(FETCH_DEADLINE, self.send_inner(method, url, headers, body))
            .await
        {
            Ok(result) => result,
            Err(_) => Err(FetchError::Failed("timed out".into())),
        }
    }

    async fn send_inner(
        &self,
        method: &str,
        url: &Url,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), FetchError> {
        let failed = |what: &str| FetchError::Failed(what.to_string());
        let addr = tokio::net::lookup_host((url.host.as_str(), url.port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| failed("host does not resolve"))?;
        let mut peer = HttpPeer::new(addr, url.tls, url.host.clone());
        peer.options.alpn = ALPN::H1;
        peer.options.connection_timeout = Some(Duration::from_secs(5));
        let (mut session, _) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(|e| failed(e.etype().as_str()))?;
        session.set_read_timeout(Some(FETCH_DEADLINE));
        session.set_write_timeout(Some(FETCH_DEADLINE));
        let mut request = RequestHeader::build(method, url.path_and_query.as_bytes(), Some(8))
            .map_err(|_| failed("bad request"))?;
        let _ = request.insert_header("host", url.authority());
        let _ = request.insert_header("user-agent", "streammask");
        let _ = request.insert_header("connection", "close");
        for (name, value) in headers {
            request
                .insert_header(name.to_string(), *value)
                .map_err(|_| failed("bad header"))?;
        }
        if let Some(body) = body {
            let _ = request.insert_header("content-length", body.len().to_string());
        }
        session
            .write_request_header(Box::new(request))
            .await
            .map_err(|e| failed(e.etype().as_str()))?;
        if let Some(body) = body {
            session
                .write_request_body(bytes::Bytes::copy_from_slice(body), false)
                .await
                .map_err(|e| failed(e.etype().as_str()))?;
        }
        session
            .finish_request_body()
            .await
            .map_err(|e| failed(e.etype().as_str()))?;
        session
            .read_response_header()
            .await
            .map_err(|e| failed(e.etype().as_str()))?;
        let status = session
            .response_header()
            .map(|h| h.status.as_u16())
            .unwrap_or(0);
        let mut body = BytesMut::new();
        while let Some(chunk) = session
            .read_response_body()
            .await
            .map_err(|e| failed(e.etype().as_str()))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(failed("document too large"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("https://idp.example/realms/x/protocol/openid-connect/certs").unwrap();
        assert!(u.tls);
        assert_eq!((u.host.as_str(), u.port), ("idp.example", 443));
        assert_eq!(u.path_and_query, "/realms/x/protocol/openid-connect/certs");
        let u = Url::parse("http://127.0.0.1:8081").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path_and_query.as_str()),
            ("127.0.0.1", 8081, "/")
        );
        assert_eq!(u.authority(), "127.0.0.1:8081");
        let u = Url::parse("http://[::1]:9/k?x=1").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        assert_eq!(u.authority(), "[::1]:9");
        assert!(Url::parse("ftp://x").is_err());
        assert!(Url::parse("https://user@x/").is_err());
        assert!(Url::parse("https://x:port/").is_err());
    }
}
