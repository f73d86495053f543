//! Where the matcher's Hyperscan databases come from. Compiling the default pack takes seconds
//! of CPU per mode; loading a compiled one takes milliseconds, so a database is compiled only
//! when nothing below has it:
//! 1. in this process: every matcher built from the same expressions (the base engine and every
//!    policy profile, which differ only in which rules are active) shares one pair of databases;
//! 2. embedded in the binary: `build.rs` compiles the default pack for generic x86-64 (no AVX2
//!    needed), so a fresh container starts on the default pack without compiling anything;
//! 3. the cache directory: databases compiled here before, for this CPU;
//! 4. compiled now, then stored in the cache directory for the next start; or, for a matcher
//!    that can scan without them meanwhile, compiled on a thread of its own
//!    ([`compile_in_background`]) and then stored and shared like the others.
//!
//! Invariants:
//! - a database is used only for the [`database_key`] it was compiled from (Hyperscan version,
//!   mode, every expression with its id and flags), whichever of the four it comes from;
//! - the cache directory is used only when it is owned by this user and not writable by group
//!   or others, because a database loaded from it decides what gets masked; anything wrong with
//!   it is a warning, never an error: the proxy compiles instead (read-only containers work);
//! - an entry that does not load is ignored and replaced; entries are written to a temporary
//!   name and renamed, so a reader never sees half a database; the directory keeps at most
//!   [`MAX_CACHE_ENTRIES`] entries, the least recently used removed first (a load touches its
//!   entry);
//! - a database of a single expression (`rules check` and `rules bench --per-rule` compile
//!   hundreds) is never cached: it compiles in milliseconds and would only crowd out packs.

pub use super::database_key::{database_key, KeyedPattern};
use super::terms::TermAutomata;
use hyperscan::prelude::*;
use hyperscan::Serialized;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

/// Environment variable naming the cache directory (when the configuration does not). An
/// empty value turns the cache off.
pub const HS_CACHE_ENV: &str = "STREAMMASK_HS_CACHE_DIR";

/// Cache entries kept; each rule-pack change adds two.
pub const MAX_CACHE_ENTRIES: usize = 512;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_databases.rs"));
}

/// Where a matcher's databases were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Embedded,
    Cache,
    Compiled,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Embedded => "embedded",
            Source::Cache => "cache",
            Source::Compiled => "compiled",
        }
    }
}

/// Which cache directory to use; chosen once by the application before it compiles rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheSetting {
    /// `STREAMMASK_HS_CACHE_DIR` when set, else the user's cache directory
    /// (`$XDG_CACHE_HOME/streammask/hyperscan`, `~/.cache/streammask/hyperscan`), else
    /// `/var/cache/streammask/hyperscan`.
    Default,
    Off,
    Dir(PathBuf),
}

static CACHE_SETTING: RwLock<CacheSetting> = RwLock::new(CacheSetting::Default);

pub fn configure_cache(setting: CacheSetting) {
    *CACHE_SETTING.write().unwrap_or_else(|e| e.into_inner()) = setting;
}

/// The directory the current setting names (not checked).
pub fn cache_dir() -> Option<PathBuf> {
    let setting = CACHE_SETTING
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    match setting {
        CacheSetting::Off => None,
        CacheSetting::Dir(dir) if dir.as_os_str().is_empty() => None,
        CacheSetting::Dir(dir) => Some(dir),
        CacheSetting::Default => match std::env::var_os(HS_CACHE_ENV) {
            Some(dir) if dir.is_empty() => None,
            Some(dir) => Some(PathBuf::from(dir)),
            None => Some(default_cache_dir()),
        },
    }
}

fn default_cache_dir() -> PathBuf {
    let user_cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|home| home.is_absolute() && home != Path::new("/"))
                .map(|home| home.join(".cache"))
        });
    match user_cache {
        Some(dir) => dir.join("streammask").join("hyperscan"),
        None => PathBuf::from("/var/cache/streammask/hyperscan"),
    }
}

/// A block and a streaming database compiled from the same expressions.
pub struct Databases {
    pub block: BlockDatabase,
    pub stream: StreamingDatabase,
    /// Numbered process-wide so per-thread scratch space, keyed by it, is never shared between
    /// databases.
    pub generation: u64,
    pub source: Source,
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Databases alive in this process, by block key (weak: a replaced rule pack's databases are
/// freed when its last matcher goes).
static SHARED: Mutex<Option<HashMap<[u8; 32], Weak<Databases>>>> = Mutex::new(None);

/// The databases for `patterns`, from wherever they are cheapest to get (see the module doc).
pub fn load(patterns: &Patterns) -> Result<Arc<Databases>, hyperscan::Error> {
    let keys = Keys::of(patterns);
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    let shared = shared.get_or_insert_with(HashMap::new);
    // Compiling under the lock is deliberate: two profiles asking for the same pack at once
    // must not compile it twice.
    let found = match find(shared, patterns, &keys) {
        Some(found) => return Ok(found),
        None => {
            let cache = cache_for(patterns);
            let (block, stream) = compile_both(patterns)?;
            if let Some(dir) = cache.as_deref() {
                keys.store(dir, &block, &stream);
            }
            (block, stream, Source::Compiled)
        }
    };
    Ok(share(shared, &keys, found))
}

/// The databases for `patterns` if they can be had without compiling: alive in this process,
/// embedded in the binary, or in the cache directory.
pub fn lookup(patterns: &Patterns) -> Option<Arc<Databases>> {
    let keys = Keys::of(patterns);
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    let shared = shared.get_or_insert_with(HashMap::new);
    find(shared, patterns, &keys)
}

/// The block and stream keys of one list of expressions.
struct Keys {
    block: [u8; 32],
    stream: [u8; 32],
}

impl Keys {
    fn of(patterns: &Patterns) -> Keys {
        let version = hyperscan::version_str().to_bytes();
        let keyed = || {
            patterns.iter().map(|p| KeyedPattern {
                id: p.id.unwrap_or(0),
                flags: p.flags.bits(),
                expression: &p.expression,
            })
        };
        Keys {
            block: database_key(version, "block", keyed()),
            stream: database_key(version, "stream", keyed()),
        }
    }

    fn store(&self, dir: &Path, block: &BlockDatabase, stream: &StreamingDatabase) {
        write_entry(dir, &self.block, "block", block);
        write_entry(dir, &self.stream, "stream", stream);
        prune(dir);
    }
}

type Found = (BlockDatabase, StreamingDatabase, Source);

/// What is alive in this process (returned as it is), else embedded or cached (to be shared).
fn find(
    shared: &mut HashMap<[u8; 32], Weak<Databases>>,
    patterns: &Patterns,
    keys: &Keys,
) -> Option<Arc<Databases>> {
    if let Some(databases) = shared.get(&keys.block).and_then(Weak::upgrade) {
        return Some(databases);
    }
    let found = match (embedded_db(&keys.block), embedded_db(&keys.stream)) {
        (Some(block), Some(stream)) => (block, stream, Source::Embedded),
        _ => {
            let dir = cache_for(patterns)?;
            let block = read_entry(&dir, &keys.block, "block")?;
            let stream = read_entry(&dir, &keys.stream, "stream")?;
            (block, stream, Source::Cache)
        }
    };
    Some(share(shared, keys, found))
}

/// The cache directory for a database of `patterns` (none for a single expression).
fn cache_for(patterns: &Patterns) -> Option<PathBuf> {
    if patterns.len() > 1 {
        usable_cache_dir()
    } else {
        None
    }
}

fn share(
    shared: &mut HashMap<[u8; 32], Weak<Databases>>,
    keys: &Keys,
    (block, stream, source): Found,
) -> Arc<Databases> {
    let databases = Arc::new(Databases {
        block,
        stream,
        generation: GENERATION.fetch_add(1, Ordering::Relaxed),
        source,
    });
    shared.retain(|_, weak| weak.strong_count() > 0);
    shared.insert(keys.block, Arc::downgrade(&databases));
    databases
}

/// Databases compiled on a thread of their own, and what matchers scan the dictionary terms
/// with in the meantime (see [`crate::engine::terms`]); every matcher of the same expressions
/// (the base engine, each policy profile, a reload) shares one.
///
/// Invariant: `terms` is released only after `ready` is set, and `ready` is never unset, so a
/// reader that finds no automata finds the databases.
pub struct Pending {
    ready: OnceLock<Arc<Databases>>,
    terms: RwLock<Option<Arc<TermAutomata>>>,
    failed: AtomicBool,
}

impl Pending {
    /// The databases, once compiled.
    pub fn ready(&self) -> Option<&Arc<Databases>> {
        self.ready.get()
    }

    /// The automata, until the databases are ready.
    pub fn terms(&self) -> Option<Arc<TermAutomata>> {
        self.terms.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn finish(&self, databases: Arc<Databases>) -> bool {
        let set = self.ready.set(databases).is_ok();
        // After `ready`: see the invariant. Streams opened on the automata keep their own
        // reference; the rest (tens of megabytes for 100,000 terms) is freed now.
        *self.terms.write().unwrap_or_else(|e| e.into_inner()) = None;
        set
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("ready", &self.ready.get().is_some())
            .field("failed", &self.failed.load(Ordering::Relaxed))
            .finish()
    }
}

/// Background compiles in flight or done and still used, by block key.
static PENDING: Mutex<Option<HashMap<[u8; 32], Weak<Pending>>>> = Mutex::new(None);

/// One background compile at a time: each takes hundreds of megabytes and both cores for
/// seconds, and reloads of a list that keeps changing must not pile them up.
static COMPILING: Mutex<()> = Mutex::new(());

/// The shared compile of `patterns` on a thread of its own, with `terms` (built only when no
/// compile of the same expressions is in flight or done and still used, or the last one
/// failed) to scan with meanwhile. The result is stored in the cache directory and shared in
/// this process like a [`load`]ed one. `start: false` registers the compile without running it
/// (tests of what scans in the meantime, and a process that scans once and exits).
pub fn compile_in_background<E>(
    patterns: Patterns,
    start: bool,
    terms: impl FnOnce() -> Result<TermAutomata, E>,
) -> Result<Arc<Pending>, E> {
    let keys = Keys::of(&patterns);
    let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
    let pending = pending.get_or_insert_with(HashMap::new);
    if let Some(running) = pending.get(&keys.block).and_then(Weak::upgrade) {
        if !running.failed.load(Ordering::Relaxed) {
            return Ok(running);
        }
    }
    let compile = Arc::new(Pending {
        ready: OnceLock::new(),
        terms: RwLock::new(Some(Arc::new(terms()?))),
        failed: AtomicBool::new(false),
    });
    pending.retain(|_, weak| weak.strong_count() > 0);
    pending.insert(keys.block, Arc::downgrade(&compile));
    if start {
        let weak = Arc::downgrade(&compile);
        let spawned = std::thread::Builder::new()
            .name("streammask-compile".into())
            .spawn(move || compile_now(patterns, keys, weak));
        if let Err(error) = spawned {
            compile.failed.store(true, Ordering::Relaxed);
            tracing::error!(%error, "cannot start the background compile; scanning goes on without it");
        }
    }
    Ok(compile)
}

fn compile_now(patterns: Patterns, keys: Keys, pending: Weak<Pending>) {
    let _one_at_a_time = COMPILING.lock().unwrap_or_else(|e| e.into_inner());
    // Nobody scans with it any more (a reload replaced the list while this waited).
    let Some(wanted) = pending.upgrade() else {
        return;
    };
    drop(wanted);
    // An earlier compile of the same expressions, or a `config check`, may have made it.
    if let Some(found) = lookup(&patterns) {
        if let Some(pending) = pending.upgrade() {
            pending.finish(found);
        }
        return;
    }
    let started = std::time::Instant::now();
    // Outside the lock of shared databases: start-ups and reloads go on while this runs.
    let compiled =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| compile_both(&patterns)));
    let (block, stream) = match compiled {
        Ok(Ok(both)) => both,
        failure => {
            let error = match failure {
                Ok(Err(error)) => error.to_string(),
                _ => "the compiler panicked".to_string(),
            };
            if let Some(pending) = pending.upgrade() {
                pending.failed.store(true, Ordering::Relaxed);
            }
            tracing::error!(
                error = %error,
                "background compile failed; scanning goes on with the interim automata (the next reload tries again)"
            );
            return;
        }
    };
    if let Some(dir) = cache_for(&patterns) {
        keys.store(&dir, &block, &stream);
    }
    let databases = {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        let shared = shared.get_or_insert_with(HashMap::new);
        match shared.get(&keys.block).and_then(Weak::upgrade) {
            Some(already) => already,
            None => share(shared, &keys, (block, stream, Source::Compiled)),
        }
    };
    let Some(pending) = pending.upgrade() else {
        return;
    };
    if pending.finish(databases) {
        tracing::info!(
            expressions = patterns.len(),
            seconds = started.elapsed().as_secs_f64(),
            "databases compiled in the background are in use"
        );
    }
}

/// Both modes compiled at once, on two threads: each takes seconds for a pack of hundreds of
/// rules or a list of 100,000 terms, and Hyperscan's compiler is single-threaded.
fn compile_both(
    patterns: &Patterns,
) -> Result<(BlockDatabase, StreamingDatabase), hyperscan::Error> {
    std::thread::scope(|scope| {
        let stream = scope.spawn(|| -> Result<StreamingDatabase, _> { patterns.build() });
        let block: Result<BlockDatabase, _> = patterns.build();
        let stream = stream
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        give_back_compile_memory();
        Ok((block?, stream?))
    })
}

/// Hyperscan's compiler allocates (with the C allocator) over a hundred megabytes for a pack
/// of hundreds of rules and frees it when done; glibc keeps the freed pages in the compiling
/// threads' arenas, so without this a proxy that compiled once (a start-up or a reload with a
/// changed pack) stays ~150 MB larger for good. Measured with `bench/reload.py`.
fn give_back_compile_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the C allocator to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn embedded_db<M: hyperscan::Mode>(key: &[u8; 32]) -> Option<hyperscan::Database<M>> {
    let (_, bytes) = embedded::EMBEDDED_DATABASES
        .iter()
        .find(|(embedded_key, _)| embedded_key == key)?;
    // Fails when this CPU lacks what the database needs (it needs nothing beyond SSSE3,
    // which Hyperscan itself requires): then the cache or a compile takes over.
    bytes.deserialize::<M>().ok()
}

/// How many databases the binary carries.
pub fn embedded_count() -> usize {
    embedded::EMBEDDED_DATABASES.len()
}

/// Hyperscan's (minimum, maximum) match width of an expression of the embedded pack, as the
/// Hyperscan that built the binary computed it; `None` for any other expression, or when the
/// running Hyperscan is another version.
pub fn embedded_widths(expression: &str) -> Option<(usize, usize)> {
    static WIDTHS: std::sync::OnceLock<HashMap<&'static str, (usize, usize)>> =
        std::sync::OnceLock::new();
    let widths = WIDTHS.get_or_init(|| {
        let same_version =
            hyperscan::version_str().to_bytes() == embedded::EMBEDDED_HYPERSCAN_VERSION.as_bytes();
        embedded::EMBEDDED_WIDTHS
            .iter()
            .filter(|_| same_version)
            .map(|&(expression, min, max)| (expression, (min, max)))
            .collect()
    });
    widths.get(expression).copied()
}

static WARNED: AtomicBool = AtomicBool::new(false);

fn warn_once(dir: &Path, why: &str) {
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            dir = %dir.display(),
            "Hyperscan database cache not used ({why}): rule packs other than the embedded \
             default are compiled at every start"
        );
    }
}

/// The cache directory, created (0700) if missing, or `None` with a warning when it cannot be
/// trusted or written.
fn usable_cache_dir() -> Option<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let dir = cache_dir()?;
    if !dir.exists() {
        if let Err(e) = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
        {
            warn_once(&dir, &format!("cannot create it: {e}"));
            return None;
        }
    }
    let metadata = match std::fs::metadata(&dir) {
        Ok(metadata) if metadata.is_dir() => metadata,
        Ok(_) => {
            warn_once(&dir, "not a directory");
            return None;
        }
        Err(e) => {
            warn_once(&dir, &e.to_string());
            return None;
        }
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if metadata.uid() != euid {
        warn_once(&dir, "owned by another user");
        return None;
    }
    if metadata.mode() & 0o022 != 0 {
        warn_once(&dir, "writable by group or others");
        return None;
    }
    Some(dir)
}

fn entry_path(dir: &Path, key: &[u8; 32], mode: &str) -> PathBuf {
    dir.join(format!("{}.{mode}.hsdb", hex::encode(key)))
}

fn read_entry<M: hyperscan::Mode>(
    dir: &Path,
    key: &[u8; 32],
    mode: &str,
) -> Option<hyperscan::Database<M>> {
    let path = entry_path(dir, key, mode);
    let bytes = std::fs::read(&path).ok()?;
    let db = bytes.deserialize::<M>().ok()?;
    // Pruning removes the oldest modification times first: a used entry is kept.
    if let Ok(file) = std::fs::File::options().write(true).open(&path) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
    Some(db)
}

fn write_entry<M: hyperscan::Mode>(
    dir: &Path,
    key: &[u8; 32],
    mode: &str,
    db: &hyperscan::Database<M>,
) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(serialized) = db.serialize() else {
        return;
    };
    let path = entry_path(dir, key, mode);
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .and_then(|mut file| file.write_all(&serialized[..]))
        .and_then(|_| std::fs::rename(&temporary, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temporary);
        warn_once(dir, &format!("cannot write it: {e}"));
    }
}

/// Remove the oldest entries beyond [`MAX_CACHE_ENTRIES`].
fn prune(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut databases: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "hsdb"))
        .filter_map(|path| Some((std::fs::metadata(&path).ok()?.modified().ok()?, path)))
        .collect();
    if databases.len() <= MAX_CACHE_ENTRIES {
        return;
    }
    databases.sort();
    let excess = databases.len() - MAX_CACHE_ENTRIES;
    for (_, path) in databases.into_iter().take(excess) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_covers_version_mode_ids_flags_and_expressions() {
        let one = |id, flags, expression| KeyedPattern {
            id,
            flags,
            expression,
        };
        let base = database_key(b"5.4", "block", [one(0, 0, "a+b")]);
        assert_eq!(base, database_key(b"5.4", "block", [one(0, 0, "a+b")]));
        assert_ne!(base, database_key(b"5.5", "block", [one(0, 0, "a+b")]));
        assert_ne!(base, database_key(b"5.4", "stream", [one(0, 0, "a+b")]));
        assert_ne!(base, database_key(b"5.4", "block", [one(1, 0, "a+b")]));
        assert_ne!(base, database_key(b"5.4", "block", [one(0, 1, "a+b")]));
        assert_ne!(base, database_key(b"5.4", "block", [one(0, 0, "a+c")]));
        // Lengths are part of the key, so expressions cannot be re-split between patterns.
        assert_ne!(
            database_key(b"5.4", "block", [one(0, 0, "ab"), one(1, 0, "c")]),
            database_key(b"5.4", "block", [one(0, 0, "a"), one(1, 0, "bc")])
        );
    }

    #[test]
    fn the_default_cache_dir_follows_xdg_then_home() {
        // Read-only use of the environment: these are the process's own values.
        let dir = default_cache_dir();
        assert!(dir.is_absolute());
        assert!(dir.ends_with("streammask/hyperscan"), "{}", dir.display());
    }

    #[test]
    fn the_binary_embeds_the_default_pack_in_both_modes() {
        assert_eq!(
            embedded_count(),
            2,
            "build.rs compiles the default pack into one block and one streaming database"
        );
    }
}
