//! Start-up: validated config → engines, policy, observability → the Pingora server with the
//! proxy listener and the admin listener.
//!
//! Invariants:
//! - everything that can fail (rules, placeholder key, addresses, TLS certificate and key, CA
//!   bundles, JWKS file, upstream key, policy profiles, the audit sink) fails here, before a
//!   socket is opened, with a message naming the cause;
//! - start-up builds one [`ProxyState`] — config, policy with its engines, metrics, audit
//!   writer, thinking vault — and hands it down; nothing is kept in process-wide statics.

use super::admin::Admin;
use super::reload::{ConfigSource, Reloader, Trigger};
use crate::anthropic::restore::RestoreScopes;
use crate::anthropic::thinking_vault::{MemoryVault, Vault, VaultKey, VaultLimits};
use crate::config::{Config, RestoreStore, ThinkingPolicy};
use crate::engine::matcher::InterimOptions;
use crate::engine::placeholder::PlaceholderKey;
use crate::engine::validators::Validator;
use crate::engine::{Engine, MaskError, RuleSet};
use crate::observe::approvals::ApprovalObservers;
use crate::observe::audit::Auditor;
use crate::observe::metrics::Metrics;
use crate::policy::approvals::{
    ApprovalStore, ApprovalStoreKind, Approvals, MemoryApprovals, RedisApprovals, APPROVALS_LABEL,
};
use crate::policy::auth::Authenticator;
use crate::policy::credentials::UpstreamKey;
use crate::policy::profiles::{arm_profile_rules, Policy};
use crate::policy::restore_vault::{RestoreVault, VaultSettings, VAULT_LABEL};
use crate::policy::store::{GroupLimits, GroupStore, MemoryStore, RedisStore, Sealer};
use crate::policy::Security;
use crate::proxy::restore::Restore;
use crate::proxy::{LiveState, Proxy, ProxyState};
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Rules(#[from] crate::engine::rules::RulesError),
    #[error(transparent)]
    Engine(#[from] MaskError),
    #[error("placeholder key: {0}")]
    Key(String),
    #[error("server: {0}")]
    Server(String),
    #[error(transparent)]
    Policy(#[from] crate::policy::profiles::PolicyError),
    #[error(transparent)]
    Auth(#[from] crate::policy::auth::AuthStartError),
    #[error(transparent)]
    Credentials(#[from] crate::policy::credentials::CredentialsError),
    #[error("{0}")]
    Tls(String),
    #[error(transparent)]
    Audit(#[from] crate::observe::audit::AuditError),
    #[error("restore: {0}")]
    Restore(#[from] crate::policy::store::StoreError),
    #[error(transparent)]
    OrgData(#[from] crate::policy::org_data::OrgDataError),
}

/// The configured placeholder key material: from `file` if one is configured (trimmed), else
/// from the environment variable `env`; `None` when neither is set.
fn key_material(file: Option<&Path>, env: &str) -> Result<Option<Vec<u8>>, StartError> {
    if let Some(path) = file {
        let key =
            std::fs::read(path).map_err(|e| StartError::Key(format!("{}: {e}", path.display())))?;
        return Ok(Some(key.trim_ascii().to_vec()));
    }
    match std::env::var(env) {
        Ok(key) if !key.is_empty() => Ok(Some(key.into_bytes())),
        _ => Ok(None),
    }
}

/// The placeholder key: from `file` if one is configured, else from the environment variable
/// `env`, else a random key (placeholders then differ across restarts and replicas; callers
/// warn, see [`PlaceholderKey::is_random`]).
pub fn placeholder_key(file: Option<&Path>, env: &str) -> Result<PlaceholderKey, StartError> {
    match key_material(file, env)? {
        Some(key) if file.is_some() => {
            PlaceholderKey::new(&key).map_err(|e| StartError::Key(e.to_string()))
        }
        Some(key) => PlaceholderKey::new(&key).map_err(|e| StartError::Key(format!("{env}: {e}"))),
        None => Ok(PlaceholderKey::random()),
    }
}

/// The thinking vault of `thinking = "restore"` (`None` for `"mask"`): in memory, under a key
/// derived from the placeholder key (`HMAC-SHA256(placeholder key, VAULT_KEY_LABEL)`), random
/// when the placeholder key is.
pub fn thinking_vault(config: &Config) -> Result<Option<Arc<dyn Vault>>, StartError> {
    if config.thinking != ThinkingPolicy::Restore {
        return Ok(None);
    }
    let material = key_material(
        config.placeholder_key_file.as_deref(),
        &config.placeholder_key_env,
    )?;
    let key = material.map_or_else(VaultKey::random, |m| VaultKey::derive(&m));
    let limits = VaultLimits::for_bytes(
        Duration::from_secs(config.thinking_ttl_secs),
        config.thinking_max_bytes,
    );
    Ok(Some(Arc::new(MemoryVault::new(&key, limits))))
}

/// The Redis key prefix of the restore vault's groups.
pub const RESTORE_NAMESPACE: &str = "streammask:restore:v1";

/// Groups and bytes a process keeps in a memory restore vault, all callers together.
const RESTORE_MEMORY_GROUPS: usize = 100_000;
const RESTORE_MEMORY_BYTES: usize = 256 << 20;

/// The restore state of `[restore]` (`None` when off): the vault (memory or Redis) under keys
/// derived from the placeholder key (random when it is, so nothing survives a restart).
pub fn restore_state(config: &Config) -> Result<Option<Restore>, StartError> {
    let settings = &config.restore;
    if !settings.enabled {
        return Ok(None);
    }
    let material = key_material(
        config.placeholder_key_file.as_deref(),
        &config.placeholder_key_env,
    )?;
    let sealer = material.map_or_else(
        || Sealer::random(VAULT_LABEL),
        |m| Sealer::derive(&m, VAULT_LABEL),
    );
    let store: Arc<dyn GroupStore> = match &settings.store {
        RestoreStore::Memory => Arc::new(MemoryStore::new(
            RESTORE_MEMORY_GROUPS,
            RESTORE_MEMORY_BYTES,
        )),
        RestoreStore::Redis { url } => Arc::new(RedisStore::new(
            url,
            RESTORE_NAMESPACE,
            Duration::from_millis(settings.redis_timeout_ms),
        )?),
    };
    let vault = RestoreVault::new(
        store,
        sealer,
        VaultSettings {
            ttl: Duration::from_secs(settings.ttl_secs),
            per_session: settings.per_session,
            limits: GroupLimits {
                max_entries: settings.max_entries_per_caller,
                max_bytes: settings.max_bytes_per_caller,
            },
            max_secret_bytes: settings.max_secret_bytes,
        },
    );
    Ok(Some(Restore {
        vault: Arc::new(vault),
        tools: settings
            .tools
            .as_ref()
            .map(|tools| Arc::new(tools.iter().cloned().collect())),
        scopes: RestoreScopes {
            tool_input: settings.tool_input,
            text: settings.text,
        },
        owners_known: config.auth.enabled(),
    }))
}

/// The Redis key prefix of approvals and grants.
pub const APPROVALS_NAMESPACE: &str = "streammask:approvals:v1";

/// Approvals a memory store keeps (pending, decided and recently ended together).
const APPROVALS_MEMORY_RECORDS: usize = 10_000;

/// The approvals service of `[approvals]`: its store (memory or Redis), keys derived from the
/// placeholder key (random when it is: grants then do not survive a restart, and replicas
/// must share a configured key to share grants), and events to metrics and the audit log.
pub fn approvals_state(
    config: &Config,
    metrics: Option<Arc<Metrics>>,
    auditor: Option<Auditor>,
) -> Result<Arc<Approvals>, StartError> {
    let mut settings = config.approvals.clone();
    if settings.console_url.is_none() {
        settings.console_url = Some(format!("http://{}", config.admin));
    }
    let material = key_material(
        config.placeholder_key_file.as_deref(),
        &config.placeholder_key_env,
    )?;
    let sealer = material.map_or_else(
        || Sealer::random(APPROVALS_LABEL),
        |m| Sealer::derive(&m, APPROVALS_LABEL),
    );
    let store: Arc<dyn ApprovalStore> = match &settings.store {
        ApprovalStoreKind::Memory => Arc::new(MemoryApprovals::new(APPROVALS_MEMORY_RECORDS)),
        ApprovalStoreKind::Redis { url } => Arc::new(RedisApprovals::new(
            url,
            APPROVALS_NAMESPACE,
            settings.redis_timeout,
        )?),
    };
    if settings.approver_groups.is_empty() || !config.auth.enabled() {
        tracing::warn!(
            "no one can approve requests (approvals.approver_groups is empty or [auth] is off): \
             requests matching approve rules will be refused until an approver can sign in"
        );
    }
    let observer = ApprovalObservers { metrics, auditor };
    Ok(Arc::new(Approvals::new(
        store,
        sealer,
        settings,
        Some(Arc::new(observer)),
    )))
}

/// The base engine and every profile's engine (see [`crate::policy::profiles`]), sharing one
/// placeholder key. `config check` runs this too (with `interim` `None`: every database is
/// compiled before it returns, and so cached), so unknown rule ids in profiles are caught.
pub fn build_policy(
    config: &Config,
    interim: Option<InterimOptions>,
) -> Result<(Arc<Engine>, Policy), StartError> {
    build_policy_with_key(config, start_key(config)?, interim)
}

/// The configured placeholder key (random when none is, with a warning).
pub fn start_key(config: &Config) -> Result<PlaceholderKey, StartError> {
    let key = placeholder_key(
        config.placeholder_key_file.as_deref(),
        &config.placeholder_key_env,
    )?;
    if key.is_random() {
        tracing::warn!(
            env = %config.placeholder_key_env,
            "no placeholder key configured: using a random key, so placeholders will differ across restarts and replicas"
        );
    }
    Ok(key)
}

/// [`build_policy`] under `key` (a reload keeps the key the process started with). The proxy
/// passes [`InterimOptions::PROXY`]: a large dictionary compiles in the background while it
/// already serves (its terms matched by automata meanwhile), so a start-up or reload does not
/// wait seconds for it.
pub fn build_policy_with_key(
    config: &Config,
    key: PlaceholderKey,
    interim: Option<InterimOptions>,
) -> Result<(Arc<Engine>, Policy), StartError> {
    crate::engine::databases::configure_cache(config.database_cache.clone());
    let mut rules = RuleSet::load(config.rules_dir.as_deref())?;
    for rule in config.org_data.rules()? {
        rules.push(rule)?;
    }
    let rules = arm_profile_rules(
        &config.profiles,
        rules.with_validation(config.org_data.validation()),
    )?;
    let engine = Arc::new(Engine::compile_with(
        &rules,
        key.clone(),
        config.max_hold_bytes,
        interim,
    )?);
    let policy = Policy::build(
        &config.profiles,
        &rules,
        &engine,
        &key,
        config.max_hold_bytes,
    )?;
    // The phone library reads its numbering plans on first use (~0.1 s): at start-up, not in
    // the first request that holds a phone number, when some profile validates them.
    let validates_phones = policy.profiles().any(|profile| {
        profile.engine.matcher().rules().any(|rule| {
            matches!(
                rule.rule.validate,
                Some(Validator::Phone | Validator::PhoneNational)
            )
        })
    });
    if validates_phones {
        crate::engine::validators::load_phone_metadata();
    }
    if engine.matcher().is_interim() {
        tracing::info!(
            "dictionary terms are matched by interim automata while their databases compile in the background"
        );
    }
    Ok((engine, policy))
}

/// Authentication, policy and the upstream key: everything that reads secrets or files at
/// start-up (`config check` does not, so example configs check without the secrets present).
pub fn build_security(config: &Config, policy: Policy) -> Result<Security, StartError> {
    let auth = Authenticator::new(&config.auth)?;
    let upstream_key = match &config.upstream.api_key {
        Some(source) => Some(Arc::new(UpstreamKey::load(source.clone())?)),
        None => None,
    };
    if let Some(ca) = &config.upstream.ca_file {
        crate::policy::trust::check_ca_file(ca)
            .map_err(|e| StartError::Tls(format!("upstream.ca_file: {e}")))?;
    }
    Ok(Security {
        auth,
        policy,
        upstream_key,
    })
}

/// Everything the proxy runs on, built from a validated config: engines, policy, metrics and
/// the audit writer (started).
pub fn build_state(config: Config) -> Result<ProxyState, StartError> {
    build_state_with_key(config, None)
}

/// [`build_state`] under `key` (`None`: the configured one).
fn build_state_with_key(
    config: Config,
    key: Option<PlaceholderKey>,
) -> Result<ProxyState, StartError> {
    let key = match key {
        Some(key) => key,
        None => start_key(&config)?,
    };
    let (engine, policy) = build_policy_with_key(&config, key, Some(InterimOptions::PROXY))?;
    let security = build_security(&config, policy)?;
    let metrics = config
        .metrics
        .enabled
        .then(|| Arc::new(Metrics::new(&engine, &config.known_groups)));
    let auditor = Auditor::start(&config.audit, metrics.as_ref().map(|m| m.audit_counters()))?;
    let vault = thinking_vault(&config)?;
    let restore = restore_state(&config)?;
    let approvals = approvals_state(&config, metrics.clone(), auditor.clone())?;
    Ok(
        ProxyState::new(config, engine, security, metrics, auditor, vault)
            .with_restore(restore)
            .with_approvals(Some(approvals)),
    )
}

/// What clients set to go through the proxy, one variable per provider served.
fn base_urls(config: &Config, origin: &str) -> String {
    let mut urls = vec![format!("ANTHROPIC_BASE_URL={origin}")];
    if let Some(bedrock) = &config.bedrock {
        urls.push(format!(
            "ANTHROPIC_BEDROCK_BASE_URL={origin}{}",
            bedrock.prefix
        ));
    }
    if let Some(vertex) = &config.vertex {
        urls.push(format!(
            "ANTHROPIC_VERTEX_BASE_URL={origin}{}/v1",
            vertex.prefix
        ));
    }
    urls.join(" ")
}

/// The proxy's listening service for `state` (TLS and h2c as configured), not yet started.
pub fn proxy_service(
    server_conf: &Arc<ServerConf>,
    live: Arc<LiveState>,
    tls: Option<pingora::listeners::tls::TlsSettings>,
) -> Service<HttpProxy<Proxy>> {
    let (listen, h2c) = {
        let state = live.load();
        (state.config.listen.to_string(), state.config.h2c)
    };
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        server_conf,
        Proxy::new(live),
        "streammask proxy",
    );
    if let Some(app) = proxy.app_logic_mut() {
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2c = h2c;
        // The upstream request is built from the names' map (`provider::base_request`), so the
        // case of the client's names is never written (a patch in `vendor/pingora-core`).
        options.drop_request_header_case = true;
        app.server_options = Some(options);
    }
    // No L4 read buffer: Pingora's default is 64 KiB per connection, zero-filled when the
    // connection is accepted, so it is resident for as long as a stream stays open (most of a
    // stream's memory). The HTTP/1 reader reads into its own header and body buffers anyway.
    let buffers = L4BufferSettings::default().read(0);
    let endpoint = ListenerConfig::tcp(listen).l4_buffer(buffers);
    proxy.add_listener(match tls {
        Some(settings) => endpoint.tls(settings),
        None => endpoint,
    });
    proxy
}

/// Reload the configuration on SIGHUP (a failed reload keeps the running one). Installed
/// whatever the config: SIGHUP's default action would end the process and cut every open
/// stream. Pingora uses SIGQUIT, SIGTERM and SIGINT, not SIGHUP.
fn reload_on_sighup(reloader: Arc<Reloader>) {
    let spawned = std::thread::Builder::new()
        .name("streammask-sighup".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                tracing::warn!("SIGHUP reload unavailable: no runtime");
                return;
            };
            let Ok(mut hangups) = rt.block_on(async {
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            }) else {
                tracing::warn!("SIGHUP reload unavailable: cannot listen for the signal");
                return;
            };
            // Compiling happens on this thread, between signals: never on an event loop.
            while rt.block_on(hangups.recv()).is_some() {
                let _ = reloader.reload(Trigger::Signal);
            }
        });
    if spawned.is_err() {
        tracing::warn!("SIGHUP reload unavailable: cannot start its thread");
    }
}

/// Build and run the server; does not return while the server runs. `source` is where
/// `config` was read from (reloads read it again).
pub fn run(config: Config, source: ConfigSource, upgrade: bool) -> Result<(), StartError> {
    // Cheap checks of files first, so a bad certificate fails before rules compile.
    let tls = match &config.tls {
        Some(tls) => Some(crate::proxy::tls::listener_settings(tls).map_err(StartError::Tls)?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let key = start_key(&config)?;
    let state = Arc::new(build_state_with_key(config, Some(key.clone()))?);
    let live = Arc::new(LiveState::new(Arc::clone(&state)));
    let reloader = Arc::new(Reloader::new(source, Arc::clone(&live), key));
    let config = &state.config;
    super::limits::raise_open_file_limit(config.max_connections);
    reload_on_sighup(Arc::clone(&reloader));
    if let Some(debounce) = config.watch {
        super::reload::watch(Arc::clone(&reloader), debounce);
    }
    let auth_on = state.security.auth.enabled();
    if !auth_on && state.security.upstream_key.is_some() {
        tracing::warn!(
            "the proxy injects its upstream key but [auth] is off: anyone who can reach the listener uses that key"
        );
    }
    let rules_loaded = state.engine.matcher().rules().count();
    let profiles = state.security.policy.len();
    let listen = config.listen.to_string();
    let admin_addr = config.admin.to_string();
    let upstream = format!(
        "{}://{}{}",
        if config.upstream.tls { "https" } else { "http" },
        config.upstream.authority(),
        config.upstream.base_path
    );
    let material = key_material(
        config.placeholder_key_file.as_deref(),
        &config.placeholder_key_env,
    )?;
    let admin = Admin::bind(
        config.admin,
        Arc::clone(&live),
        Arc::clone(&reloader),
        material.as_deref(),
    )
    .map_err(|e| StartError::Server(format!("server.admin {admin_addr}: {e}")))?;
    let grace = Duration::from_secs(config.shutdown.grace_secs);
    let conf = ServerConf {
        threads: config.threads,
        grace_period_seconds: Some(super::shutdown::pingora_grace(grace)),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: config.upgrade_sock.display().to_string(),
        ..ServerConf::default()
    };
    let opt = pingora::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();
    server.add_service(proxy_service(&server.configuration, Arc::clone(&live), tls));
    server.add_service(pingora::services::background::background_service(
        "streammask admin",
        admin,
    ));
    let base_urls = base_urls(config, &format!("{scheme}://{listen}"));
    tracing::info!(%listen, admin = %admin_addr, %upstream, rules = rules_loaded, profiles, auth = auth_on, base_urls = %base_urls, "streammask starting");
    // For a person at a terminal; a log collector reading JSON lines has the event above.
    if config.log.format != crate::observe::log::LogFormat::Json {
        eprintln!("streammask: listening on {scheme}://{listen} (admin {admin_addr}), upstream {upstream}, {rules_loaded} rules, {profiles} profile(s), authentication {}; clients: {base_urls}", if auth_on { "on" } else { "off" });
    }
    server.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(super::shutdown::DrainOnSignal {
            live,
            readiness_delay: Duration::from_secs(config.shutdown.readiness_delay_secs),
            grace,
        }),
    });
    // Pingora returns after its own grace period; the drain normally exits before that.
    std::process::exit(0)
}
