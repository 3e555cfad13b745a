//! `sa-workload --profile small|medium|large|xlarge --out DIR [--seed N]`: writes the synthetic
//! two-build workload (a local store, `build1.json`, `build2.json`, `truth.json`,
//! `workload.json`) into DIR, which must not exist. Run it as `cargo xtask workload`.
//! `--edit` picks what changes between the builds: `many` (the default: most actions change),
//! `app-source` or `lib-header` (one file).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use sa_benches::workload::{self, Edit, Profile};

const USAGE: &str = "sa-workload --profile small|medium|large|xlarge --out DIR [--seed N] \
                     [--edit many|app-source|lib-header]";
use sa_cas::{LocalCas, LocalCasConfig};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut profile, mut out, mut seed) = (None, None, 1u64);
    let mut edit = Edit::Many;
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).with_context(|| format!("{} needs a value", args[i]))?;
        match args[i].as_str() {
            "--profile" => {
                profile = Some(Profile::named(value).with_context(|| {
                    format!("--profile {value:?}: expected small, medium or large")
                })?)
            }
            "--out" => out = Some(PathBuf::from(value)),
            "--seed" => seed = value.parse().with_context(|| format!("--seed {value:?}"))?,
            "--edit" => {
                edit = Edit::named(value).with_context(|| {
                    format!("--edit {value:?}: expected many, app-source or lib-header")
                })?
            }
            other => bail!("unknown argument {other:?}; usage: {USAGE}"),
        }
        i += 2;
    }
    let (Some(profile), Some(out)) = (profile, out) else {
        bail!("usage: {USAGE}");
    };
    if out.exists() {
        bail!("{} exists: the workload goes into a new directory", out.display());
    }
    let start = std::time::Instant::now();
    let store = LocalCas::open(out.join("store"), LocalCasConfig::default())?;
    let generated = workload::generate_edit(&store, &profile, seed, edit)?;
    workload::write_files(&generated, &out)?;
    eprintln!(
        "workload {} written to {} in {:.1}s",
        profile.name,
        out.display(),
        start.elapsed().as_secs_f64()
    );
    println!("{}", generated.stats);
    Ok(())
}
