//! Configuration: the TOML file model, the embedded default, command-line overrides, and the
//! translation into a validated [`Config`] the proxy runs on.
//!
//! Invariants:
//! - unknown keys are rejected (a typo must not silently fall back to a default);
//! - every validation error names the key it is about (`upstream.url: …`);
//! - a [`Config`] is complete and checked: addresses parse, limits are in range. Nothing on the
//!   request path re-validates it. The upstream host is *not* resolved here: DNS answers change
//!   and may be unavailable at start-up, so the proxy resolves it asynchronously;
//! - files named here (certificates, keys, CA bundles, JWKS) are not read here either, so
//!   `config check` works without the secrets present; start-up reads and checks them.
//!
//! Layer: sections live next to the module that uses them (`[auth]` in `policy::auth`,
//! `[audit]` in `observe::audit`); this module composes them, so it sits above `policy` and
//! `observe` and below the proxy and start-up. Validation errors are
//! [`crate::config_error::ConfigError`].
//!
//! Naming: sections are nouns (`server`, `upstream`, `masking`), keys are snake_case, sizes end
//! in `_bytes`, durations in `_ms` or `_secs`.

use crate::config_error::invalid;

pub mod clouds;
pub use crate::config_error::ConfigError;
use crate::engine::databases::CacheSetting;
use crate::observe::audit::AuditSection;
use crate::observe::log::LogSection;
use crate::observe::metrics::MetricsSection;
use crate::policy::approvals::{ApprovalSettings, ApprovalsSection};
use crate::policy::auth::{AuthConfig, AuthSection};
use crate::policy::credentials::{CredentialsMode, CredentialsSettings, KeySource};
use crate::policy::org_data::{DictionarySection, OrgData, PiiSection, ProtectedCodeSection};
use crate::policy::profiles::ProfileSection;
use crate::policy::store::{resolve_redis_url, RedisKeys};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The configuration used when no file is given: a local proxy in front of the Claude API.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../deploy/default.toml");

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub upstream: UpstreamSection,
    #[serde(default)]
    pub masking: MaskingSection,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub profiles: Vec<ProfileSection>,
    #[serde(default)]
    pub audit: AuditSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub restore: RestoreSection,
    #[serde(default)]
    pub approvals: ApprovalsSection,
    /// `[[dictionaries]]`: the organisation's own terms.
    #[serde(default)]
    pub dictionaries: Vec<DictionarySection>,
    /// `[[protected_code]]`: source trees whose code must not reach the model.
    #[serde(default)]
    pub protected_code: Vec<ProtectedCodeSection>,
    /// `[pii]`: what the personal-data validators read.
    #[serde(default)]
    pub pii: PiiSection,
    #[serde(default)]
    pub shutdown: ShutdownSection,
    /// `[bedrock]`: Claude through Amazon Bedrock.
    #[serde(default)]
    pub bedrock: clouds::BedrockSection,
    /// `[vertex]`: Claude through Google Vertex AI.
    #[serde(default)]
    pub vertex: clouds::VertexSection,
}

/// `[restore]`: placeholders given back to the caller who sent the secret, in its own tool
/// calls (see `crate::anthropic::restore`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestoreSection {
    pub enabled: bool,
    /// Where: `"tool_input"` (default) and, opt-in, `"text"`.
    pub scopes: Vec<String>,
    /// How long a learned secret is kept after it was last seen in a request.
    pub ttl_secs: u64,
    /// Key the vault by Claude Code session too, not only by caller.
    pub per_session: bool,
    /// `"memory"` (one replica) or `"redis"` (replicas share it).
    pub store: String,
    pub redis_url: Option<String>,
    /// The environment variable holding the Redis URL instead (it may carry a password).
    pub redis_url_env: Option<String>,
    pub redis_timeout_ms: u64,
    /// Per caller: at most this many secrets and bytes (the earliest to expire go first).
    pub max_entries_per_caller: usize,
    pub max_bytes_per_caller: usize,
    /// Longer secrets are never kept (nor restored).
    pub max_secret_bytes: usize,
    /// Tools whose inputs get secrets back; `["*"]` for every tool.
    pub tools: Vec<String>,
}

/// The tools restore serves by default: Claude Code's file and shell tools, which act on the
/// developer's own machine. A tool that sends its input elsewhere (a web fetch, an MCP server)
/// would carry a restored secret off it.
pub const DEFAULT_RESTORE_TOOLS: [&str; 5] = ["Bash", "Edit", "MultiEdit", "Write", "NotebookEdit"];

impl Default for RestoreSection {
    fn default() -> Self {
        RestoreSection {
            enabled: true,
            scopes: vec!["tool_input".into()],
            ttl_secs: 86_400,
            per_session: false,
            store: "memory".into(),
            redis_url: None,
            redis_url_env: None,
            redis_timeout_ms: 500,
            max_entries_per_caller: 1024,
            max_bytes_per_caller: 1 << 20,
            max_secret_bytes: 16 << 10,
            tools: DEFAULT_RESTORE_TOOLS.map(String::from).to_vec(),
        }
    }
}

/// Where restored secrets are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreStore {
    Memory,
    /// The URL is only ever passed to the Redis client, never printed.
    Redis {
        url: String,
    },
}

/// The validated `[restore]` section.
#[derive(Debug, Clone)]
pub struct RestoreConfig {
    pub enabled: bool,
    pub tool_input: bool,
    pub text: bool,
    pub ttl_secs: u64,
    pub per_session: bool,
    pub store: RestoreStore,
    pub redis_timeout_ms: u64,
    pub max_entries_per_caller: usize,
    pub max_bytes_per_caller: usize,
    pub max_secret_bytes: usize,
    /// `None`: every tool.
    pub tools: Option<Vec<String>>,
}

impl RestoreSection {
    fn validate(self) -> Result<RestoreConfig, ConfigError> {
        let (mut tool_input, mut text) = (false, false);
        for scope in &self.scopes {
            match scope.as_str() {
                "tool_input" => tool_input = true,
                "text" => text = true,
                _ => {
                    return Err(invalid(
                        "restore.scopes",
                        "takes \"tool_input\" and \"text\" only (thinking is never restored)",
                    ))
                }
            }
        }
        if !(60..=30 * 86_400).contains(&self.ttl_secs) {
            return Err(invalid(
                "restore.ttl_secs",
                "must be between 60 and 2592000 (30 days)",
            ));
        }
        if !(10..=10_000).contains(&self.redis_timeout_ms) {
            return Err(invalid(
                "restore.redis_timeout_ms",
                "must be between 10 and 10000",
            ));
        }
        if !(1..=1_000_000).contains(&self.max_entries_per_caller) {
            return Err(invalid(
                "restore.max_entries_per_caller",
                "must be between 1 and 1000000",
            ));
        }
        if !(64..=1 << 20).contains(&self.max_secret_bytes) {
            return Err(invalid(
                "restore.max_secret_bytes",
                "must be between 64 and 1048576",
            ));
        }
        if self.max_bytes_per_caller < self.max_secret_bytes || self.max_bytes_per_caller > 64 << 20
        {
            return Err(invalid(
                "restore.max_bytes_per_caller",
                "must be at least restore.max_secret_bytes and at most 67108864",
            ));
        }
        if self.tools.is_empty() || self.tools.iter().any(|t| t.trim().is_empty()) {
            return Err(invalid(
                "restore.tools",
                "must name at least one tool (or \"*\" for every tool), and no empty name",
            ));
        }
        let tools = (!self.tools.iter().any(|t| t == "*")).then_some(self.tools);
        let store = match self.store.as_str() {
            "memory" => RestoreStore::Memory,
            "redis" => RestoreStore::Redis {
                url: resolve_redis_url(
                    RedisKeys {
                        store: "restore.store",
                        url: "restore.redis_url",
                        url_env: "restore.redis_url_env",
                    },
                    self.redis_url.as_deref(),
                    self.redis_url_env.as_deref(),
                )?,
            },
            _ => return Err(invalid("restore.store", "must be \"memory\" or \"redis\"")),
        };
        Ok(RestoreConfig {
            enabled: self.enabled && (tool_input || text),
            tool_input,
            text,
            ttl_secs: self.ttl_secs,
            per_session: self.per_session,
            store,
            redis_timeout_ms: self.redis_timeout_ms,
            max_entries_per_caller: self.max_entries_per_caller,
            max_bytes_per_caller: self.max_bytes_per_caller,
            max_secret_bytes: self.max_secret_bytes,
            tools,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub listen: String,
    pub admin: String,
    pub threads: usize,
    pub max_body_bytes: usize,
    /// Requests served at once (a stream counts until its end); beyond it a 503
    /// `overloaded_error`. 0: no limit. The open-file limit is raised at start-up to fit it.
    pub max_connections: usize,
    /// Path prefixes forwarded besides the Messages API routes (bodies still scanned).
    pub extra_passthrough_prefixes: Vec<String>,
    /// TLS on the listener (`[server.tls]`); plain HTTP without it.
    pub tls: Option<TlsSection>,
    /// Accept cleartext HTTP/2 (prior knowledge) besides HTTP/1.1, for meshes whose sidecar
    /// terminates TLS.
    pub h2c: bool,
    /// Reload when the config file, the rules directory or a dictionary file changes.
    pub watch: bool,
    /// A change is reloaded once the watched files have stayed unchanged this long (editors
    /// and ConfigMap updates write in several steps).
    pub watch_debounce_ms: u64,
    /// The token `POST /admin/reload` accepts (`Authorization: Bearer <token>`), read from
    /// this environment variable ...
    pub admin_token_env: Option<String>,
    /// ... or from this file (trimmed).
    pub admin_token_file: Option<PathBuf>,
    /// Callers authenticated by `[auth]` in one of these groups may `POST /admin/reload` too.
    pub admin_groups: Vec<String>,
    /// The Unix socket over which a graceful upgrade (`run --upgrade`, then SIGQUIT to the
    /// old process) hands the listening sockets to the new process.
    pub upgrade_sock: PathBuf,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: "127.0.0.1:8080".into(),
            admin: "127.0.0.1:9090".into(),
            threads: 2,
            max_body_bytes: 32 << 20,
            max_connections: 10_000,
            extra_passthrough_prefixes: Vec::new(),
            tls: None,
            h2c: false,
            watch: false,
            watch_debounce_ms: 2_000,
            admin_token_env: None,
            admin_token_file: None,
            admin_groups: Vec::new(),
            upgrade_sock: PathBuf::from("/tmp/streammask-upgrade.sock"),
        }
    }
}

/// `[shutdown]`: the graceful drain after SIGTERM.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSection {
    /// After SIGTERM, `/readyz` answers 503 at once but the listener keeps accepting this
    /// long, while load balancers notice.
    pub readiness_delay_secs: u64,
    /// Counted from SIGTERM: requests still open then are ended (streams with an SSE
    /// `overloaded_error` event, which clients retry) and the process exits 0.
    pub grace_secs: u64,
}

impl Default for ShutdownSection {
    fn default() -> Self {
        ShutdownSection {
            readiness_delay_secs: 5,
            grace_secs: 600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSection {
    pub url: String,
    pub connect_timeout_ms: u64,
    /// Longest silence tolerated while reading the upstream response.
    pub read_timeout_ms: u64,
    pub max_response_bytes: usize,
    /// `inject` (the proxy's key replaces the caller's) or `passthrough`; default: `inject`
    /// when a key is configured, else `passthrough`.
    pub credentials: Option<CredentialsMode>,
    pub api_key_env: Option<String>,
    pub api_key_file: Option<PathBuf>,
    /// CA bundle (PEM) that replaces the system roots for the upstream's certificate.
    pub ca_file: Option<PathBuf>,
}

impl Default for UpstreamSection {
    fn default() -> Self {
        UpstreamSection {
            url: "https://api.anthropic.com".into(),
            connect_timeout_ms: 10_000,
            read_timeout_ms: 600_000,
            max_response_bytes: 64 << 20,
            credentials: None,
            api_key_env: None,
            api_key_file: None,
            ca_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaskingSection {
    pub rules_dir: Option<PathBuf>,
    /// Where compiled Hyperscan databases of non-default rule packs are cached (`""`: off).
    /// Unset: `STREAMMASK_HS_CACHE_DIR`, else the user's cache directory, else
    /// `/var/cache/streammask/hyperscan` (see [`crate::engine::databases`]).
    pub cache_dir: Option<PathBuf>,
    pub placeholder_key_env: String,
    pub placeholder_key_file: Option<PathBuf>,
    pub max_hold_bytes: usize,
    pub max_sse_event_bytes: usize,
    /// One tool call's input is buffered to its block's stop (it is judged whole): at most
    /// this many bytes, beyond which the stream ends with an `error` event.
    pub max_tool_input_bytes: usize,
    /// `restore` (default) or `mask`, see [`ThinkingPolicy`]; `report` is refused. Read as a
    /// string so that a refused or unknown value gets an error naming this key.
    pub thinking: String,
    /// How long the original of a masked thinking block is kept (`restore`).
    pub thinking_ttl_secs: u64,
    /// At most this many bytes of kept thinking originals per process (`restore`).
    pub thinking_max_bytes: usize,
    /// Per-request masking time budget; a request body whose masking takes longer is refused
    /// with a 422 naming this key (never a stall).
    pub max_scan_ms: u64,
    /// Request bodies of at least this many bytes are masked on the masking pool, off the
    /// event loop, so small requests on the same worker keep their latency.
    pub offload_bytes: usize,
    /// How many large bodies are masked at once off the event loop (the pool's workers;
    /// further ones wait for one without blocking the event loop, at most `max_scan_ms`).
    /// 0: half of `server.threads`, at least one, so that worst-case bodies never take every
    /// core from small requests.
    pub offload_threads: usize,
}

/// What the proxy does with thinking text (`[masking] thinking`). Either way the client gets
/// it masked and a thinking block a request carries is masked unless restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThinkingPolicy {
    /// Keep the original of every thinking block masked for the client (encrypted, with a
    /// TTL, by its signature) and put it back when the signed block returns in a request, so
    /// the signature still verifies.
    Restore,
    /// Keep nothing: a returned block carries the masked text and the API refuses its
    /// signature.
    Mask,
}

impl Default for MaskingSection {
    fn default() -> Self {
        MaskingSection {
            rules_dir: None,
            cache_dir: None,
            placeholder_key_env: "STREAMMASK_PLACEHOLDER_KEY".into(),
            placeholder_key_file: None,
            max_hold_bytes: crate::engine::masker::DEFAULT_MAX_HOLD_BYTES,
            max_sse_event_bytes: 1 << 20,
            max_tool_input_bytes: crate::anthropic::messages::DEFAULT_MAX_TOOL_INPUT_BYTES,
            thinking: "restore".into(),
            thinking_ttl_secs: 86_400,
            thinking_max_bytes: 256 << 20,
            max_scan_ms: 2000,
            offload_bytes: 256 << 10,
            offload_threads: 0,
        }
    }
}

/// `[server.tls]` as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain (leaf first).
    pub cert_file: PathBuf,
    /// PEM private key of the leaf certificate.
    pub key_file: PathBuf,
    /// Offer HTTP/2 by ALPN (HTTP/1.1 stays available).
    #[serde(default = "yes")]
    pub http2: bool,
}

fn yes() -> bool {
    true
}

/// Validated listener TLS settings (the files are read at start-up, not by `config check`).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub http2: bool,
}

impl From<TlsSection> for TlsConfig {
    fn from(section: TlsSection) -> TlsConfig {
        TlsConfig {
            cert_file: section.cert_file,
            key_file: section.key_file,
            http2: section.http2,
        }
    }
}

/// Command-line flags that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin: Option<String>,
    pub upstream: Option<String>,
    pub rules: Option<PathBuf>,
}

/// Where the proxy sends requests.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix of the upstream URL (usually empty).
    pub base_path: String,
    pub connect_timeout_ms: u64,
    pub read_timeout_ms: u64,
    pub max_response_bytes: usize,
    pub credentials: CredentialsMode,
    /// Where the injected key comes from (`Some` exactly when `credentials` is `Inject`).
    pub api_key: Option<KeySource>,
    pub ca_file: Option<PathBuf>,
}

impl Upstream {
    /// Where the first-party API is.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            tls: self.tls,
            host: self.host.clone(),
            port: self.port,
            base_path: self.base_path.clone(),
        }
    }

    /// The `Host` header value.
    pub fn authority(&self) -> String {
        self.endpoint().authority()
    }
}

/// An upstream base URL: scheme, host, port and base path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix (no trailing `/`; usually empty).
    pub base_path: String,
}

impl Endpoint {
    /// The `Host` header value.
    pub fn authority(&self) -> String {
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub threads: usize,
    pub max_body_bytes: usize,
    /// `[server] max_connections` (0: no limit).
    pub max_connections: usize,
    pub extra_passthrough_prefixes: Vec<String>,
    pub upstream: Upstream,
    pub rules_dir: Option<PathBuf>,
    /// `[masking] cache_dir`, resolved.
    pub database_cache: CacheSetting,
    pub placeholder_key_env: String,
    pub placeholder_key_file: Option<PathBuf>,
    pub max_hold_bytes: usize,
    pub max_sse_event_bytes: usize,
    pub max_tool_input_bytes: usize,
    pub thinking: ThinkingPolicy,
    /// How long a thinking original is kept.
    pub thinking_ttl_secs: u64,
    /// Bound on the bytes of kept thinking originals.
    pub thinking_max_bytes: usize,
    /// `[masking] max_scan_ms`: per-request masking time budget.
    pub max_scan_ms: u64,
    /// `[masking] offload_bytes`: bodies this large are masked off the event loop.
    pub offload_bytes: usize,
    /// `[masking] offload_threads`, resolved: how many bodies are masked off the loop at once.
    pub offload_threads: usize,
    /// Caller groups named in the configuration (policy profiles). Metrics label requests by
    /// these groups only; every other group is counted as `other`, so label values stay bounded.
    pub known_groups: Vec<String>,
    pub auth: AuthConfig,
    /// Policy profiles, `default` last (see [`crate::policy::profiles::validate_profiles`]).
    pub profiles: Vec<ProfileSection>,
    pub tls: Option<TlsConfig>,
    pub h2c: bool,
    pub audit: AuditSection,
    pub metrics: MetricsSection,
    pub log: LogSection,
    pub restore: RestoreConfig,
    /// `[approvals]`: human approval of requests that match `approve` rules.
    pub approvals: ApprovalSettings,
    /// `[[dictionaries]]`, `[[protected_code]]` and `[pii]`.
    pub org_data: OrgData,
    /// `[server] watch` and `watch_debounce_ms`: reload when watched files change.
    pub watch: Option<std::time::Duration>,
    /// Who may `POST /admin/reload`.
    pub admin_access: AdminAccess,
    /// `[server] upgrade_sock`.
    pub upgrade_sock: PathBuf,
    pub shutdown: ShutdownSection,
    /// `[bedrock]` (`None` when disabled).
    pub bedrock: Option<clouds::Bedrock>,
    /// `[vertex]` (`None` when disabled).
    pub vertex: Option<clouds::Vertex>,
}

/// Who may use the admin listener's write endpoints (`POST /admin/reload`).
#[derive(Debug, Clone, Default)]
pub struct AdminAccess {
    /// Where the static admin token is read from (at start-up and at each reload).
    pub token: Option<KeySource>,
    /// `[auth]` groups whose members may call them.
    pub groups: Vec<String>,
}

impl FileConfig {
    pub fn parse(origin: &str, text: &str) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|err| ConfigError::Parse {
            origin: origin.to_string(),
            message: parse_error_message(text, &err),
        })
    }

    pub fn load(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
        match path {
            None => FileConfig::parse("embedded default config", EMBEDDED_DEFAULT),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                FileConfig::parse(&path.display().to_string(), &text)
            }
        }
    }

    pub fn apply(mut self, overrides: &Overrides) -> FileConfig {
        if let Some(listen) = &overrides.listen {
            self.server.listen = listen.clone();
        }
        if let Some(admin) = &overrides.admin {
            self.server.admin = admin.clone();
        }
        if let Some(upstream) = &overrides.upstream {
            self.upstream.url = upstream.clone();
        }
        if let Some(rules) = &overrides.rules {
            self.masking.rules_dir = Some(rules.clone());
        }
        self
    }

    pub fn validate(self) -> Result<Config, ConfigError> {
        let listen = parse_addr("server.listen", &self.server.listen)?;
        let admin = parse_addr("server.admin", &self.server.admin)?;
        if listen == admin {
            return Err(invalid("server.admin", "must differ from server.listen"));
        }
        if !(1..=256).contains(&self.server.threads) {
            return Err(invalid("server.threads", "must be between 1 and 256"));
        }
        if self.server.max_body_bytes < 1024 {
            return Err(invalid("server.max_body_bytes", "must be at least 1024"));
        }
        for prefix in &self.server.extra_passthrough_prefixes {
            if !prefix.starts_with('/') {
                return Err(invalid(
                    "server.extra_passthrough_prefixes",
                    "every prefix must start with '/'",
                ));
            }
        }
        let upstream = parse_upstream(&self.upstream)?;
        if self.masking.max_hold_bytes < 1024 || self.masking.max_hold_bytes > 1 << 20 {
            return Err(invalid(
                "masking.max_hold_bytes",
                "must be between 1024 and 1048576",
            ));
        }
        if self.masking.max_sse_event_bytes < 4096 {
            return Err(invalid(
                "masking.max_sse_event_bytes",
                "must be at least 4096",
            ));
        }
        if !(64 << 10..=256 << 20).contains(&self.masking.max_tool_input_bytes) {
            return Err(invalid(
                "masking.max_tool_input_bytes",
                "must be between 65536 and 268435456",
            ));
        }
        if self.masking.placeholder_key_env.is_empty() {
            return Err(invalid("masking.placeholder_key_env", "must not be empty"));
        }
        let thinking = parse_thinking(&self.masking.thinking)?;
        if !(10..=600_000).contains(&self.masking.max_scan_ms) {
            return Err(invalid(
                "masking.max_scan_ms",
                "must be between 10 and 600000",
            ));
        }
        if self.masking.offload_threads > 256 {
            return Err(invalid(
                "masking.offload_threads",
                "must be between 0 (half of server.threads) and 256",
            ));
        }
        if !(60..=30 * 86_400).contains(&self.masking.thinking_ttl_secs) {
            return Err(invalid(
                "masking.thinking_ttl_secs",
                "must be between 60 and 2592000 (30 days)",
            ));
        }
        if self.masking.thinking_max_bytes < crate::anthropic::messages::MAX_THINKING_ORIGINAL_BYTES
        {
            return Err(invalid(
                "masking.thinking_max_bytes",
                "must be at least 1048576 (one thinking original of the largest size kept)",
            ));
        }
        if let Some(dir) = &self.masking.rules_dir {
            if !dir.is_dir() {
                return Err(invalid("masking.rules_dir", "is not a directory"));
            }
        }
        let auth = self.auth.validate()?;
        let (credentials, api_key) = crate::policy::credentials::validate(
            CredentialsSettings {
                credentials: self.upstream.credentials,
                api_key_env: self.upstream.api_key_env.as_deref(),
                api_key_file: self.upstream.api_key_file.as_deref(),
            },
            auth.enabled(),
        )?;
        if upstream.ca_file.is_some() && !upstream.tls {
            return Err(invalid(
                "upstream.ca_file",
                "is only used with an https:// upstream.url",
            ));
        }
        let upstream = Upstream {
            credentials,
            api_key,
            ..upstream
        };
        let profiles =
            crate::policy::profiles::validate_profiles(self.profiles, self.server.max_body_bytes)?;
        let mut known_groups = crate::policy::profiles::profile_groups(&profiles);
        for group in auth.groups() {
            if !known_groups.contains(group) {
                known_groups.push(group.clone());
            }
        }
        self.audit.validate()?;
        let restore = self.restore.validate()?;
        let approvals = self.approvals.validate()?;
        let org_data = OrgData::validate(self.dictionaries, self.protected_code, self.pii)?;
        let admin_access =
            AdminAccess {
                token: match (&self.server.admin_token_env, &self.server.admin_token_file) {
                    (Some(_), Some(_)) => return Err(invalid(
                        "server.admin_token_env",
                        "set either server.admin_token_env or server.admin_token_file, not both",
                    )),
                    (Some(env), None) if env.is_empty() => {
                        return Err(invalid("server.admin_token_env", "must not be empty"))
                    }
                    (Some(env), None) => Some(KeySource::Env(env.clone())),
                    (None, Some(file)) => Some(KeySource::File(file.clone())),
                    (None, None) => None,
                },
                groups: self.server.admin_groups.clone(),
            };
        if !admin_access.groups.is_empty() && !auth.enabled() {
            return Err(invalid(
                "server.admin_groups",
                "names [auth] groups, but [auth] is off",
            ));
        }
        if !(100..=600_000).contains(&self.server.watch_debounce_ms) {
            return Err(invalid(
                "server.watch_debounce_ms",
                "must be between 100 and 600000",
            ));
        }
        let watch = self
            .server
            .watch
            .then(|| std::time::Duration::from_millis(self.server.watch_debounce_ms));
        if self.shutdown.grace_secs < self.shutdown.readiness_delay_secs
            || self.shutdown.grace_secs > 86_400
        {
            return Err(invalid(
                "shutdown.grace_secs",
                "must be at least shutdown.readiness_delay_secs and at most 86400",
            ));
        }
        let bedrock = self.bedrock.validate()?;
        let vertex = self.vertex.validate()?;
        if let (Some(bedrock), Some(vertex)) = (&bedrock, &vertex) {
            if bedrock.prefix.starts_with(&vertex.prefix)
                || vertex.prefix.starts_with(&bedrock.prefix)
            {
                return Err(invalid("vertex.prefix", "must not overlap bedrock.prefix"));
            }
        }
        Ok(Config {
            bedrock,
            vertex,
            upgrade_sock: self.server.upgrade_sock.clone(),
            watch,
            admin_access,
            shutdown: self.shutdown,
            listen,
            admin,
            threads: self.server.threads,
            max_body_bytes: self.server.max_body_bytes,
            max_connections: self.server.max_connections,
            extra_passthrough_prefixes: self.server.extra_passthrough_prefixes,
            upstream,
            rules_dir: self.masking.rules_dir,
            database_cache: match self.masking.cache_dir {
                None => CacheSetting::Default,
                Some(dir) if dir.as_os_str().is_empty() => CacheSetting::Off,
                Some(dir) => CacheSetting::Dir(dir),
            },
            placeholder_key_env: self.masking.placeholder_key_env,
            placeholder_key_file: self.masking.placeholder_key_file,
            max_hold_bytes: self.masking.max_hold_bytes,
            max_sse_event_bytes: self.masking.max_sse_event_bytes,
            max_tool_input_bytes: self.masking.max_tool_input_bytes,
            thinking,
            thinking_ttl_secs: self.masking.thinking_ttl_secs,
            thinking_max_bytes: self.masking.thinking_max_bytes,
            max_scan_ms: self.masking.max_scan_ms,
            offload_bytes: self.masking.offload_bytes,
            offload_threads: match self.masking.offload_threads {
                // Measured (loadtest/bench_hostile.py, 2 cores): with both cores masking
                // worst-case bodies a small request's p99 was 4.6x its idle p99; with one,
                // 0.96x.
                0 => (self.server.threads / 2).max(1),
                n => n,
            },
            known_groups,
            auth,
            profiles,
            tls: self.server.tls.map(Into::into),
            h2c: self.server.h2c,
            audit: self.audit,
            metrics: self.metrics,
            log: self.log,
            restore,
            approvals,
            org_data,
        })
    }
}

fn parse_thinking(value: &str) -> Result<ThinkingPolicy, ConfigError> {
    const VALUES: &str = "use \"restore\" (mask thinking for the client, keep the original \
        encrypted and put it back when the signed block returns) or \"mask\" (mask, keep \
        nothing)";
    match value {
        "restore" => Ok(ThinkingPolicy::Restore),
        "mask" => Ok(ThinkingPolicy::Mask),
        "report" => Err(invalid(
            "masking.thinking",
            format!(
                "\"report\" is no longer accepted: it forwarded secrets in thinking text \
                 unmasked; {VALUES}"
            ),
        )),
        _ => Err(invalid(
            "masking.thinking",
            format!("not a thinking policy; {VALUES}"),
        )),
    }
}

/// A TOML error as `line L, column C: what`, without what `toml` adds that may carry a
/// secret pasted into the file: the quoted source line, and the offending value itself
/// (`invalid type: string "…"`, ``unknown variant `…` ``). Keys stay named.
fn parse_error_message(text: &str, err: &toml::de::Error) -> String {
    let mut message = redact_values(err.message().trim());
    if let Some(span) = err.span() {
        let before = &text.as_bytes()[..span.start.min(text.len())];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = before.len()
            - before
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |n| n + 1)
            + 1;
        message = format!("line {line}, column {column}: {message}");
    }
    message
}

/// `message` with whatever it quotes from the file replaced by `…`. serde and `toml` quote the
/// file's text before the word `expected` (`invalid type: string "…"`, ``unknown field `…` ``,
/// ``unknown variant `…` ``, ``duplicate key `…` ``) and the schema's own names after it
/// (``expected one of `listen`, `admin` ``), which stay; so does a ``missing field `…` ``,
/// which names the schema's field, not the file's text.
fn redact_values(message: &str) -> String {
    let (head, tail) = match message.find("expected") {
        Some(at) => message.split_at(at),
        None => (message, ""),
    };
    // `missing field `name`` names a field of the schema; only that exact shape is kept.
    let schema_field = head
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
        .is_some_and(|name| name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
    if schema_field && tail.is_empty() {
        return message.to_string();
    }
    // Everything from the first quote to `expected` may be the file's text, quoted or not
    // (`toml` prints some values bare after a quoted one): it all goes.
    match head.find(['"', '`']) {
        Some(open) => {
            let quote = &head[open..=open];
            let separator = if tail.is_empty() { "" } else { ", " };
            format!("{}…{quote}{separator}{tail}", &head[..=open])
        }
        None => message.to_string(),
    }
}

fn parse_addr(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| invalid(key, "is not an IP:port address"))
}

/// An `http://` or `https://` URL as scheme, host, port and base path (no trailing `/`).
pub(crate) fn parse_endpoint(key: &'static str, url: &str) -> Result<Endpoint, ConfigError> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(invalid(key, "must start with http:// or https://"));
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], rest[slash..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(invalid(key, "has no usable host"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            let port: u16 = port
                .parse()
                .map_err(|_| invalid(key, "has an invalid port"))?;
            (
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                port,
            )
        }
        _ => (authority.to_string(), if tls { 443 } else { 80 }),
    };
    Ok(Endpoint {
        tls,
        host,
        port,
        base_path: path.to_string(),
    })
}

fn parse_upstream(section: &UpstreamSection) -> Result<Upstream, ConfigError> {
    let Endpoint {
        tls,
        host,
        port,
        base_path: path,
    } = parse_endpoint("upstream.url", &section.url)?;
    if section.connect_timeout_ms == 0 || section.read_timeout_ms == 0 {
        return Err(invalid(
            "upstream.read_timeout_ms",
            "timeouts must be positive",
        ));
    }
    Ok(Upstream {
        tls,
        host,
        port,
        base_path: path,
        connect_timeout_ms: section.connect_timeout_ms,
        read_timeout_ms: section.read_timeout_ms,
        max_response_bytes: section.max_response_bytes,
        credentials: CredentialsMode::Passthrough,
        api_key: None,
        ca_file: section.ca_file.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid_and_local() {
        let file = FileConfig::load(None).unwrap();
        // Resolution of the real API host is not available offline; check the shape instead.
        assert_eq!(file.server.listen, "127.0.0.1:8080");
        assert_eq!(file.server.admin, "127.0.0.1:9090");
        assert_eq!(file.upstream.url, "https://api.anthropic.com");
        let local = file.apply(&Overrides {
            upstream: Some("http://127.0.0.1:1".into()),
            ..Default::default()
        });
        let config = local.validate().unwrap();
        assert!(!config.upstream.tls);
        assert_eq!(config.max_body_bytes, 32 << 20);
    }

    #[test]
    fn parse_errors_name_the_place_and_key_but_never_echo_a_value() {
        let secret = format!("sk-ant-api03-{}", "Zq9xWv7Lm2Kp4Rt6Yb8Nc0Df3Gh5Jk1");
        for (text, expect) in [
            // The source line is not quoted back.
            (
                format!("[upstream]\napi_key = \"{secret}\"\n"),
                "line 2, column 1",
            ),
            // A value of the wrong type is not repeated.
            (format!("[server]\nthreads = \"{secret}\"\n"), "line 2"),
            // Nor is an unknown enum value, parsed or validated.
            (
                format!("[audit]\nsink = \"{secret}\"\n"),
                "unknown variant `…`",
            ),
            (
                format!("[masking]\nthinking = \"{secret}\"\n"),
                "masking.thinking: not a thinking policy",
            ),
            // Nor a bad address or URL (a URL may carry credentials).
            (
                format!("[server]\nlisten = \"{secret}\"\n"),
                "server.listen: is not an IP:port",
            ),
            (
                format!("[upstream]\nurl = \"https://u:{secret}@\"\n"),
                "upstream.url",
            ),
            // Nor a broken line.
            (format!("[server]\nlisten = {secret}\n"), "line 2"),
        ] {
            let message = FileConfig::parse("x.toml", &text)
                .and_then(FileConfig::validate)
                .unwrap_err()
                .to_string();
            assert!(!message.contains(&secret), "{message}");
            assert!(!message.contains("Zq9x"), "{message}");
            assert!(message.contains(expect), "{message}");
        }
        assert!(FileConfig::parse("x.toml", "[upstream]\napi_key = \"x\"\n")
            .unwrap_err()
            .to_string()
            .contains("api_key"));
    }

    #[test]
    fn unknown_key_is_rejected_by_place() {
        // The file's text is not repeated (a key may be a pasted secret); the place and the
        // keys that are allowed say what to fix.
        let err =
            FileConfig::parse("x.toml", "[server]\nlisten_addr = \"1.2.3.4:5\"\n").unwrap_err();
        let message = err.to_string();
        assert!(!message.contains("listen_addr"), "{message}");
        assert!(
            message.contains("line 2, column 1: unknown field `…`, expected one of `listen`"),
            "{message}"
        );
        let missing = FileConfig::parse("x.toml", "[[profiles]]\ngroups = [\"a\"]\n")
            .unwrap_err()
            .to_string();
        assert!(missing.contains("missing field `name`"), "{missing}");
    }

    #[test]
    fn observability_sections_reject_unknown_keys_and_values() {
        for (text, word) in [
            (
                "[audit]\nsinks = \"file\"\n",
                "unknown field `…`, expected one of `sink`",
            ),
            // A wrong value is answered with the values that are allowed, not repeated.
            (
                "[audit]\nsink = \"syslog\"\n",
                "expected one of `off`, `stdout`, `file`",
            ),
            (
                "[audit]\non_failure = \"ignore\"\n",
                "line 2, column 14: unknown variant",
            ),
            ("[log]\nformat = \"xml\"\n", "`json`"),
            ("[metrics]\nenable = true\n", "expected `enabled`"),
        ] {
            let err = FileConfig::parse("t.toml", text).unwrap_err().to_string();
            assert!(err.contains(word), "{text:?} gave {err}");
        }
        let file = FileConfig::parse(
            "t.toml",
            "[audit]\nsink = \"file\"\npath = \"/tmp/a.jsonl\"\ntranscripts = true\non_failure = \"refuse\"\n[log]\nformat = \"json\"\n",
        )
        .unwrap();
        assert!(
            file.audit.transcripts
                && file.audit.on_failure == crate::observe::audit::OnFailure::Refuse
        );
        assert_eq!(file.log.format, crate::observe::log::LogFormat::Json);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("[server]\nlisten = \"nope\"\n", "server.listen"),
            ("[upstream]\nurl = \"ftp://x\"\n", "upstream.url"),
            ("[server]\nthreads = 0\n", "server.threads"),
            ("[masking]\nmax_hold_bytes = 10\n", "masking.max_hold_bytes"),
            ("[masking]\nmax_scan_ms = 0\n", "masking.max_scan_ms"),
            (
                "[masking]\noffload_threads = 1000\n",
                "masking.offload_threads",
            ),
            ("[server]\nadmin = \"127.0.0.1:8080\"\n", "server.admin"),
            ("[audit]\nmax_files = 0\n", "audit.max_files"),
            ("[audit]\nmax_bytes = 10\n", "audit.max_bytes"),
            ("[audit]\nqueue = 0\n", "audit.queue"),
        ];
        for (text, key) in cases {
            let file = FileConfig::parse("t.toml", text)
                .unwrap()
                .apply(&Overrides {
                    upstream: (!text.contains("upstream"))
                        .then(|| "http://127.0.0.1:1".to_string()),
                    ..Default::default()
                });
            let err = file.validate().unwrap_err().to_string();
            assert!(err.starts_with(key), "{text:?} gave {err}");
        }
    }

    #[test]
    fn thinking_policy_defaults_to_restore_and_refuses_report() {
        let local = |text: &str| {
            FileConfig::parse("t.toml", text)
                .unwrap()
                .apply(&Overrides {
                    upstream: Some("http://127.0.0.1:1".into()),
                    ..Default::default()
                })
                .validate()
        };
        let config = local("").unwrap();
        assert_eq!(config.thinking, ThinkingPolicy::Restore);
        assert_eq!(config.thinking_ttl_secs, 86_400);
        assert_eq!(config.thinking_max_bytes, 256 << 20);
        let embedded = FileConfig::load(None).unwrap();
        assert_eq!(embedded.masking.thinking, "restore");
        let config = local("[masking]\nthinking = \"mask\"\nthinking_ttl_secs = 600\n").unwrap();
        assert_eq!(config.thinking, ThinkingPolicy::Mask);
        assert_eq!(config.thinking_ttl_secs, 600);
        for value in ["report", "Report", "keep"] {
            let err = local(&format!("[masking]\nthinking = \"{value}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("masking.thinking:"), "{err}");
            assert!(
                err.contains("\"restore\"") && err.contains("\"mask\""),
                "{err}"
            );
        }
        let err = local("[masking]\nthinking = \"report\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no longer accepted"), "{err}");
        for (text, key) in [
            (
                "[masking]\nthinking_ttl_secs = 0\n",
                "masking.thinking_ttl_secs",
            ),
            (
                "[masking]\nthinking_ttl_secs = 99999999\n",
                "masking.thinking_ttl_secs",
            ),
            (
                "[masking]\nthinking_max_bytes = 1000\n",
                "masking.thinking_max_bytes",
            ),
        ] {
            let err = local(text).unwrap_err().to_string();
            assert!(err.starts_with(key), "{text:?} gave {err}");
        }
    }

    #[test]
    fn upstream_url_with_port_and_path() {
        let file = FileConfig::default().apply(&Overrides {
            upstream: Some("http://127.0.0.1:8999/base/".into()),
            ..Default::default()
        });
        let config = file.validate().unwrap();
        assert_eq!(config.upstream.port, 8999);
        assert_eq!(config.upstream.base_path, "/base");
        assert_eq!(config.upstream.authority(), "127.0.0.1:8999");
    }
}
