//! A recording REAPI proxy in front of a server: point a client (Bazel's
//! `--remote_executor`, recc, BuildStream) at the address it prints; each build's calls are
//! recorded as JSON lines in DIR.
//!
//! `cargo run -p sa-proxy --example record -- grpc://UPSTREAM:PORT DIR [--once]`: runs until
//! interrupted, or with `--once` stores a blob and reads it back through the proxy, then exits
//! (the test command runs it so against a real buildbox-casd).

use sa_cas::{Cas, GrpcCas, GrpcConfig};
use sa_proxy::{Listen, Proxy, ProxyConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (upstream, dir, once) = match args.as_slice() {
        [upstream, dir] => (upstream, dir, false),
        [upstream, dir, flag] if flag == "--once" => (upstream, dir, true),
        _ => return Err("usage: record grpc://UPSTREAM:PORT DIR [--once]".into()),
    };
    let config = ProxyConfig::new(GrpcConfig::new(upstream), dir.into());
    let proxy = Proxy::start(&Listen::parse("127.0.0.1:0")?, config)?;
    println!("recording into {dir}; point the client at {}", proxy.endpoint());
    if once {
        let client = GrpcCas::connect(GrpcConfig::new(proxy.endpoint()))?;
        let digest = client.write_blob("through the proxy\n".into())?;
        let back = client.read_blob(&digest)?;
        println!("stored and read back {digest} ({} bytes) through the proxy", back.len());
        return Ok(());
    }
    loop {
        std::thread::park();
    }
}
