//! The proxy started in this process (start-up's own `build_state` and `proxy_service`, run
//! under a shutdown watch the test controls) in front of the mock Claude API (`streammask-mock`,
//! a separate workspace member started as a process): one streamed request with a secret goes
//! through, and the test reads what the upstream received, what the client received, the
//! proxy's metrics and its audit record.
//!
//! The mock binary is found next to the `streammask` binary under test; `cargo test
//! --workspace` (what CI runs) builds it first.

use pingora::server::configuration::ServerConf;
use pingora::services::Service as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use streammask::app::server::{build_state, proxy_service};
use streammask::config::FileConfig;

/// The mock upstream, killed when dropped.
struct Mock {
    child: Child,
    addr: SocketAddr,
}

impl Mock {
    fn start(dir: &Path) -> Mock {
        let binary = Path::new(env!("CARGO_BIN_EXE_streammask")).with_file_name("streammask-mock");
        assert!(
            binary.exists(),
            "{} is missing: build the workspace first (cargo build --workspace)",
            binary.display()
        );
        let port_file = dir.join("mock.port");
        let child = Command::new(&binary)
            .args(["--seed", "11", "--port-file"])
            .arg(&port_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the mock starts");
        let port = wait_for(Duration::from_secs(20), || {
            std::fs::read_to_string(&port_file)
                .ok()?
                .parse::<u16>()
                .ok()
        })
        .expect("the mock writes its port");
        Mock {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some(value) = probe() {
            return Some(value);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One HTTP/1.1 exchange with `Connection: close`: the status and the (de-chunked) body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         anthropic-version: 2023-06-01\r\nx-api-key: sk-test-caller\r\n\
         x-claude-code-session-id: in-process-1\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the response");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, rest) = text.split_once("\r\n\r\n").expect("a header block");
    let status = head[9..12].parse().expect("a status code");
    let chunked = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    (
        status,
        if chunked {
            dechunk(rest)
        } else {
            rest.to_string()
        },
    )
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return body;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

/// The text the client reads from a Messages stream: its `text_delta` pieces joined.
fn streamed_text(sse: &str) -> String {
    sse.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<serde_json::Value>(data).ok())
        .filter(|event| event["delta"]["type"] == "text_delta")
        .filter_map(|event| event["delta"]["text"].as_str().map(str::to_string))
        .collect()
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sm-in-process-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_streamed_secret_is_masked_both_ways_and_recorded_without_it() {
    let dir = temp_dir();
    let mock = Mock::start(&dir);
    std::fs::write(
        dir.join("placeholder.key"),
        "in-process-test-key-0123456789",
    )
    .unwrap();
    let (listen, admin) = (free_port(), free_port());
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{listen}"
admin = "127.0.0.1:{admin}"
[upstream]
url = "http://{mock}"
[masking]
placeholder_key_file = "{key}"
[audit]
sink = "file"
path = "{audit}"
"#,
        mock = mock.addr,
        key = dir.join("placeholder.key").display(),
        audit = dir.join("audit.jsonl").display(),
    );
    let config = FileConfig::parse("in-process.toml", &config)
        .and_then(FileConfig::validate)
        .expect("the config is valid");
    let state = Arc::new(build_state(config).expect("start-up"));
    let live = Arc::new(streammask::proxy::LiveState::new(Arc::clone(&state)));
    let mut service = proxy_service(&Arc::new(ServerConf::default()), live, None);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (shutdown, watch) = tokio::sync::watch::channel(false);
    let served = runtime.spawn(async move { service.start_service(None, watch, 1).await });
    let proxy = SocketAddr::from(([127, 0, 0, 1], listen));
    wait_for(Duration::from_secs(20), || TcpStream::connect(proxy).ok())
        .expect("the proxy listens");

    let secret = format!("ghp_{}", "A1b2C3d4".repeat(4) + "E5f6");
    let request = serde_json::json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "stream": true,
        "messages": [{"role": "user", "content": format!("deploy with {secret} please")}],
    })
    .to_string();
    // The model answers with the secret itself, split across deltas by the mock.
    let script = serde_json::json!([{"kind": "text", "text": format!("use {secret} now")}]);
    let (queued, _) = http(mock.addr, "POST", "/_mock/script", &script.to_string());
    assert_eq!(queued, 200);
    let (status, sse) = http(proxy, "POST", "/v1/messages?beta=true", &request);
    assert_eq!(status, 200, "{sse}");
    assert!(sse.contains("event: message_stop"), "{sse}");
    assert!(
        !sse.contains(&secret),
        "the secret reached the client: {sse}"
    );
    let text = streamed_text(&sse);
    assert!(
        text.starts_with("use [MASKED:github-pat-classic:"),
        "{text}"
    );
    assert!(text.ends_with("] now"), "{text}");

    // The upstream got the masked request, with the query string as the client sent it.
    let (_, received) = http(mock.addr, "GET", "/_mock/received", "");
    let received: serde_json::Value = serde_json::from_str(&received).unwrap();
    let last = received
        .as_array()
        .and_then(|r| r.last())
        .expect("a request");
    assert_eq!(last["path"], "/v1/messages");
    assert_eq!(last["query"], "beta=true");
    let upstream_body = last["body"].as_str().unwrap_or_default();
    assert!(!upstream_body.contains(&secret), "{upstream_body}");
    assert!(
        upstream_body.contains("[MASKED:github-pat-classic:"),
        "{last}"
    );

    // Metrics and audit are written once the request has been logged.
    let metrics = state.metrics.as_ref().expect("metrics are on");
    let counted = r#"streammask_requests_total{endpoint="messages",outcome="masked",provider="anthropic",status_class="2xx"} 1"#;
    wait_for(Duration::from_secs(10), || {
        let text = String::from_utf8(metrics.render()).unwrap();
        text.contains(counted).then_some(())
    })
    .expect("the request is counted");
    let audit = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(dir.join("audit.jsonl"))
            .ok()
            .filter(|text| text.ends_with('\n'))
    })
    .expect("the audit record is written");
    assert!(!audit.contains(&secret), "{audit}");
    let record: serde_json::Value = serde_json::from_str(audit.trim()).unwrap();
    assert_eq!(record["session_id"], "in-process-1");
    assert_eq!(record["decision"], "masked");
    let directions: Vec<&str> = record["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["direction"].as_str().unwrap())
        .collect();
    assert_eq!(directions, ["request", "response"], "{record}");
    assert_eq!(record["findings"][0]["preview"], "ghp_…(40 chars)");

    shutdown.send(true).unwrap();
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), served).await })
        .expect("the listener stops on shutdown")
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
