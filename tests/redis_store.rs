//! `RedisStore` against a real `redis-server`, one per test, started on a free loopback port
//! in a temporary directory (no persistence) and killed when the test ends.
//!
//! Covers what the memory backend's unit tests cover (put/fetch, replace, expiry, group
//! limits), plus what only a shared server shows: two stores (two replicas) share data, the
//! bytes at rest are ciphertext under keyed ids, and a dead or absent server gives
//! `Unavailable` within the timeout instead of hanging.
//!
//! `redis-server` missing is a failure, not a skip: `.ci/install` installs it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use streammask::policy::store::{
    now_ms, GroupLimits, GroupStore, Id, RedisStore, Sealer, StoreEntry, StoreError,
};

const TIMEOUT: Duration = Duration::from_millis(500);
const ROOMY: GroupLimits = GroupLimits {
    max_entries: 100,
    max_bytes: 1 << 20,
};
const MATERIAL: &[u8] = b"replicas share this placeholder key material";

/// A `redis-server` child, killed (and its directory removed) on drop.
struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    fn start() -> RedisServer {
        // A free port can be taken between our probe and the server's bind: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            match RedisServer::start_on(free_port()) {
                Ok(server) => return server,
                Err(why) => last = why,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    fn start_on(port: u16) -> Result<RedisServer, String> {
        let dir = std::env::temp_dir().join(format!("sm-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("temp dir: {e}"))?;
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if spawned.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        let child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not on PATH: run .ci/install (it installs redis-server); \
                 the Redis store tests need a real server and do not skip"
            ),
            Err(e) => panic!("cannot run redis-server: {e}"),
        };
        let mut server = RedisServer {
            child: Some(child),
            port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if pings(port) {
                return Ok(server);
            }
            if let Some(child) = server.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("exited with {status} (port {port} taken?)"));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("no PONG on port {port} within 10 s"))
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

/// Whether a Redis on `port` answers `PING` (raw RESP, so no client state is involved).
fn pings(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// A plain connection for looking at what the store wrote.
async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn store(server: &RedisServer, namespace: &str) -> RedisStore {
    RedisStore::new(&server.url(), namespace, TIMEOUT).unwrap()
}

fn id(n: u8) -> Id {
    [n; 32]
}

fn entry(field: u8, value: &[u8], expires_at_ms: u64) -> StoreEntry {
    StoreEntry {
        field: id(field),
        value: value.to_vec(),
        expires_at_ms,
    }
}

/// Sleeps until the wall clock (the stores' clock) reads at least `at_ms`.
async fn sleep_until_ms(at_ms: u64) {
    let now = now_ms();
    if at_ms > now {
        tokio::time::sleep(Duration::from_millis(at_ms - now)).await;
    }
}

fn some(value: &[u8]) -> Option<Vec<u8>> {
    Some(value.to_vec())
}

#[tokio::test]
async fn put_fetch_and_replace() {
    let server = RedisServer::start();
    let store = store(&server, "t");
    assert_eq!(store.backend(), "redis");
    let later = now_ms() + 60_000;
    let group = id(1);
    store
        .put(
            &group,
            vec![entry(1, b"one", later), entry(2, b"two", later)],
            ROOMY,
        )
        .await
        .unwrap();
    let got = store.fetch(&group, &[id(2), id(3), id(1)]).await.unwrap();
    assert_eq!(got, vec![some(b"two"), None, some(b"one")]);

    store
        .put(&group, vec![entry(1, b"uno", later)], ROOMY)
        .await
        .unwrap();
    let got = store.fetch(&group, &[id(1), id(2)]).await.unwrap();
    assert_eq!(got, vec![some(b"uno"), some(b"two")]);

    // Within one put the last entry for a field wins.
    store
        .put(
            &group,
            vec![entry(4, b"a", later), entry(4, b"b", later)],
            ROOMY,
        )
        .await
        .unwrap();
    assert_eq!(
        store.fetch(&group, &[id(4)]).await.unwrap(),
        vec![some(b"b")]
    );

    let unknown = store.fetch(&id(9), &[id(1), id(2)]).await.unwrap();
    assert_eq!(unknown, vec![None, None]);
    assert!(store.fetch(&group, &[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn entries_expire_and_so_does_the_group() {
    let server = RedisServer::start();
    let store = store(&server, "t");
    let mut conn = raw(&server).await;
    let key = format!("t:{}", hex::encode(id(1)));
    let now = now_ms();
    let group = id(1);

    // Already expired: never returned (not even stored); the future one is.
    store
        .put(
            &group,
            vec![entry(1, b"gone", now - 1), entry(2, b"here", now + 60_000)],
            ROOMY,
        )
        .await
        .unwrap();
    let got = store.fetch(&group, &[id(1), id(2)]).await.unwrap();
    assert_eq!(got, vec![None, some(b"here")]);
    // The whole group, at once: only what is live.
    assert_eq!(
        store.fetch_group(&group).await.unwrap(),
        vec![(id(2), b"here".to_vec())]
    );
    assert!(store.fetch_group(&id(9)).await.unwrap().is_empty());
    let expire_at: i64 = redis::cmd("PEXPIRETIME")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        expire_at,
        (now + 60_000) as i64,
        "the key expires with its latest entry"
    );

    // A shorter-lived entry does not cut the group's life short; a longer one extends it.
    // (Its second of life leaves room for a busy machine's round trips before it is read.)
    let brief_until = now_ms() + 1_000;
    store
        .put(&group, vec![entry(3, b"brief", brief_until)], ROOMY)
        .await
        .unwrap();
    let after_short: i64 = redis::cmd("PEXPIRETIME")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(after_short, expire_at);
    store
        .put(&group, vec![entry(4, b"long", now + 120_000)], ROOMY)
        .await
        .unwrap();
    let after_long: i64 = redis::cmd("PEXPIRETIME")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(after_long, (now + 120_000) as i64);

    // The key outlives entry 3: its own expiry is what hides it.
    assert_eq!(
        store.fetch(&group, &[id(3)]).await.unwrap(),
        vec![some(b"brief")]
    );
    sleep_until_ms(brief_until + 50).await;
    let got = store.fetch(&group, &[id(3), id(2)]).await.unwrap();
    assert_eq!(got, vec![None, some(b"here")]);

    // An expired entry written over a live field clears it.
    store
        .put(&group, vec![entry(2, b"stale", now_ms() - 1)], ROOMY)
        .await
        .unwrap();
    assert_eq!(store.fetch(&group, &[id(2)]).await.unwrap(), vec![None]);

    // A group whose only entry expires is gone from Redis too.
    let brief_group = id(2);
    let brief_key = format!("t:{}", hex::encode(brief_group));
    store
        .put(&brief_group, vec![entry(1, b"x", now_ms() + 200)], ROOMY)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let exists: u32 = redis::cmd("EXISTS")
        .arg(&brief_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0);
    assert_eq!(
        store.fetch(&brief_group, &[id(1)]).await.unwrap(),
        vec![None]
    );
}

#[tokio::test]
async fn group_limits_drop_earliest_expiring() {
    let server = RedisServer::start();
    let store = store(&server, "t");
    let t = now_ms() + 60_000;

    let two = GroupLimits {
        max_entries: 2,
        max_bytes: 1 << 20,
    };
    // Written out of expiry order: what goes is what expires first, not what came first.
    let entries = vec![
        entry(1, b"mid", t + 20),
        entry(2, b"late", t + 30),
        entry(3, b"early", t + 10),
    ];
    store.put(&id(1), entries, two).await.unwrap();
    let got = store.fetch(&id(1), &[id(1), id(2), id(3)]).await.unwrap();
    assert_eq!(got, vec![some(b"mid"), some(b"late"), None]);
    store
        .put(&id(1), vec![entry(4, b"latest", t + 40)], two)
        .await
        .unwrap();
    let got = store.fetch(&id(1), &[id(1), id(2), id(4)]).await.unwrap();
    assert_eq!(got, vec![None, some(b"late"), some(b"latest")]);

    // Bytes count the values only (not the stored expiry prefix): 2 x 10 fits in 25, 3 do not.
    let bytes = GroupLimits {
        max_entries: 100,
        max_bytes: 25,
    };
    let entries = vec![
        entry(1, &[b'a'; 10], t + 10),
        entry(2, &[b'b'; 10], t + 20),
        entry(3, &[b'c'; 10], t + 30),
    ];
    store.put(&id(2), entries, bytes).await.unwrap();
    let got = store.fetch(&id(2), &[id(1), id(2), id(3)]).await.unwrap();
    assert_eq!(got, vec![None, Some(vec![b'b'; 10]), Some(vec![b'c'; 10])]);

    // An expired entry left in the group goes first when the group is trimmed.
    let tight = GroupLimits {
        max_entries: 2,
        max_bytes: 1 << 20,
    };
    store
        .put(
            &id(3),
            vec![entry(1, b"soon", now_ms() + 200), entry(2, b"keep", t + 50)],
            tight,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    store
        .put(&id(3), vec![entry(3, b"new", t + 10)], tight)
        .await
        .unwrap();
    let got = store.fetch(&id(3), &[id(1), id(2), id(3)]).await.unwrap();
    assert_eq!(got, vec![None, some(b"keep"), some(b"new")]);

    // A value larger than the whole group's budget is not kept, and evicts nothing.
    let small = GroupLimits {
        max_entries: 100,
        max_bytes: 16,
    };
    store
        .put(&id(4), vec![entry(1, b"small", t)], small)
        .await
        .unwrap();
    store
        .put(&id(4), vec![entry(2, &[0; 17], t + 10)], small)
        .await
        .unwrap();
    let got = store.fetch(&id(4), &[id(1), id(2)]).await.unwrap();
    assert_eq!(got, vec![some(b"small"), None]);
}

#[tokio::test]
async fn two_replicas_share_one_server() {
    let server = RedisServer::start();
    let (replica_a, replica_b) = (store(&server, "vault"), store(&server, "vault"));
    let (sealer_a, sealer_b) = (
        Sealer::derive(MATERIAL, "vault"),
        Sealer::derive(MATERIAL, "vault"),
    );

    let group = sealer_a.id(&[b"caller-42"]);
    let field = sealer_a.id(&[b"caller-42", b"{{SECRET_1}}"]);
    let sealed = sealer_a.seal(&field, b"sk-ant-api03-plaintext").unwrap();
    let entries = vec![StoreEntry {
        field,
        value: sealed,
        expires_at_ms: now_ms() + 60_000,
    }];
    replica_a.put(&group, entries, ROOMY).await.unwrap();

    // Replica B derives the same ids on its own and opens A's value.
    let b_group = sealer_b.id(&[b"caller-42"]);
    let b_field = sealer_b.id(&[b"caller-42", b"{{SECRET_1}}"]);
    let fetched = replica_b.fetch(&b_group, &[b_field]).await.unwrap();
    let sealed = fetched[0]
        .as_deref()
        .expect("replica B sees replica A's entry");
    assert_eq!(
        sealer_b.open(&b_field, sealed).unwrap(),
        b"sk-ant-api03-plaintext"
    );

    // And B's writes are A's reads.
    replica_b
        .put(
            &b_group,
            vec![entry(7, b"from b", now_ms() + 60_000)],
            ROOMY,
        )
        .await
        .unwrap();
    assert_eq!(
        replica_a.fetch(&group, &[id(7)]).await.unwrap(),
        vec![some(b"from b")]
    );

    // Another namespace on the same server is another store.
    let other = store(&server, "grants");
    assert_eq!(other.fetch(&group, &[field]).await.unwrap(), vec![None]);
}

#[tokio::test]
async fn at_rest_only_ciphertext_under_keyed_ids() {
    let server = RedisServer::start();
    let store = store(&server, "vault");
    let sealer = Sealer::derive(MATERIAL, "vault");
    let secret: &[u8] = b"sk-ant-api03-THE-PLAINTEXT-SECRET";
    let caller: &[u8] = b"alice@example.com";
    let placeholder: &[u8] = b"{{SECRET_7}}";
    let group = sealer.id(&[caller]);
    let field = sealer.id(&[caller, placeholder]);
    let entries = vec![StoreEntry {
        field,
        value: sealer.seal(&field, secret).unwrap(),
        expires_at_ms: now_ms() + 60_000,
    }];
    store.put(&group, entries, ROOMY).await.unwrap();

    let mut conn = raw(&server).await;
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        keys,
        vec![format!("vault:{}", hex::encode(group)).into_bytes()]
    );
    let all: Vec<Vec<u8>> = redis::cmd("HGETALL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0], hex::encode(field).into_bytes());
    let mut everything = keys[0].clone();
    for part in &all {
        everything.extend_from_slice(part);
    }
    // No plaintext, and no fragment of it long enough to matter, anywhere at rest.
    for needle in [secret, caller, placeholder, &secret[..8], &secret[12..20]] {
        assert!(
            !everything.windows(needle.len()).any(|w| w == needle),
            "{:?} found at rest",
            String::from_utf8_lossy(needle)
        );
    }
    // The stored value is expiry || sealed, and it opens only with the key.
    let sealed = &all[1][8..];
    assert_eq!(sealer.open(&field, sealed).unwrap(), secret);
    assert_eq!(
        Sealer::derive(b"another key", "vault").open(&field, sealed),
        None
    );
}

#[tokio::test]
async fn dead_server_is_unavailable_within_the_timeout() {
    let mut server = RedisServer::start();
    let store = store(&server, "t");
    let later = now_ms() + 60_000;
    store
        .put(&id(1), vec![entry(1, b"v", later)], ROOMY)
        .await
        .unwrap();
    assert_eq!(
        store.fetch(&id(1), &[id(1)]).await.unwrap(),
        vec![some(b"v")]
    );

    server.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let fetched = store.fetch(&id(1), &[id(1)]).await;
        let elapsed = started.elapsed();
        assert!(
            matches!(fetched, Err(StoreError::Unavailable(_))),
            "{fetched:?}"
        );
        assert!(
            elapsed < TIMEOUT + Duration::from_millis(500),
            "took {elapsed:?}"
        );
        let started = Instant::now();
        let put = store.put(&id(1), vec![entry(1, b"v", later)], ROOMY).await;
        assert!(matches!(put, Err(StoreError::Unavailable(_))), "{put:?}");
        assert!(started.elapsed() < TIMEOUT + Duration::from_millis(500));
        let shown = put.unwrap_err().to_string();
        assert!(shown.starts_with("store unavailable: redis put"), "{shown}");
        assert!(!shown.contains(&hex::encode(id(1))), "{shown}");
    }
}

#[tokio::test]
async fn a_failed_connect_is_retried_by_the_next_call() {
    let port = free_port();
    let early = RedisStore::new(&format!("redis://127.0.0.1:{port}"), "t", TIMEOUT).unwrap();
    let before = early.fetch(&id(1), &[id(1)]).await;
    assert!(
        matches!(before, Err(StoreError::Unavailable(_))),
        "{before:?}"
    );

    let server = RedisServer::start_on(port).unwrap_or_else(|why| panic!("redis-server: {why}"));
    let later = now_ms() + 60_000;
    early
        .put(&id(1), vec![entry(1, b"v", later)], ROOMY)
        .await
        .unwrap();
    assert_eq!(
        early.fetch(&id(1), &[id(1)]).await.unwrap(),
        vec![some(b"v")]
    );
    drop(server);
}

/// The approvals' Redis backend keeps the same contract as the memory one (atomic open per
/// grant, one decision, expiry, listing), run against a real server; and two replicas see one
/// approval per grant.
#[tokio::test]
async fn approvals_keep_the_store_contract_in_redis() {
    use streammask::policy::approvals::store::contract;
    use streammask::policy::approvals::{ApprovalStore, RedisApprovals};
    let server = RedisServer::start();
    let url = format!("redis://127.0.0.1:{}", server.port);
    let a = RedisApprovals::new(&url, "streammask:approvals:test", TIMEOUT).unwrap();
    contract::check(&a, "1111111111111111111111111111").await;
    // A second replica opening the same grant gets the first one's approval.
    let b = RedisApprovals::new(&url, "streammask:approvals:test", TIMEOUT).unwrap();
    let now = now_ms();
    let first = contract::approval("apr_x1", "shared-grant", now, now + 60_000);
    let second = contract::approval("apr_x2", "shared-grant", now, now + 60_000);
    let (opened, created) = a.open("shared-grant", first, now).await.unwrap();
    assert!(created);
    let (seen, created) = b.open("shared-grant", second, now).await.unwrap();
    assert!(!created);
    assert_eq!(seen.id, opened.id);
    drop(server);
    let down = a.get("apr_x1").await;
    assert!(matches!(down, Err(StoreError::Unavailable(_))), "{down:?}");
}
