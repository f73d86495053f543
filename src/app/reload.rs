//! Hot reload: the config file and the rules re-read, compiled off the request path,
//! validated, and swapped in as one new [`ProxyState`] snapshot.
//!
//! Triggers: SIGHUP, an authenticated `POST /admin/reload` ([`super::admin`]), and, with
//! `[server] watch = true`, a change to the config file, the rules directory or a dictionary
//! file that has settled for `watch_debounce_ms` ([`watch`]).
//!
//! Invariants:
//! - a reload either swaps a whole snapshot (config, policy, engines, authentication, upstream
//!   key) or changes nothing: any error — a config that does not parse or validate, a rule
//!   that does not compile, a missing key — keeps the running snapshot, is logged and counted
//!   (`streammask_config_reloads_total{result="error"}`);
//! - requests in flight keep the snapshot they started with (they hold it, see
//!   [`crate::proxy`]); the next request takes the new one;
//! - the placeholder key is the one the process started with, so placeholders (and what the
//!   vaults keyed by them hold) mean the same before and after a reload; settings only a
//!   restart can apply (listeners, threads, TLS, vault and audit back ends, the key's source,
//!   ...) refuse the reload with a message naming them, rather than being half applied;
//! - one reload at a time: triggers that arrive during one wait for it and then run.

use super::server::{build_policy_with_key, build_security, StartError};
use crate::config::{Config, FileConfig, Overrides};
use crate::config_error::ConfigError;
use crate::engine::matcher::InterimOptions;
use crate::engine::placeholder::PlaceholderKey;
use crate::observe::log::LogFormat;
use crate::proxy::{LiveState, ProxyState};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("{0} changed: only a restart applies it (the running configuration is kept)")]
    NeedsRestart(String),
}

/// What started a reload (logged with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Signal,
    Admin,
    Watch,
}

impl Trigger {
    pub fn label(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::Admin => "POST /admin/reload",
            Trigger::Watch => "file watch",
        }
    }
}

/// What a successful reload loaded.
#[derive(Debug, Clone)]
pub struct Reloaded {
    pub rules: usize,
    pub profiles: usize,
    pub checksum: String,
    pub took: Duration,
}

/// Where the running configuration came from, so a reload reads it the same way.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// `None`: the embedded default config.
    pub path: Option<PathBuf>,
    pub overrides: Overrides,
    /// `--log-json` (the format cannot change while running, but the flag must not read as a
    /// change).
    pub log_format: Option<LogFormat>,
}

impl ConfigSource {
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = FileConfig::load(self.path.as_deref())?
            .apply(&self.overrides)
            .validate()?;
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
        Ok(config)
    }
}

pub struct Reloader {
    source: ConfigSource,
    live: Arc<LiveState>,
    key: PlaceholderKey,
    one_at_a_time: Mutex<()>,
}

impl Reloader {
    pub fn new(source: ConfigSource, live: Arc<LiveState>, key: PlaceholderKey) -> Reloader {
        Reloader {
            source,
            live,
            key,
            one_at_a_time: Mutex::new(()),
        }
    }

    pub fn source(&self) -> &ConfigSource {
        &self.source
    }

    /// Re-read, rebuild and swap; blocks for as long as compiling takes (call it from a thread
    /// of its own or `spawn_blocking`, never from an event loop).
    pub fn reload(&self, trigger: Trigger) -> Result<Reloaded, ReloadError> {
        let _one = self
            .one_at_a_time
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let started = Instant::now();
        let current = self.live.load_full();
        let result = self.rebuild(&current).map(|next| {
            let next = Arc::new(next);
            if let Some(metrics) = &next.metrics {
                metrics.rules_reloaded(&next.engine);
            }
            let reloaded = Reloaded {
                rules: next.engine.matcher().rules().count(),
                profiles: next.security.policy.len(),
                checksum: next.engine.matcher().pack_checksum().to_string(),
                took: started.elapsed(),
            };
            self.live.store(next);
            reloaded
        });
        match &result {
            Ok(done) => tracing::info!(
                trigger = trigger.label(),
                rules = done.rules,
                profiles = done.profiles,
                checksum = %done.checksum,
                took_ms = done.took.as_millis() as u64,
                "configuration reloaded"
            ),
            Err(error) => {
                if let Some(metrics) = &current.metrics {
                    metrics.reload_failed();
                }
                tracing::warn!(trigger = trigger.label(), %error, "reload refused; the running configuration is kept");
            }
        }
        result
    }

    fn rebuild(&self, current: &ProxyState) -> Result<ProxyState, ReloadError> {
        let config = self.source.load()?;
        let restart_only = restart_only_changes(&current.config, &config);
        if !restart_only.is_empty() {
            return Err(ReloadError::NeedsRestart(restart_only.join(", ")));
        }
        if config.known_groups != current.config.known_groups {
            tracing::warn!(
                "the reload changes the caller groups profiles and [auth] name: metrics count \
                 groups new since start-up as `other` until a restart"
            );
        }
        let (engine, policy) =
            build_policy_with_key(&config, self.key.clone(), Some(InterimOptions::PROXY))?;
        let security = build_security(&config, policy)?;
        Ok(current.reloaded(config, engine, security))
    }
}

/// The settings that differ between `running` and `next` and that only a restart applies.
fn restart_only_changes(running: &Config, next: &Config) -> Vec<&'static str> {
    // Compared by their debug renderings: every field of each part takes part, and nothing
    // is printed.
    fn differs<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    let checks: [(&'static str, bool); 17] = [
        (
            "server.upgrade_sock",
            running.upgrade_sock != next.upgrade_sock,
        ),
        ("server.listen", running.listen != next.listen),
        ("server.admin", running.admin != next.admin),
        ("server.threads", running.threads != next.threads),
        (
            "server.max_connections",
            running.max_connections != next.max_connections,
        ),
        ("server.tls", differs(&running.tls, &next.tls)),
        ("server.h2c", running.h2c != next.h2c),
        (
            "masking.offload_threads",
            running.offload_threads != next.offload_threads,
        ),
        (
            "masking.placeholder_key_env / placeholder_key_file",
            running.placeholder_key_env != next.placeholder_key_env
                || running.placeholder_key_file != next.placeholder_key_file,
        ),
        (
            "masking.thinking / thinking_ttl_secs / thinking_max_bytes",
            running.thinking != next.thinking
                || running.thinking_ttl_secs != next.thinking_ttl_secs
                || running.thinking_max_bytes != next.thinking_max_bytes,
        ),
        ("[audit]", differs(&running.audit, &next.audit)),
        ("[metrics]", differs(&running.metrics, &next.metrics)),
        ("[log]", differs(&running.log, &next.log)),
        ("[restore]", differs(&running.restore, &next.restore)),
        ("[approvals]", differs(&running.approvals, &next.approvals)),
        ("[shutdown]", running.shutdown != next.shutdown),
        (
            "server.watch",
            running.watch.is_some() != next.watch.is_some(),
        ),
    ];
    checks
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
}

/// How often the watched files are looked at.
const WATCH_TICK: Duration = Duration::from_millis(250);

/// Reload whenever the files the configuration is read from change and then stay unchanged
/// for `debounce`. Runs on a thread of its own for the life of the process. A reload that
/// fails is not retried until the files change again.
pub fn watch(reloader: Arc<Reloader>, debounce: Duration) {
    let spawned = std::thread::Builder::new()
        .name("streammask-watch".into())
        .spawn(move || {
            let mut loaded = fingerprint(&reloader);
            let mut pending: Option<(Vec<FileStamp>, Instant)> = None;
            loop {
                std::thread::sleep(WATCH_TICK);
                let now = fingerprint(&reloader);
                match &pending {
                    _ if now == loaded => pending = None,
                    Some((seen, since)) if *seen == now => {
                        if since.elapsed() >= debounce {
                            // Whatever the outcome, these files have been tried.
                            let _ = reloader.reload(Trigger::Watch);
                            loaded = fingerprint(&reloader);
                            pending = None;
                        }
                    }
                    _ => pending = Some((now, Instant::now())),
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "server.watch: cannot start the watching thread; reload with SIGHUP");
    }
}

/// One watched file as last seen: its path and what its metadata says (following symbolic
/// links, so a Kubernetes ConfigMap's `..data` link swap shows as a change).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    path: PathBuf,
    seen: Option<(u64, u64, SystemTime)>,
}

fn stamp(path: &Path) -> FileStamp {
    use std::os::unix::fs::MetadataExt;
    let seen = std::fs::metadata(path).ok().map(|m| {
        (
            m.ino(),
            m.len(),
            m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        )
    });
    FileStamp {
        path: path.to_path_buf(),
        seen,
    }
}

/// The config file, every file in the rules directory (not hidden, sorted) and every
/// dictionary file of the running configuration.
fn fingerprint(reloader: &Reloader) -> Vec<FileStamp> {
    let mut stamps = Vec::new();
    if let Some(path) = &reloader.source.path {
        stamps.push(stamp(path));
    }
    let state = reloader.live.load();
    if let Some(dir) = &state.config.rules_dir {
        stamps.push(stamp(dir));
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut files: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| {
                    path.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| !n.starts_with('.'))
                })
                .collect();
            files.sort();
            stamps.extend(files.iter().map(|p| stamp(p)));
        }
    }
    for dictionary in &state.config.org_data.dictionaries {
        stamps.push(stamp(&dictionary.path));
    }
    stamps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        FileConfig::parse("test", text)
            .expect("parses")
            .validate()
            .expect("valid")
    }

    #[test]
    fn restart_only_settings_are_named_and_reloadable_ones_are_not() {
        let running = config("[server]\nmax_body_bytes = 100000\n");
        let rules_and_limits = config(
            "[server]\nmax_body_bytes = 200000\n[masking]\nmax_scan_ms = 500\n\
             [upstream]\nread_timeout_ms = 1000\n",
        );
        assert!(restart_only_changes(&running, &rules_and_limits).is_empty());
        let moved = config(
            "[server]\nlisten = \"127.0.0.1:18080\"\nthreads = 3\n[audit]\nsink = \"stdout\"\n",
        );
        assert_eq!(
            restart_only_changes(&running, &moved),
            ["server.listen", "server.threads", "[audit]"]
        );
    }

    #[test]
    fn a_watched_file_that_changes_changes_its_stamp() {
        let dir = std::env::temp_dir().join(format!("streammask-stamp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("rules.toml");
        std::fs::write(&file, "a").expect("write");
        let before = stamp(&file);
        std::fs::write(&file, "ab").expect("write");
        assert_ne!(before, stamp(&file), "a longer file");
        std::fs::remove_file(&file).expect("remove");
        assert_eq!(stamp(&file).seen, None, "a removed file");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
