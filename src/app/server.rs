//! Start-up: validated config → engine → Pingora server with the proxy listener and the admin
//! listener (`/healthz`, `/readyz`, `/metrics`).
//!
//! Invariant: everything that can fail (rules, placeholder key, addresses, upstream resolution,
//! TLS certificate and key, CA bundles, JWKS file, upstream key, policy profiles) fails here,
//! before a socket is opened, with a message naming the cause.

use crate::config::Config;
use crate::masker::Engine;
use crate::matcher::Matcher;
use crate::placeholder::PlaceholderKey;
use crate::proxy::{Proxy, ProxyState};
use crate::rules::RuleSet;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Rules(#[from] crate::rules::RulesError),
    #[error(transparent)]
    Matcher(#[from] crate::matcher::MatcherError),
    #[error(transparent)]
    Mask(#[from] crate::masker::MaskError),
    #[error("placeholder key: {0}")]
    Key(String),
    #[error("server: {0}")]
    Server(String),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthStartError),
    #[error(transparent)]
    Credentials(#[from] crate::credentials::CredentialsError),
    #[error("{0}")]
    Tls(String),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}

/// Load the placeholder key from the configured file or environment variable; without one, a
/// random key and a warning (placeholders then differ across restarts and replicas).
pub fn load_placeholder_key(config: &Config) -> Result<PlaceholderKey, StartError> {
    if let Some(path) = &config.placeholder_key_file {
        let key =
            std::fs::read(path).map_err(|e| StartError::Key(format!("{}: {e}", path.display())))?;
        let trimmed = key.trim_ascii();
        return PlaceholderKey::new(trimmed).map_err(|e| StartError::Key(e.to_string()));
    }
    match std::env::var(&config.placeholder_key_env) {
        Ok(key) if !key.is_empty() => {
            PlaceholderKey::new(key.as_bytes()).map_err(|e| StartError::Key(e.to_string()))
        }
        _ => {
            tracing::warn!(
                env = %config.placeholder_key_env,
                "no placeholder key configured: using a random key, so placeholders will differ across restarts and replicas"
            );
            Ok(PlaceholderKey::random())
        }
    }
}

/// Compile the rules and build the engine the proxy will use.
pub fn build_engine(config: &Config) -> Result<Arc<Engine>, StartError> {
    let rules = RuleSet::load(config.rules_dir.as_deref())?;
    let matcher = Matcher::compile(&rules, config.max_hold_bytes - 2)?;
    let key = load_placeholder_key(config)?;
    Ok(Arc::new(Engine::new(matcher, key, config.max_hold_bytes)?))
}

/// The base engine and every profile's engine (see [`crate::policy`]), sharing one
/// placeholder key. `config check` runs this too, so unknown rule ids in profiles are caught.
pub fn build_policy(config: &Config) -> Result<(Arc<Engine>, crate::policy::Policy), StartError> {
    let rules = RuleSet::load(config.rules_dir.as_deref())?;
    let matcher = Matcher::compile(&rules, config.max_hold_bytes - 2)?;
    let key = load_placeholder_key(config)?;
    let engine = Arc::new(Engine::new(matcher, key.clone(), config.max_hold_bytes)?);
    let policy = crate::policy::Policy::build(
        &config.profiles,
        &rules,
        &engine,
        &key,
        config.max_hold_bytes,
    )?;
    Ok((engine, policy))
}

/// Authentication, policy and the upstream key: everything that reads secrets or files at
/// start-up (`config check` does not, so example configs check without the secrets present).
pub fn build_security(
    config: &Config,
    policy: crate::policy::Policy,
) -> Result<crate::proxy::Security, StartError> {
    let auth = crate::auth::Authenticator::new(&config.auth)?;
    let upstream_key = match &config.upstream.api_key {
        Some(source) => Some(Arc::new(crate::credentials::UpstreamKey::load(
            source.clone(),
        )?)),
        None => None,
    };
    if let Some(ca) = &config.upstream.ca_file {
        crate::tls::check_ca_file(ca)
            .map_err(|e| StartError::Tls(format!("upstream.ca_file: {e}")))?;
    }
    Ok(crate::proxy::Security {
        auth,
        policy,
        upstream_key,
    })
}

/// Re-read the upstream key on SIGHUP (a failed reload keeps the old key). Pingora uses
/// SIGQUIT, SIGTERM and SIGINT, not SIGHUP.
fn reload_on_sighup(key: Arc<crate::credentials::UpstreamKey>) {
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
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let Ok(mut hangups) = signal(SignalKind::hangup()) else {
                    tracing::warn!("SIGHUP reload unavailable: cannot listen for the signal");
                    return;
                };
                while hangups.recv().await.is_some() {
                    match key.reload() {
                        Ok(()) => tracing::info!(source = ?key.source(), "upstream key reloaded"),
                        Err(error) => {
                            tracing::warn!(%error, "upstream key reload failed; keeping the previous key")
                        }
                    }
                }
            });
        });
    if spawned.is_err() {
        tracing::warn!("SIGHUP reload unavailable: cannot start its thread");
    }
}

/// The admin listener's app.
pub struct AdminApp {
    ready: Arc<AtomicBool>,
    rules_loaded: usize,
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let (status, body) = match path.as_str() {
            "/healthz" => (200, "ok\n".to_string()),
            "/readyz" if self.ready.load(Ordering::Relaxed) => {
                (200, format!("ready: {} rules loaded\n", self.rules_loaded))
            }
            "/readyz" => (503, "not ready\n".to_string()),
            "/metrics" => match crate::events::render() {
                Some(text) => {
                    return Response::builder()
                        .status(200)
                        .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                        .header("content-length", text.len())
                        .body(text)
                        .unwrap_or_else(|_| Response::new(Vec::new()))
                }
                None => (
                    404,
                    "metrics are disabled (metrics.enabled = false)\n".to_string(),
                ),
            },
            _ => (404, "not found\n".to_string()),
        };
        Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .header("content-length", body.len())
            .body(body.into_bytes())
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}

/// Build and run the server; does not return while the server runs.
pub fn run(config: Config) -> Result<(), StartError> {
    // Cheap checks of files first, so a bad certificate fails before rules compile.
    let tls = match &config.tls {
        Some(tls) => Some(crate::tls::listener_settings(tls).map_err(StartError::Tls)?),
        None => None,
    };
    let (engine, policy) = build_policy(&config)?;
    let profiles = policy.len();
    let security = build_security(&config, policy)?;
    if let Some(key) = &security.upstream_key {
        reload_on_sighup(Arc::clone(key));
    }
    let auth_on = security.auth.enabled();
    if !auth_on && security.upstream_key.is_some() {
        tracing::warn!(
            "the proxy injects its upstream key but [auth] is off: anyone who can reach the listener uses that key"
        );
    }
    let h2c = config.h2c;
    let rules_loaded = engine.matcher().rules().len();
    if config.metrics.enabled {
        crate::events::install(&engine, &config.known_groups);
    }
    crate::audit::install(&config.audit)?;
    let conf = ServerConf {
        threads: config.threads,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let listen = config.listen.to_string();
    let admin = config.admin.to_string();
    let upstream = format!(
        "{}://{}{}",
        if config.upstream.tls { "https" } else { "http" },
        config.upstream.authority(),
        config.upstream.base_path
    );
    let scheme = if tls.is_some() { "https" } else { "http" };
    let state = Arc::new(ProxyState::new(config, engine, security));
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Proxy::new(state),
        "streammask proxy",
    );
    if h2c {
        if let Some(app) = proxy.app_logic_mut() {
            let mut options = pingora::apps::HttpServerOptions::default();
            options.h2c = true;
            app.server_options = Some(options);
        }
    }
    match tls {
        Some(settings) => proxy.add_tls_with_settings(&listen, None, settings),
        None => proxy.add_tcp(&listen),
    }
    server.add_service(proxy);

    let ready = Arc::new(AtomicBool::new(true));
    let mut admin_service = Service::new(
        "streammask admin".to_string(),
        HttpServer::new_app(AdminApp {
            ready: Arc::clone(&ready),
            rules_loaded,
        }),
    );
    admin_service.add_tcp(&admin);
    server.add_service(admin_service);

    tracing::info!(%listen, %admin, %upstream, rules = rules_loaded, profiles, auth = auth_on, "streammask starting");
    eprintln!("streammask: listening on {scheme}://{listen} (admin {admin}), upstream {upstream}, {rules_loaded} rules, {profiles} profile(s), authentication {}", if auth_on { "on" } else { "off" });
    server.run_forever()
}
