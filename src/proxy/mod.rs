//! The Pingora proxy: one request, start to finish.
//!
//! Request path (all in `request_filter`, so every decision is made before any connection to
//! the upstream): route → read the whole body (limit → 413) → undo Content-Encoding → walk and
//! mask → block (403) or forward. A body without rewritten findings goes upstream byte-for-byte.
//!
//! Why forwarding happens here and not in Pingora's later phases: once `request_filter` has read
//! the body, Pingora 0.9 can only replay it to the upstream from its retry buffer, which is
//! capped at 64 KiB; Claude Code requests are routinely larger. So streammask forwards through
//! Pingora's own upstream connector (pooling, TLS, HTTP/1.1 and HTTP/2) from this phase and
//! drives the response itself, which also lets it hold SSE bytes back and flush them later.
//!
//! Invariants:
//! - nothing unscanned reaches the client: SSE goes through [`SseTransformer`], JSON through
//!   the walker, JSONL line by line, anything else is scanned as text or refused;
//! - a compressed upstream response is decompressed before scanning or refused (502);
//! - a client that disconnects mid-stream drops the upstream connection (cancelling it);
//! - no error message carries request or response content.

use crate::api::{route, ApiError, ErrorKind, Route};
use crate::config::{Config, ThinkingPolicy};
use crate::events::{ResponseTranscript, UpstreamError};
use crate::json_walk::{mask_json, mask_jsonl, ThinkingMode, WalkOptions};
use crate::masker::Engine;
use crate::response::{mask_json_response, Located, SseTransformer};
use crate::rules::{Action, Scope};
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession as ClientSession;
use pingora::protocols::ALPN;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Resolves the upstream host without blocking a worker thread, caching the answer briefly.
/// Pingora's `HttpPeer::new` resolves with a blocking call and panics on failure, so the peer
/// is always built from an address resolved here.
pub struct Resolver {
    host: String,
    port: u16,
    cached: std::sync::Mutex<Option<(std::net::SocketAddr, Instant)>>,
}

const DNS_TTL: Duration = Duration::from_secs(30);

impl Resolver {
    pub fn new(host: &str, port: u16) -> Resolver {
        Resolver {
            host: host.to_string(),
            port,
            cached: std::sync::Mutex::new(None),
        }
    }

    pub async fn resolve(&self) -> Option<std::net::SocketAddr> {
        if let Ok(ip) = self.host.parse::<std::net::IpAddr>() {
            return Some(std::net::SocketAddr::new(ip, self.port));
        }
        if let Ok(cached) = self.cached.lock() {
            if let Some((addr, at)) = *cached {
                if at.elapsed() < DNS_TTL {
                    return Some(addr);
                }
            }
        }
        let fresh = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next());
        if let (Some(addr), Ok(mut cached)) = (fresh, self.cached.lock()) {
            *cached = Some((addr, Instant::now()));
        }
        fresh
    }
}

/// Who may call and what applies to them (issue 4): built at start-up by the server.
pub struct Security {
    pub auth: crate::auth::Authenticator,
    pub policy: crate::policy::Policy,
    /// The key injected upstream (`upstream.credentials = "inject"`).
    pub upstream_key: Option<Arc<crate::credentials::UpstreamKey>>,
}

/// Everything a request needs, shared by all requests.
pub struct ProxyState {
    pub config: Config,
    /// The engine of the rule set as loaded (the `default` profile's unless it changes rules).
    pub engine: Arc<Engine>,
    pub security: Security,
    connector: Connector,
    resolver: Resolver,
}

impl ProxyState {
    /// `config.upstream.ca_file` must have been checked ([`crate::tls::check_ca_file`]):
    /// Pingora's connector panics on an unreadable CA bundle.
    pub fn new(config: Config, engine: Arc<Engine>, security: Security) -> ProxyState {
        let resolver = Resolver::new(&config.upstream.host, config.upstream.port);
        let options = config.upstream.ca_file.as_ref().map(|ca| {
            let mut options = pingora::connectors::ConnectorOptions::new(128);
            options.ca_file = Some(ca.display().to_string());
            options
        });
        ProxyState {
            config,
            engine,
            security,
            connector: Connector::new(options),
            resolver,
        }
    }

    fn peer(&self, addr: std::net::SocketAddr) -> HttpPeer {
        let upstream = &self.config.upstream;
        let mut peer = HttpPeer::new(addr, upstream.tls, upstream.host.clone());
        peer.options.connection_timeout = Some(Duration::from_millis(upstream.connect_timeout_ms));
        peer.options.read_timeout = Some(Duration::from_millis(upstream.read_timeout_ms));
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        peer.options.alpn = ALPN::H1;
        peer
    }

    fn walk_options(&self, scope: Scope) -> WalkOptions {
        WalkOptions {
            scope,
            thinking: match self.config.thinking {
                ThinkingPolicy::Report => ThinkingMode::Report,
                ThinkingPolicy::Mask => ThinkingMode::Mask,
            },
        }
    }
}

/// What happened to a request, for logs, metrics and audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outcome {
    #[default]
    Allowed,
    Masked,
    Blocked,
    Error,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Masked => "masked",
            Outcome::Blocked => "blocked",
            Outcome::Error => "error",
        }
    }
}

/// Per-request state.
pub struct RequestCtx {
    pub request_id: String,
    pub started: Instant,
    pub route: Option<Route>,
    pub status: u16,
    pub outcome: Outcome,
    pub request_findings: Vec<Located>,
    pub response_findings: Vec<Located>,
    pub blocked_rule: Option<String>,
    pub tools_blocked: usize,
    pub late_matches: u64,
    /// Set once the caller is authenticated (or to anonymous when auth is off).
    pub identity: Option<std::sync::Arc<crate::identity::Identity>>,
    /// Why authentication or authorization refused the request (bounded label, see
    /// [`crate::auth::AuthError::reason`]; `model_not_allowed` for a profile's model list).
    pub auth_failure: Option<&'static str>,
    /// Pingora's error type when the upstream could not be reached or failed mid-request
    /// (e.g. `TLSHandshakeFailure`, `ConnectRefused`).
    pub upstream_error: Option<&'static str>,
    /// The caller's policy profile (its engine masks this request and its response).
    pub profile: Option<Arc<crate::policy::Profile>>,
    /// Timings, sizes, usage and transcripts for metrics and audit.
    pub obs: crate::events::RequestObs,
}

fn new_request_id() -> String {
    format!(
        "smreq_{:016x}{:08x}",
        rand::random::<u64>(),
        rand::random::<u32>()
    )
}

pub struct Proxy {
    pub state: Arc<ProxyState>,
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// The end-to-end headers of `headers`: hop-by-hop ones (fixed, and those the `Connection`
/// header names) and the framing/encoding headers the proxy rewrites itself are left out.
fn end_to_end_headers<'h>(
    headers: &'h http::HeaderMap,
    rewritten: &'h [HeaderName],
) -> impl Iterator<Item = (&'h HeaderName, &'h http::HeaderValue)> + 'h {
    let listed = connection_listed(headers);
    headers.iter().filter(move |(name, _)| {
        !is_hop_by_hop(name)
            && !listed.iter().any(|l| l == name.as_str())
            && !rewritten.contains(name)
    })
}

/// Header names a `Connection` header declares hop-by-hop (RFC 9110 §7.6.1).
fn connection_listed(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect()
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    /// No downstream modules: Pingora's default adds a (disabled) response-compression module
    /// whose filter would still run on every body write; streammask never compresses what it
    /// writes (a client asking for gzip gets an identity-encoded response).
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            request_id: new_request_id(),
            started: Instant::now(),
            route: None,
            status: 0,
            outcome: Outcome::Allowed,
            request_findings: Vec::new(),
            response_findings: Vec::new(),
            blocked_rule: None,
            tools_blocked: 0,
            late_matches: 0,
            identity: None,
            auth_failure: None,
            upstream_error: None,
            profile: None,
            obs: Default::default(),
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        let span = tracing::info_span!("request", request_id = %ctx.request_id);
        if let Err(error) = tracing::Instrument::instrument(self.handle(session, ctx), span).await {
            if error.kind == ErrorKind::Permission {
                ctx.outcome = Outcome::Blocked;
            } else {
                ctx.outcome = Outcome::Error;
            }
            respond_error(session, ctx, &error).await;
        }
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        // Every request is answered in request_filter; reaching this phase is a bug.
        Err(pingora::Error::explain(
            pingora::ErrorType::InternalError,
            "streammask forwards from request_filter",
        ))
    }

    async fn logging(
        &self,
        _session: &mut Session,
        _error: Option<&pingora::Error>,
        ctx: &mut RequestCtx,
    ) {
        let rules: Vec<&str> = ctx
            .request_findings
            .iter()
            .chain(ctx.response_findings.iter())
            .map(|f| f.finding.rule_id.as_str())
            .collect();
        tracing::info!(
            request_id = %ctx.request_id,
            endpoint = ctx.route.map(Route::label).unwrap_or("unknown"),
            status = ctx.status,
            outcome = ctx.outcome.label(),
            request_findings = ctx.request_findings.len(),
            response_findings = ctx.response_findings.len(),
            rules = ?rules,
            blocked_rule = ctx.blocked_rule.as_deref().unwrap_or(""),
            tools_blocked = ctx.tools_blocked,
            late_matches = ctx.late_matches,
            subject = ctx.identity.as_ref().map(|i| i.subject.as_str()).unwrap_or(""),
            profile = ctx.identity.as_ref().map(|i| i.profile.as_str()).unwrap_or(""),
            auth_failure = ctx.auth_failure.unwrap_or(""),
            upstream_error = ctx.upstream_error.unwrap_or(""),
            duration_ms = ctx.started.elapsed().as_millis() as u64,
            "request"
        );
        // Findings carry rule indices of the engine that produced them: the caller's profile.
        let engine = ctx
            .profile
            .as_ref()
            .map(|profile| Arc::clone(&profile.engine))
            .unwrap_or_else(|| Arc::clone(&self.state.engine));
        crate::events::request_finished(ctx, &engine);
    }
}

async fn respond_error(session: &mut Session, ctx: &mut RequestCtx, error: &ApiError) {
    let body = error.body();
    ctx.status = error.status;
    ctx.obs.bytes_out += body.len();
    let Ok(mut header) = ResponseHeader::build(error.status, Some(4)) else {
        return;
    };
    let _ = header.insert_header(header::CONTENT_TYPE, "application/json");
    let _ = header.insert_header(header::CONTENT_LENGTH, body.len().to_string());
    let _ = header.insert_header("x-streammask-request-id", ctx.request_id.as_str());
    if error.status == 413 || error.status == 400 || ctx.auth_failure.is_some() {
        // The rest of the request body may still be on the wire: do not reuse the connection.
        session.set_keepalive(None);
    }
    if session
        .write_response_header(Box::new(header), false)
        .await
        .is_ok()
    {
        let _ = session
            .write_response_body(Some(Bytes::from(body)), true)
            .await;
    }
}

fn header_str<'a>(session: &'a Session, name: &str) -> Option<&'a str> {
    session
        .req_header()
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
}

/// Read the whole request body, refusing more than `limit` bytes.
async fn read_body(session: &mut Session, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorKind::RequestTooLarge,
            format!("streammask: request body exceeds the limit of {limit} bytes"),
        )
    };
    if let Some(length) = header_str(session, "content-length") {
        match length.trim().parse::<usize>() {
            Ok(length) if length > limit => return Err(too_large()),
            Ok(_) => {}
            Err(_) => {
                return Err(ApiError::new(
                    ErrorKind::InvalidRequest,
                    "streammask: invalid Content-Length",
                ))
            }
        }
    }
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(_) => return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                "streammask: the request body could not be read (truncated or malformed framing)",
            )),
        }
    }
}

/// Undo `Content-Encoding` (applied in order, so undone in reverse), bounded by `limit`.
fn decode_body(body: Vec<u8>, encoding: Option<&str>, limit: usize) -> Result<Vec<u8>, ApiError> {
    let Some(encoding) = encoding else {
        return Ok(body);
    };
    let mut data = body;
    for coding in encoding
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .rev()
    {
        let mut out = Vec::new();
        let reader: Box<dyn Read> = match coding.as_str() {
            "" | "identity" => continue,
            "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(&data[..])),
            "deflate" => Box::new(flate2::read::ZlibDecoder::new(&data[..])),
            "br" => Box::new(brotli::Decompressor::new(&data[..], 4096)),
            "zstd" => match zstd::stream::read::Decoder::new(&data[..]) {
                Ok(decoder) => Box::new(decoder),
                Err(_) => return Err(bad_encoding(&coding)),
            },
            other => {
                return Err(ApiError::new(
                    ErrorKind::InvalidRequest,
                    format!(
                        "streammask: unsupported Content-Encoding {:?}",
                        truncate_label(other)
                    ),
                )
                .with_status(415))
            }
        };
        reader
            .take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|_| bad_encoding(&coding))?;
        if out.len() > limit {
            return Err(ApiError::new(
                ErrorKind::RequestTooLarge,
                format!("streammask: decompressed request body exceeds the limit of {limit} bytes"),
            ));
        }
        data = out;
    }
    Ok(data)
}

fn bad_encoding(coding: &str) -> ApiError {
    ApiError::new(
        ErrorKind::InvalidRequest,
        format!(
            "streammask: the request body is not valid {}",
            truncate_label(coding)
        ),
    )
}

/// Header values echoed into messages are cut short so an error never carries much input.
fn truncate_label(value: &str) -> String {
    value
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(16)
        .collect()
}

fn is_json_content_type(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        let v = v.to_ascii_lowercase();
        let essence = v.split(';').next().unwrap_or("").trim().to_string();
        essence == "application/json" || essence.ends_with("+json")
    })
}

/// How an upstream response body is handled.
enum BodyKind {
    Sse,
    Jsonl,
    Json,
    Text,
}

/// A streaming decoder for a compressed upstream response.
enum Decoder {
    Identity,
    Gzip(flate2::write::MultiGzDecoder<Vec<u8>>),
    Deflate(flate2::write::ZlibDecoder<Vec<u8>>),
    Brotli(Box<brotli::DecompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>),
}

impl Decoder {
    fn for_encoding(encoding: Option<&str>) -> Option<Decoder> {
        match encoding.map(|e| e.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("identity") => Some(Decoder::Identity),
            Some("gzip") | Some("x-gzip") => Some(Decoder::Gzip(
                flate2::write::MultiGzDecoder::new(Vec::new()),
            )),
            Some("deflate") => Some(Decoder::Deflate(
                flate2::write::ZlibDecoder::new(Vec::new()),
            )),
            Some("br") => Some(Decoder::Brotli(Box::new(brotli::DecompressorWriter::new(
                Vec::new(),
                4096,
            )))),
            Some("zstd") => zstd::stream::write::Decoder::new(Vec::new())
                .ok()
                .map(Decoder::Zstd),
            Some(_) => None,
        }
    }

    /// Decompress `chunk`, returning what is available so far.
    fn decode(&mut self, chunk: &[u8]) -> std::io::Result<Vec<u8>> {
        fn drain<W: Write>(
            w: &mut W,
            chunk: &[u8],
            take: impl FnOnce(&mut W) -> Vec<u8>,
        ) -> std::io::Result<Vec<u8>> {
            w.write_all(chunk)?;
            w.flush()?;
            Ok(take(w))
        }
        match self {
            Decoder::Identity => Ok(chunk.to_vec()),
            Decoder::Gzip(d) => drain(d, chunk, |d| std::mem::take(d.get_mut())),
            Decoder::Deflate(d) => drain(d, chunk, |d| std::mem::take(d.get_mut())),
            Decoder::Brotli(d) => drain(d.as_mut(), chunk, |d| std::mem::take(d.get_mut())),
            Decoder::Zstd(d) => drain(d, chunk, |d| std::mem::take(d.get_mut())),
        }
    }
}

impl Proxy {
    pub fn new(state: Arc<ProxyState>) -> Proxy {
        Proxy { state }
    }

    async fn handle(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), ApiError> {
        let state = Arc::clone(&self.state);
        let method = session.req_header().method.as_str().to_string();
        let path = session.req_header().uri.path().to_string();
        ctx.obs.method = method.clone();
        ctx.obs
            .set_session_id(header_str(session, "x-claude-code-session-id"));
        let Some(route) = route(&method, &path, &state.config.extra_passthrough_prefixes) else {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                "streammask: this endpoint is not served by the proxy",
            ));
        };
        ctx.route = Some(route);
        // Identify the caller before reading a byte of the body.
        let profile = self.admit(session, ctx).await?;
        let engine = Arc::clone(&profile.engine);
        let limit = profile.max_body_bytes;

        let raw_body = read_body(session, limit).await?;
        ctx.obs.bytes_in = raw_body.len();
        if let Some(refused) = crate::audit::refusal() {
            return Err(refused);
        }
        let encoding = header_str(session, "content-encoding").map(str::to_string);
        let body = decode_body(raw_body, encoding.as_deref(), limit)?;
        let decoded = encoding.is_some();
        if profile.restricts_models() && !body.is_empty() {
            check_models(&profile, route, &body).inspect_err(|_| {
                ctx.auth_failure = Some("model_not_allowed");
            })?;
        }

        let forward_body = if body.is_empty() {
            if method == "POST" && matches!(route, Route::Messages | Route::CountTokens) {
                return Err(ApiError::new(
                    ErrorKind::InvalidRequest,
                    "streammask: the request body is empty",
                ));
            }
            Vec::new()
        } else {
            if !is_json_content_type(header_str(session, "content-type")) {
                return Err(ApiError::new(
                    ErrorKind::InvalidRequest,
                    "streammask: the request body must be JSON (Content-Type: application/json)",
                )
                .with_status(415));
            }
            let masking = Instant::now();
            let walked = mask_json(&engine, &body, &state.walk_options(Scope::Request));
            ctx.obs.masking += masking.elapsed();
            ctx.obs.model = crate::events::top_level_string(&body, "model");
            let walked = walked.map_err(|err| {
                ApiError::new(
                    ErrorKind::InvalidRequest,
                    format!("streammask: the request body is not valid JSON: {err}"),
                )
            })?;
            ctx.request_findings = walked.findings.into_iter().map(Located::from).collect();
            if let Some(blocking) = ctx
                .request_findings
                .iter()
                .find(|f| f.finding.action == Action::Block)
            {
                let rule_id = blocking.finding.rule_id.clone();
                let description = rule_description(&engine, &rule_id);
                ctx.blocked_rule = Some(rule_id.clone());
                return Err(ApiError::new(
                    ErrorKind::Permission,
                    format!("streammask blocked this request: it matched rule `{rule_id}` ({description})"),
                ));
            }
            match walked.body {
                Some(masked) => {
                    ctx.outcome = Outcome::Masked;
                    masked
                }
                None => body,
            }
        };
        let _ = decoded;
        self.forward(session, ctx, route, &method, forward_body)
            .await
    }

    /// Authenticate the caller, fill `ctx.identity` and choose its profile.
    async fn admit(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
    ) -> Result<Arc<crate::policy::Profile>, ApiError> {
        let security = &self.state.security;
        let caller = match security
            .auth
            .authenticate(&session.req_header().headers)
            .await
        {
            Ok(caller) => caller,
            Err(refused) => {
                ctx.auth_failure = Some(refused.reason);
                let kind = match refused.status {
                    401 => ErrorKind::Authentication,
                    403 => ErrorKind::Permission,
                    _ => ErrorKind::Api,
                };
                return Err(ApiError::new(kind, refused.message).with_status(refused.status));
            }
        };
        let profile = Arc::clone(security.policy.profile_for(&caller.groups));
        ctx.identity = Some(Arc::new(crate::identity::Identity {
            subject: caller.subject,
            groups: caller.groups,
            profile: profile.name.clone(),
        }));
        ctx.profile = Some(Arc::clone(&profile));
        Ok(profile)
    }

    /// The engine of the request's profile.
    fn engine(&self, ctx: &RequestCtx) -> Arc<Engine> {
        ctx.profile
            .as_ref()
            .map(|p| Arc::clone(&p.engine))
            .unwrap_or_else(|| Arc::clone(&self.state.engine))
    }

    fn upstream_request(
        &self,
        session: &Session,
        method: &str,
        body_len: usize,
    ) -> Result<RequestHeader, ApiError> {
        let upstream = &self.state.config.upstream;
        let original = session.req_header();
        let path_and_query = original
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        let target = format!("{}{}", upstream.base_path, path_and_query);
        let internal = |_| {
            ApiError::new(
                ErrorKind::Api,
                "streammask: could not build the upstream request",
            )
        };
        let mut request =
            RequestHeader::build(method, target.as_bytes(), Some(original.headers.len() + 4))
                .map_err(internal)?;
        let injected = self
            .state
            .security
            .upstream_key
            .as_ref()
            .and_then(|key| key.header());
        let mut rewritten = vec![
            header::HOST,
            header::CONTENT_LENGTH,
            header::CONTENT_ENCODING,
            header::ACCEPT_ENCODING,
            header::EXPECT,
        ];
        if self.state.security.upstream_key.is_some() {
            // The caller's credential never goes upstream when the proxy holds the key.
            rewritten.extend([header::AUTHORIZATION, HeaderName::from_static("x-api-key")]);
        }
        for (name, value) in end_to_end_headers(&original.headers, &rewritten) {
            request
                .append_header(name.clone(), value.clone())
                .map_err(internal)?;
        }
        if let Some(key) = injected {
            request.insert_header("x-api-key", key).map_err(internal)?;
        }
        request
            .insert_header(header::HOST, upstream.authority())
            .map_err(internal)?;
        // Ask for identity so every byte can be scanned; a compressed reply is decoded anyway.
        request
            .insert_header(header::ACCEPT_ENCODING, "identity")
            .map_err(internal)?;
        if body_len > 0 || method == "POST" {
            request
                .insert_header(header::CONTENT_LENGTH, body_len.to_string())
                .map_err(internal)?;
        }
        Ok(request)
    }

    async fn forward(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: Route,
        method: &str,
        body: Vec<u8>,
    ) -> Result<(), ApiError> {
        let state = Arc::clone(&self.state);
        let request = self.upstream_request(session, method, body.len())?;
        let body = Bytes::from(body);
        if ctx.obs.wants_transcripts() && !body.is_empty() {
            ctx.obs.request_transcript = Some(body.clone());
        }
        let opened = Instant::now();
        let unavailable = |what: &str| {
            ApiError::new(
                ErrorKind::Api,
                format!("streammask: the upstream API is unavailable ({what})"),
            )
            .with_status(502)
        };
        let failed = |ctx: &mut RequestCtx, stage: UpstreamError, e: pingora::BError| {
            ctx.upstream_error = Some(e.etype().as_str());
            ctx.obs
                .upstream_failed(UpstreamError::from_pingora(stage, &e));
            unavailable(e.etype().as_str())
        };
        let Some(addr) = state.resolver.resolve().await else {
            ctx.upstream_error = Some("DnsFailure");
            ctx.obs.upstream_failed(UpstreamError::Resolve);
            return Err(unavailable("the upstream host does not resolve"));
        };
        let peer = state.peer(addr);
        let (mut upstream, _reused) = state
            .connector
            .get_http_session(&peer)
            .await
            .map_err(|e| failed(ctx, UpstreamError::Connect, e))?;
        // The connector does not apply the peer's timeouts to the session; without them a
        // silent upstream would hold the client forever.
        let timeout = Duration::from_millis(state.config.upstream.read_timeout_ms);
        upstream.set_read_timeout(Some(timeout));
        upstream.set_write_timeout(Some(timeout));
        upstream
            .write_request_header(Box::new(request))
            .await
            .map_err(|e| failed(ctx, UpstreamError::Send, e))?;
        if !body.is_empty() {
            upstream
                .write_request_body(body, true)
                .await
                .map_err(|e| failed(ctx, UpstreamError::Send, e))?;
        }
        upstream
            .finish_request_body()
            .await
            .map_err(|e| failed(ctx, UpstreamError::Send, e))?;
        upstream
            .read_response_header()
            .await
            .map_err(|e| failed(ctx, UpstreamError::Read, e))?;
        ctx.obs.upstream_ttfb = Some(opened.elapsed());
        let Some(upstream_header) = upstream.response_header().cloned() else {
            ctx.obs.upstream_failed(UpstreamError::Read);
            return Err(unavailable("no response header"));
        };

        let content_type = upstream_header
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let kind = if content_type.starts_with("text/event-stream") {
            BodyKind::Sse
        } else if route == Route::BatchResults
            || content_type.contains("jsonl")
            || content_type.contains("ndjson")
        {
            BodyKind::Jsonl
        } else if is_json_content_type(Some(&content_type)) {
            BodyKind::Json
        } else {
            BodyKind::Text
        };
        let encoding = upstream_header
            .headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok());
        let Some(mut decoder) = Decoder::for_encoding(encoding) else {
            ctx.obs.upstream_failed(UpstreamError::Malformed);
            return Err(unavailable("unsupported response Content-Encoding"));
        };

        let mut downstream = ResponseHeader::build(
            upstream_header.status,
            Some(upstream_header.headers.len() + 2),
        )
        .map_err(|_| unavailable("bad response header"))?;
        let rewritten = [header::CONTENT_LENGTH, header::CONTENT_ENCODING];
        for (name, value) in end_to_end_headers(&upstream_header.headers, &rewritten) {
            let _ = downstream.append_header(name.clone(), value.clone());
        }
        let _ = downstream.insert_header("x-streammask-request-id", ctx.request_id.as_str());
        ctx.status = upstream_header.status.as_u16();
        ctx.obs.upstream_status(ctx.status);

        match kind {
            BodyKind::Sse | BodyKind::Jsonl => {
                ctx.obs.streamed = true;
                if !session.as_downstream().is_http2() {
                    let _ = downstream.insert_header(header::TRANSFER_ENCODING, "chunked");
                }
                if session
                    .write_response_header(Box::new(downstream), false)
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                self.stream_body(session, ctx, upstream, &mut decoder, kind, &peer)
                    .await;
                Ok(())
            }
            BodyKind::Json | BodyKind::Text => {
                let body = self
                    .read_whole(&mut upstream, &mut decoder)
                    .await
                    .inspect_err(|_| ctx.obs.upstream_failed(UpstreamError::Read))?;
                let masking = Instant::now();
                let body = self.mask_buffered(ctx, body, kind);
                ctx.obs.masking += masking.elapsed();
                let mut body = body?;
                if route == Route::Batches {
                    if let Some(host) = header_str(session, "host") {
                        let tls = state.config.tls.is_some();
                        if let Some(rewritten) = point_results_url_at_proxy(&body, host, tls) {
                            body = rewritten;
                        }
                    }
                }
                let _ = downstream.insert_header(header::CONTENT_LENGTH, body.len().to_string());
                ctx.obs.usage = crate::events::Usage::from_json_body(&body);
                ctx.obs.bytes_out += body.len();
                let body = Bytes::from(body);
                if ctx.obs.wants_transcripts() {
                    ctx.obs.response_transcript = Some(ResponseTranscript::Body(body.clone()));
                }
                if session
                    .write_response_header(Box::new(downstream), body.is_empty())
                    .await
                    .is_ok()
                    && !body.is_empty()
                {
                    let _ = session.write_response_body(Some(body), true).await;
                }
                state
                    .connector
                    .release_http_session(upstream, &peer, Some(Duration::from_secs(60)))
                    .await;
                Ok(())
            }
        }
    }

    async fn read_whole(
        &self,
        upstream: &mut ClientSession,
        decoder: &mut Decoder,
    ) -> Result<Vec<u8>, ApiError> {
        let limit = self.state.config.upstream.max_response_bytes;
        let mut body = Vec::new();
        loop {
            match upstream.read_response_body().await {
                Ok(Some(chunk)) => {
                    let decoded = decoder.decode(&chunk).map_err(|_| {
                        ApiError::new(
                            ErrorKind::Api,
                            "streammask: the upstream response could not be decompressed",
                        )
                        .with_status(502)
                    })?;
                    body.extend_from_slice(&decoded);
                    if body.len() > limit {
                        return Err(ApiError::new(
                            ErrorKind::Api,
                            "streammask: the upstream response is too large to scan",
                        )
                        .with_status(502));
                    }
                }
                Ok(None) => return Ok(body),
                Err(_) => {
                    return Err(ApiError::new(
                        ErrorKind::Api,
                        "streammask: the upstream connection failed mid-response",
                    )
                    .with_status(502))
                }
            }
        }
    }

    fn mask_buffered(
        &self,
        ctx: &mut RequestCtx,
        body: Vec<u8>,
        kind: BodyKind,
    ) -> Result<Vec<u8>, ApiError> {
        let engine = &self.engine(ctx);
        if let BodyKind::Json = kind {
            let mut findings = Vec::new();
            if let Ok(masked) =
                mask_json_response(engine, &body, self.state.config.thinking, &mut findings)
            {
                ctx.tools_blocked += findings
                    .iter()
                    .filter(|f| f.finding.action == Action::Block)
                    .count();
                ctx.response_findings.extend(findings);
                return Ok(masked.unwrap_or(body));
            }
        }
        // Not JSON after all: scan it as text, and refuse what cannot be read as text.
        let text = String::from_utf8(body).map_err(|_| {
            ApiError::new(
                ErrorKind::Api,
                "streammask: the upstream response is not text and cannot be scanned",
            )
            .with_status(502)
        })?;
        let masked = engine
            .mask(&text, Scope::Response)
            .map_err(|_| ApiError::new(ErrorKind::Api, "streammask: scanning failed"))?;
        for finding in masked.findings {
            ctx.response_findings.push(Located {
                path: String::new(),
                finding,
            });
        }
        Ok(masked.text.into_owned().into_bytes())
    }

    /// Stream an SSE or JSONL response to the client, masking as it goes.
    ///
    /// Each round waits for upstream bytes (or the client leaving), then takes every chunk that
    /// is already readable without waiting, masks them together and writes once. The Claude API
    /// sends one small write per event, and one client write per event would make syscalls the
    /// proxy's main cost. Reading in this task rather than a spawned reader costs no task
    /// wake-up or channel hop per chunk; Pingora's body reader keeps its parse state across a
    /// dropped read, so the reads raced against the client and polled once are cancel-safe.
    async fn stream_body(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        mut upstream: ClientSession,
        decoder: &mut Decoder,
        kind: BodyKind,
        peer: &HttpPeer,
    ) {
        /// Write what is ready once this much is waiting, even if more is readable.
        const WRITE_AT: usize = 64 * 1024;
        let state = Arc::clone(&self.state);
        let engine = self.engine(ctx);
        let mut sse = SseTransformer::new(
            Arc::clone(&engine),
            state.config.thinking,
            state.config.max_sse_event_bytes,
        );
        let mut jsonl = JsonlMasker::new(Arc::clone(&engine));
        let mut guard = crate::events::StreamGuard::start();
        let mut transcript = ctx
            .obs
            .wants_transcripts()
            .then(|| crate::audit::StreamTranscript::new(crate::audit::transcript_limit()));
        let mut out = Vec::with_capacity(8192);
        let mut batch: Vec<Bytes> = Vec::new();
        let mut completed = false;
        let mut client_gone = false;
        loop {
            out.clear();
            let first = tokio::select! {
                biased;
                read = upstream.read_response_body() => read,
                _ = session.as_downstream_mut().read_body_or_idle(true) => {
                    client_gone = true;
                    break;
                }
            };
            // Collect what is readable now, then mask it as one timed batch: the clock covers
            // the masking work only, not the reads.
            let mut ended = None;
            let mut read = Some(first);
            let mut batched = 0;
            while let Some(result) = read.take() {
                match result {
                    Ok(Some(chunk)) => {
                        batched += chunk.len();
                        batch.push(chunk);
                    }
                    Ok(None) => ended = Some(UpstreamEnd::Complete),
                    // An upstream failure ends the stream without `completed`.
                    Err(_) => ended = Some(UpstreamEnd::Failed),
                }
                if ended.is_none() && batched < WRITE_AT {
                    read = ready_now(upstream.read_response_body());
                }
            }
            completed = ended == Some(UpstreamEnd::Complete);
            let mut done = ended.is_some();
            let masking = Instant::now();
            let events_before = sse.events;
            for chunk in batch.drain(..) {
                match decoder.decode(&chunk) {
                    Ok(decoded) => match kind {
                        BodyKind::Sse => sse.push(&decoded, &mut out),
                        _ => jsonl.push(&state, &decoded, &mut out, &mut ctx.response_findings),
                    },
                    Err(_) => {
                        out.extend(crate::response::error_event(
                            "api_error",
                            "streammask: the upstream response could not be decompressed",
                        ));
                        completed = false;
                        done = true;
                        break;
                    }
                }
                if sse.fault().is_some() {
                    done = true;
                    break;
                }
            }
            batch.clear();
            if done {
                match kind {
                    BodyKind::Sse => sse.finish(&mut out),
                    _ => jsonl.finish(&state, &mut out, &mut ctx.response_findings),
                }
            }
            let elapsed = masking.elapsed();
            ctx.obs.masking += elapsed;
            guard.events_masked(sse.events - events_before, elapsed);
            guard.held(sse.held());
            ctx.obs.bytes_out += out.len();
            if let Some(transcript) = transcript.as_mut() {
                transcript.push(&out);
            }
            if done {
                let _ = session
                    .write_response_body(Some(Bytes::from(std::mem::take(&mut out))), true)
                    .await;
                break;
            }
            if !out.is_empty()
                && session
                    .write_response_body(Some(Bytes::from(std::mem::take(&mut out))), false)
                    .await
                    .is_err()
            {
                client_gone = true;
                break;
            }
        }
        ctx.tools_blocked += sse.tools_blocked();
        ctx.late_matches += sse.late_matches();
        ctx.response_findings.append(&mut sse.findings);
        for (kind, value) in &sse.usage {
            ctx.obs.usage.record(kind, *value);
        }
        if let Some(transcript) = transcript {
            ctx.obs.response_transcript = Some(ResponseTranscript::Stream(transcript));
        }
        if sse.fault().is_some() {
            ctx.obs.upstream_failed(UpstreamError::Malformed);
        } else if !completed && !client_gone {
            ctx.obs.upstream_failed(UpstreamError::Read);
        }
        guard.held(0);
        drop(guard);
        // Dropping the upstream session closes its connection: a request the client left is
        // cancelled, and a connection in an unknown state is never pooled.
        if completed && !client_gone && sse.fault().is_none() {
            state
                .connector
                .release_http_session(upstream, peer, Some(Duration::from_secs(60)))
                .await;
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum UpstreamEnd {
    Complete,
    Failed,
}

/// Polls a future once: its output if it is ready now, `None` (dropping it) if it would wait.
/// Only for futures that are cancel-safe while pending.
fn ready_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

/// Refuse a request for a model the caller's profile does not allow (403). Only the `model`
/// fields are read: `model` of a message request, `requests[].params.model` of a batch.
fn check_models(
    profile: &crate::policy::Profile,
    route: Route,
    body: &[u8],
) -> Result<(), ApiError> {
    #[derive(serde::Deserialize)]
    struct Params {
        model: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct BatchRequest {
        params: Option<Params>,
    }
    #[derive(serde::Deserialize)]
    struct Top {
        model: Option<String>,
        requests: Option<Vec<BatchRequest>>,
    }
    if !matches!(route, Route::Messages | Route::CountTokens | Route::Batches) {
        return Ok(());
    }
    // A body that is not this shape is refused later by the walker or the upstream.
    let Ok(top) = serde_json::from_slice::<Top>(body) else {
        return Ok(());
    };
    let models = top.model.into_iter().chain(
        top.requests
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| r.params.and_then(|p| p.model)),
    );
    for model in models {
        if !profile.allows_model(&model) {
            return Err(ApiError::new(
                ErrorKind::Permission,
                format!(
                    "streammask: profile `{}` may not use this model",
                    profile.name
                ),
            ));
        }
    }
    Ok(())
}

/// Batch objects name where their results live (`results_url`). Left pointing at the upstream,
/// SDKs would fetch the results around the proxy, unmasked; point it at the proxy instead.
fn point_results_url_at_proxy(body: &[u8], host: &str, tls: bool) -> Option<Vec<u8>> {
    let scheme = if tls { "https" } else { "http" };
    let rewrite = |batch: &mut serde_json::Value| -> bool {
        let Some(url) = batch.get("results_url").and_then(|u| u.as_str()) else {
            return false;
        };
        let Some(rest) = url.split_once("://").map(|(_, rest)| rest) else {
            return false;
        };
        let path = rest.find('/').map_or("", |slash| &rest[slash..]);
        batch["results_url"] = serde_json::Value::String(format!("{scheme}://{host}{path}"));
        true
    };
    if host.is_empty()
        || host
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b == b'/' || b == b'@')
    {
        return None;
    }
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut changed = rewrite(&mut value);
    if let Some(batches) = value.get_mut("data").and_then(|d| d.as_array_mut()) {
        for batch in batches {
            changed |= rewrite(batch);
        }
    }
    changed.then(|| serde_json::to_vec(&value).ok()).flatten()
}

fn rule_description(engine: &Engine, rule_id: &str) -> String {
    engine
        .matcher()
        .rules()
        .iter()
        .find(|r| r.id() == rule_id)
        .map(|r| r.rule.description.clone())
        .unwrap_or_default()
}

/// Masks a JSON Lines body line by line (batch results), holding at most one partial line.
struct JsonlMasker {
    partial: Vec<u8>,
    engine: Arc<Engine>,
}

impl JsonlMasker {
    fn new(engine: Arc<Engine>) -> JsonlMasker {
        JsonlMasker {
            partial: Vec::new(),
            engine,
        }
    }

    fn push(
        &mut self,
        state: &ProxyState,
        chunk: &[u8],
        out: &mut Vec<u8>,
        findings: &mut Vec<Located>,
    ) {
        self.partial.extend_from_slice(chunk);
        if let Some(last_newline) = self.partial.iter().rposition(|&b| b == b'\n') {
            let complete: Vec<u8> = self.partial.drain(..=last_newline).collect();
            mask_lines(state, &self.engine, &complete, out, findings);
        }
    }

    fn finish(&mut self, state: &ProxyState, out: &mut Vec<u8>, findings: &mut Vec<Located>) {
        let rest = std::mem::take(&mut self.partial);
        if !rest.is_empty() {
            mask_lines(state, &self.engine, &rest, out, findings);
        }
    }
}

fn mask_lines(
    state: &ProxyState,
    engine: &Engine,
    lines: &[u8],
    out: &mut Vec<u8>,
    findings: &mut Vec<Located>,
) {
    match mask_jsonl(engine, lines, &state.walk_options(Scope::Response)) {
        Ok(walked) => {
            findings.extend(walked.findings.into_iter().map(Located::from));
            out.extend_from_slice(walked.body.as_deref().unwrap_or(lines));
        }
        Err(_) => {
            // A line that is not JSON is still scanned, as text.
            let text = String::from_utf8_lossy(lines);
            match engine.mask(&text, Scope::Response) {
                Ok(masked) => out.extend_from_slice(masked.text.as_bytes()),
                Err(_) => out.extend_from_slice(b"{\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"streammask: line could not be scanned\"}}\n"),
            }
        }
    }
}
