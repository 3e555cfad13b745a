//! A recording REAPI proxy in front of a server, until interrupted: point a client (Bazel's
//! `--remote_executor`, recc, BuildStream) at the address it prints; each build's calls are
//! recorded as JSON lines in DIR.
//!
//! `cargo run -p sa-proxy --example record -- grpc://UPSTREAM:PORT DIR`

use sa_cas::GrpcConfig;
use sa_proxy::{Listen, Proxy, ProxyConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [upstream, dir] = args.as_slice() else {
        return Err("usage: record grpc://UPSTREAM:PORT DIR".into());
    };
    let config = ProxyConfig::new(GrpcConfig::new(upstream), dir.into());
    let proxy = Proxy::start(&Listen::parse("127.0.0.1:0")?, config)?;
    println!("recording into {dir}; point the client at {}", proxy.endpoint());
    loop {
        std::thread::park();
    }
}
