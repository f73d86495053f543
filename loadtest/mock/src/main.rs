//! `streammask-mock`: a mock of the Anthropic Messages API. It is the upstream for
//! streammask's integration tests and for the load benchmark that compares nginx pass-through
//! against the proxy.
//!
//! This binary does not link the `streammask` library. It has to keep building while `src/`
//! changes, and it must stay a neutral reference that shares no code with the proxy it tests.
//!
//! # Guarantees
//!
//! * **Wire format.** `POST /v1/messages` answers with the same JSON message shape and the same
//!   SSE grammar as the real API: `message_start`, `ping`, then for each block
//!   `content_block_start`, deltas, `content_block_stop`, then `message_delta` and
//!   `message_stop`. A script can add a mid-stream `event: error`. Every `data:` line is one
//!   complete JSON document, except under `kind: garbage`, which exists to break that. The
//!   `text_delta`/`thinking_delta` pieces of a block concatenate to the block's text. The
//!   `input_json_delta.partial_json` pieces concatenate to the tool input's JSON text, which
//!   parses back to the scripted input.
//! * **Legal but awkward framing.** Deltas are cut at random *character* boundaries (never
//!   inside a UTF-8 sequence). By default a streamed response goes out as many small writes
//!   (TCP_NODELAY, 1..=64 bytes). Those writes do not line up with event, line, chunk or
//!   header boundaries, so the proxy under test has to reassemble them.
//! * **Determinism.** With `--seed N`, ids, delta sizes and write sizes depend only on the seed
//!   and the API-request sequence number. `POST /_mock/reset` sets that number back to 0.
//! * **Observability.** Every API request (any path outside `/_mock/`) is counted. Unless
//!   `--no-record` is given, it is also recorded verbatim. Control-plane traffic is never counted
//!   or recorded, so tests can inspect the mock without disturbing what they measure.
//! * **Exact fault injection.** `disconnect_after_events` writes exactly N whole events and
//!   `disconnect_after_bytes` writes exactly N entity bytes. In both cases the socket is then
//!   closed without finishing the HTTP message. The one exception is a body shorter than N
//!   bytes: it is sent complete, and the connection is closed after it anyway.
//!
//! * **Cloud providers, on the same listener.** Amazon Bedrock runtime (`/model/{id}/invoke`,
//!   `invoke-with-response-stream`, `count-tokens`, `/inference-profiles`), AWS STS
//!   (`POST /`, `AssumeRoleWithWebIdentity`), Vertex AI (`/v1/projects/…:rawPredict`,
//!   `:streamRawPredict`, `count-tokens:rawPredict`) and a Google OAuth token endpoint
//!   (`POST /token`). Bedrock and Vertex answer with the same replies, scripts and faults as
//!   `/v1/messages`; Bedrock's stream is the same events in AWS event-stream frames. The mock
//!   is the judge of the proxy's upstream authentication: every Bedrock request must carry a
//!   valid SigV4 signature (verified from the AWS specification, not with an AWS SDK) or a
//!   configured Bedrock API key, and every Vertex request an unexpired token the mock issued.
//!   Refusals are shaped like the real services' and counted (`GET /_mock/clouds`), and each
//!   cloud request's record says how it authenticated.
//!
//! `loadtest/README.md` documents the control plane and the reply-script language.
//!
//! # Modules
//!
//! `server` accepts connections and counts and records requests. `http` reads requests.
//! `api`, `control` and `batches` answer them. `script` is the reply-script language.
//! `messages` and `sse` build the reply bodies. `response` writes them with the scripted
//! framing and faults. `rng` is the seeded randomness behind every id and cut. `clock` is
//! wall-clock time and date formats.
//!
//! The cloud mocks: `cloud` holds their configuration, issued credentials and counters.
//! `bedrock` answers Bedrock runtime, authenticating with `sigv4` (the verifier) and framing
//! streams with `eventstream`. `sts` issues web-identity credentials. `vertex` answers Vertex
//! AI with tokens from `oauth`, the token endpoint. `form` is percent-encoding and form bodies.

mod api;
mod batches;
mod bedrock;
mod clock;
mod cloud;
mod control;
mod eventstream;
mod form;
mod http;
mod messages;
mod oauth;
mod response;
mod rng;
mod script;
mod server;
mod sigv4;
mod sse;
mod sts;
#[cfg(test)]
mod testing;
mod vertex;

use std::collections::HashMap;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use tokio::net::TcpListener;

use crate::cloud::{Cloud, CloudConfig};
use crate::server::State;

#[derive(Parser, Debug)]
#[command(
    name = "streammask-mock",
    about = "Mock Anthropic Messages API upstream for streammask tests and load benchmarks"
)]
struct Cli {
    /// Address to listen on. Use port 0 for an ephemeral port; the bound address is printed as
    /// `listening on ADDR`.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Seed for ids, delta sizes and write splits. Random if omitted.
    #[arg(long)]
    seed: Option<u64>,
    /// Write the bound port (decimal, no newline) to this file once listening.
    #[arg(long)]
    port_file: Option<PathBuf>,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Do not keep received requests in memory (for load tests; /_mock/received stays empty).
    #[arg(long)]
    no_record: bool,
    /// Make `split_writes` default to off for streamed responses too (scripts can still turn
    /// it on). Benchmarks need this when they cannot inject an `x-mock-script` header.
    #[arg(long)]
    no_split_writes: bool,
    /// Static AWS credentials the Bedrock mock accepts for SigV4 (repeatable).
    #[arg(long = "aws-credentials", value_name = "AKID:SECRET")]
    aws_credentials: Vec<String>,
    /// A Bedrock API key accepted as `Authorization: Bearer KEY` (repeatable).
    #[arg(long = "bedrock-api-key", value_name = "KEY")]
    bedrock_api_keys: Vec<String>,
    /// The only web-identity token the mock STS accepts. Without it, any non-empty token.
    #[arg(long, value_name = "TOKEN")]
    sts_web_identity_token: Option<String>,
    /// Lifetime of the credentials the mock STS issues.
    #[arg(long, default_value_t = 3600, value_name = "N")]
    sts_ttl_secs: u64,
    /// PEM RSA public key: the OAuth token endpoint verifies the RS256 signature of JWT
    /// assertions with it. Without it, only the claims are checked.
    #[arg(long, value_name = "PATH")]
    oauth_public_key: Option<PathBuf>,
    /// `expires_in` of issued access tokens; Vertex refuses a token after it.
    #[arg(long, default_value_t = 3600, value_name = "N")]
    oauth_token_ttl_secs: u64,
}

impl Cli {
    fn cloud_config(&self) -> anyhow::Result<CloudConfig> {
        let mut aws_credentials = HashMap::new();
        for pair in &self.aws_credentials {
            let (akid, secret) = pair
                .split_once(':')
                .filter(|(a, s)| !a.is_empty() && !s.is_empty())
                .with_context(|| format!("--aws-credentials {pair:?}: expected AKID:SECRET"))?;
            aws_credentials.insert(akid.to_owned(), secret.to_owned());
        }
        let oauth_public_key = match &self.oauth_public_key {
            None => None,
            Some(path) => {
                let pem =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                Some(
                    jsonwebtoken::DecodingKey::from_rsa_pem(&pem)
                        .with_context(|| format!("{}: not a PEM RSA public key", path.display()))?,
                )
            }
        };
        Ok(CloudConfig {
            aws_credentials,
            bedrock_api_keys: self.bedrock_api_keys.clone(),
            sts_web_identity_token: self.sts_web_identity_token.clone(),
            sts_ttl_secs: self.sts_ttl_secs,
            oauth_public_key,
            oauth_token_ttl_secs: self.oauth_token_ttl_secs,
        })
    }
}

/// Connections the kernel may queue before `accept` (capped by `net.core.somaxconn`). Tokio's
/// `TcpListener::bind` asks for 1,024. A load test opening 500 streams per 0.5 s through a
/// proxy whose upstream is this mock saw 12 of 9,968 upstream requests reset before any
/// response byte (2026-12-05), most likely connections the kernel dropped from a full accept
/// queue while the mock's threads were busy; with 4,096 the same run had none.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(listen: &str) -> io::Result<TcpListener> {
    let addr = tokio::net::lookup_host(listen)
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cloud = Cloud::new(cli.cloud_config()?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
        .context("building tokio runtime")?;
    rt.block_on(async move {
        let listener = bind(&cli.listen)
            .await
            .with_context(|| format!("binding {}", cli.listen))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(
            State::new(
                addr,
                cli.seed.unwrap_or_else(rand::random),
                !cli.no_record,
                !cli.no_split_writes,
            )
            .with_cloud(cloud),
        );
        if let Some(path) = &cli.port_file {
            write_port_file(path, addr.port())?;
        }
        // Announce last: a harness that waits for this line can connect right away.
        println!("listening on {addr}");
        io::stdout().flush()?;
        server::serve(listener, state).await;
        Ok(())
    })
}

/// Writes to a temporary file and renames it, so a test polling for the file never reads it
/// half-written.
fn write_port_file(path: &Path, port: u16) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, port.to_string()).with_context(|| format!("writing {tmp:?}"))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
