//! `streammask-bench-pingora`: a plain Pingora reverse proxy that forwards everything to one
//! upstream and inspects nothing. It exists only for `loadtest/bench_proxy.py`: set beside nginx
//! and streammask in front of the same mock, it shows how much of streammask's cost is Pingora's
//! own forwarding path and how much is masking.
//!
//! It is configured like streammask's default deployment so the comparison is fair: the same
//! Pingora version and server threads, the same allocator, HTTP/1.1 upstream connections pooled
//! with the same timeouts, and no downstream modules.
//!
//! Usage: `streammask-bench-pingora --listen 127.0.0.1:8081 --upstream 127.0.0.1:8000
//! [--threads 2]`. It serves until killed.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use async_trait::async_trait;
use clap::Parser;
use pingora::modules::http::HttpModules;
use pingora::protocols::ALPN;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "Plain Pingora pass-through proxy (benchmark reference)")]
struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Upstream address (plain HTTP/1.1).
    #[arg(long)]
    upstream: SocketAddr,
    /// Pingora server threads (streammask's default is 2).
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

struct Passthrough {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();

    fn new_ctx(&self) {}

    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        // The same peer options as streammask's upstream (src/proxy/upstream.rs, Upstream::peer).
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_secs(10));
        peer.options.read_timeout = Some(Duration::from_secs(600));
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        peer.options.alpn = ALPN::H1;
        Ok(Box::new(peer))
    }
}

fn main() {
    let args = Args::parse();
    let conf = ServerConf {
        threads: args.threads,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Passthrough {
            upstream: args.upstream,
        },
        "pingora pass-through",
    );
    service.add_tcp(&args.listen.to_string());
    server.add_service(service);
    eprintln!(
        "streammask-bench-pingora: listening on {}, upstream {}",
        args.listen, args.upstream
    );
    server.run_forever();
}
