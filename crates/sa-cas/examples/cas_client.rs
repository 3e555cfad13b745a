//! sa-cas alone as a REAPI client: stores a directory as a Merkle tree, fetches it back, and
//! lists its files with their digests.
//!
//! `cargo run -p sa-cas --example cas_client -- [grpc://HOST:PORT] DIR`: against a REAPI server
//! (buildbox-casd: `buildbox-casd --bind=127.0.0.1:50051 /tmp/casd`), or, without an endpoint,
//! a local store laid out like casd's in a temporary directory.

use std::path::Path;

use sa_cas::merkle::{self, TreeLimits};
use sa_cas::{Cas, CasError, GrpcCas, GrpcConfig, LocalCas, LocalCasConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (endpoint, dir) = match args.as_slice() {
        [dir] => (None, dir),
        [endpoint, dir] => (Some(endpoint), dir),
        _ => return Err("usage: cas_client [grpc://HOST:PORT] DIR".into()),
    };
    match endpoint {
        Some(endpoint) => round_trip(&GrpcCas::connect(GrpcConfig::new(endpoint))?, dir)?,
        None => {
            let store = tempfile::tempdir()?;
            round_trip(&LocalCas::open(store.path(), LocalCasConfig::default())?, dir)?
        }
    }
    Ok(())
}

fn round_trip(cas: &impl Cas, dir: &str) -> Result<(), CasError> {
    let limits = TreeLimits::default();
    let root = merkle::ingest(cas, Path::new(dir), &limits)?;
    println!("root {root}");
    let tree = merkle::fetch_tree(cas, &root, &limits)?;
    for file in tree.files(&root)? {
        println!("{} {}", file.digest, file.path);
    }
    println!("{} directories", tree.len());
    Ok(())
}
