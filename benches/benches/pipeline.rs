//! The pipeline's hot paths on the synthetic workload (in memory): digest index build,
//! generate, instantiate with cold and warm memo, one-file edits through the actions index,
//! hashing, ingest, duplicate content. Input sizes are in the names.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sa_benches::workload::element;
use sa_benches::workload::{self, Profile};
use sa_cas::merkle::{self, TreeLimits};
use sa_cas::{DigestFunction, MemoryCas};
use sa_generator::graph::Graph;
use sa_generator::model::{Origin, OriginKind};
use sa_generator::{GenerateConfig, GenerateInput, OriginIndex};
use sa_instantiator::{InstantiateConfig, Instantiator};

const F: DigestFunction = DigestFunction::Sha256;

struct Fixture {
    cas: MemoryCas,
    workload: workload::Workload,
}

fn fixture(profile: &str) -> Fixture {
    let cas = MemoryCas::new(F);
    let profile = Profile::named(profile).expect("a known profile");
    let workload = workload::generate(&cas, &profile, 1).expect("the workload generates");
    Fixture { cas, workload }
}

fn app_input(graph: &Graph) -> GenerateInput {
    workload::generate_input(graph, "app.bst")
}

fn bench_index(c: &mut Criterion) {
    let fx = fixture("medium");
    let g = &fx.workload.build1;
    let mut entries = Vec::new();
    for (name, key, kind) in [
        ("app.bst", "sources", OriginKind::Source),
        ("lib.bst", "sources", OriginKind::Source),
        ("lib.bst", "artifact", OriginKind::Artifact),
        ("base.bst", "artifact", OriginKind::Artifact),
    ] {
        let e = element(g, name);
        let root = if key == "artifact" { e.artifact } else { e.sources }.expect("a tree");
        let forest = merkle::fetch_tree(&fx.cas, &root, &TreeLimits::default()).expect("fetch");
        for file in forest.files(&root).expect("files") {
            let origin = Origin { kind, element: name.into(), path: file.path, producer: None };
            entries.push((file.digest, origin));
        }
    }
    c.bench_function(&format!("index_build/origins={}", entries.len()), |b| {
        b.iter(|| OriginIndex::build(black_box(entries.clone())))
    });
}

fn bench_generate_instantiate(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(10);
    for profile in ["small", "medium"] {
        let fx = fixture(profile);
        let input = app_input(&fx.workload.build1);
        let actions = input.subactions.len();
        let config = GenerateConfig::default();
        group.bench_function(
            BenchmarkId::new("generate", format!("{profile}/actions={actions}")),
            |b| b.iter(|| sa_generator::generate(&fx.cas, &input, &config).expect("generate")),
        );
        // Specs of build 1 for every element, then build 2's states.
        let mut specs = std::collections::HashMap::new();
        let mut indexes = std::collections::HashMap::new();
        for name in workload::ELEMENTS {
            let input = workload::generate_input(&fx.workload.build1, name);
            let generated = sa_generator::generate(&fx.cas, &input, &config).expect("generate");
            specs.insert(name, generated.digest);
            indexes.extend(generated.index.map(|index| (name, index)));
        }
        // As `sa instantiate` runs: the graph names each index `sa generate` stored.
        let states = || {
            workload::states_with_indexes(
                &fx.workload.build1,
                &fx.workload.build2,
                &specs,
                &indexes,
            )
        };
        let config = InstantiateConfig::default();
        group.bench_function(
            BenchmarkId::new("instantiate_cold", format!("{profile}/actions={actions}")),
            |b| {
                b.iter(|| {
                    let instantiator = Instantiator::new(&fx.cas, states(), config).expect("new");
                    instantiator
                        .instantiate_element("app.bst", &specs["app.bst"])
                        .expect("instantiate")
                })
            },
        );
        let warm = Instantiator::new(&fx.cas, states(), config).expect("new");
        warm.instantiate_element("app.bst", &specs["app.bst"]).expect("instantiate");
        group.bench_function(
            BenchmarkId::new("instantiate_warm", format!("{profile}/actions={actions}")),
            |b| {
                b.iter(|| {
                    warm.instantiate_element("app.bst", &specs["app.bst"]).expect("instantiate")
                })
            },
        );
    }
    group.finish();
}

fn bench_hashing(c: &mut Criterion) {
    let mut group = c.benchmark_group("hash");
    for size in [4 << 10, 4 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        group.throughput(Throughput::Bytes(size as u64));
        for function in [DigestFunction::Sha256, DigestFunction::Blake3] {
            group.bench_function(BenchmarkId::new(function.name(), format!("bytes={size}")), |b| {
                b.iter(|| function.hash_bytes(black_box(&data)))
            });
        }
    }
    group.finish();
}

fn bench_ingest(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let files = 2000;
    for i in 0..files {
        let sub = dir.path().join(format!("d{:02}", i % 40));
        std::fs::create_dir_all(&sub).expect("mkdir");
        std::fs::write(sub.join(format!("f{i:05}.h")), format!("/* {i} */\n").repeat(20))
            .expect("write");
    }
    let mut group = c.benchmark_group("ingest");
    group.sample_size(20);
    group.bench_function(format!("files={files}"), |b| {
        b.iter(|| {
            let cas = MemoryCas::new(F);
            merkle::ingest(&cas, dir.path(), &TreeLimits::default()).expect("ingest")
        })
    });
    group.finish();
}

/// Generate and instantiate over 100,000 files of one content against 100,000 distinct ones:
/// attribution of N occurrences of one digest must stay O(N log N), so the ratio stays small.
fn bench_duplicate_content(c: &mut Criterion) {
    let mut group = c.benchmark_group("duplicate_content");
    group.sample_size(10);
    // SA_BENCH_DUP_FILES for a quick look at another size.
    let files =
        std::env::var("SA_BENCH_DUP_FILES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    for (name, identical) in [("identical", true), ("distinct", false)] {
        let cas = MemoryCas::new(F);
        let case = workload::duplicate_case(&cas, files, identical).expect("the case");
        let config = GenerateConfig::default();
        group.bench_function(BenchmarkId::new("generate", format!("{name}/files={files}")), |b| {
            b.iter(|| sa_generator::generate(&cas, &case.input, &config).expect("generate"))
        });
        let generated = sa_generator::generate(&cas, &case.input, &config).expect("generate");
        let spec = generated.digest;
        let states = || vec![case.state(&generated)];
        group.bench_function(
            BenchmarkId::new("instantiate", format!("{name}/files={files}")),
            |b| {
                b.iter(|| {
                    let instantiator =
                        Instantiator::new(&cas, states(), InstantiateConfig::default())
                            .expect("new");
                    instantiator.instantiate_element("py.bst", &spec).expect("instantiate")
                })
            },
        );
    }
    group.finish();
}

/// Instantiating a one-file edit (medium workload) through the actions index and with the blob
/// decoded, against the many-file edit: what an edit costs in proportion to what it changes.
fn bench_instantiate_edit(c: &mut Criterion) {
    let mut group = c.benchmark_group("instantiate_edit");
    group.sample_size(10);
    let profile = Profile::named("medium").expect("a known profile");
    for (name, edit) in [
        ("many", workload::Edit::Many),
        ("app-source", workload::Edit::AppSource),
        ("lib-header", workload::Edit::LibHeader),
    ] {
        let cas = MemoryCas::new(F);
        let w = workload::generate_edit(&cas, &profile, 1, edit).expect("the workload generates");
        let mut specs = std::collections::HashMap::new();
        let mut indexes = std::collections::HashMap::new();
        for element in workload::ELEMENTS {
            let input = workload::generate_input(&w.build1, element);
            let generated =
                sa_generator::generate(&cas, &input, &GenerateConfig::default()).expect("generate");
            specs.insert(element, generated.digest);
            indexes.extend(generated.index.map(|index| (element, index)));
        }
        let actions = w.truth.len();
        let changed = w.truth.iter().filter(|(a, b)| a != b).count();
        for index in [true, false] {
            let config = InstantiateConfig { index, ..Default::default() };
            let id = format!("{name}/actions={actions}/changed={changed}");
            let label = if index { "indexed" } else { "blob_decoded" };
            group.bench_function(BenchmarkId::new(label, id), |b| {
                b.iter(|| {
                    let states =
                        workload::states_with_indexes(&w.build1, &w.build2, &specs, &indexes);
                    let instantiator = Instantiator::new(&cas, states, config).expect("new");
                    instantiator.instantiate_element("app.bst", &specs["app.bst"]).expect("ok")
                })
            });
        }
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_instantiate_edit,
    bench_index,
    bench_generate_instantiate,
    bench_hashing,
    bench_ingest,
    bench_duplicate_content
);
criterion_main!(benches);
