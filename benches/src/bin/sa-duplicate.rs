//! `sa-duplicate --files N`: generate and instantiate over one tree of N identical files and
//! one of N distinct files (`workload::duplicate_case`, in memory), for the benchmark report's
//! duplicate-content scaling. Prints one JSON line with the median of three runs of each.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use sa_benches::workload;
use sa_cas::{DigestFunction, MemoryCas};
use sa_generator::GenerateConfig;
use sa_instantiator::{InstantiateConfig, Instantiator};
use serde_json::json;

fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let files: usize = match args.as_slice() {
        [flag, n] if flag == "--files" => n.parse().with_context(|| format!("--files {n:?}"))?,
        _ => bail!("usage: sa-duplicate --files N"),
    };
    let mut out = serde_json::Map::new();
    out.insert("files".into(), json!(files));
    for (name, identical) in [("identical", true), ("distinct", false)] {
        let cas = MemoryCas::new(DigestFunction::Sha256);
        let case = workload::duplicate_case(&cas, files, identical)?;
        let config = GenerateConfig::default();
        let mut generate = Vec::new();
        let mut generated = None;
        for _ in 0..3 {
            let start = Instant::now();
            generated = Some(sa_generator::generate(&cas, &case.input, &config)?);
            generate.push(start.elapsed().as_secs_f64());
        }
        let generated = generated.context("generated")?;
        let spec = generated.digest;
        let mut instantiate = Vec::new();
        for _ in 0..3 {
            let start = Instant::now();
            let states = vec![case.state(&generated)];
            let instantiator = Instantiator::new(&cas, states, InstantiateConfig::default())?;
            instantiator.instantiate_element("py.bst", &spec)?;
            instantiate.push(start.elapsed().as_secs_f64());
        }
        out.insert(
            name.into(),
            json!({"generate": median(generate), "instantiate": median(instantiate)}),
        );
    }
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}
