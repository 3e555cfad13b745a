//! A deterministic synthetic two-build workload, shaped like a recc-built C project.
//!
//! Three elements: `base.bst` (a toolchain with thousands of headers, no compile steps),
//! `lib.bst` (headers and sources; its artifact installs the headers verbatim plus a derived
//! archive; its own compile steps) and `app.bst` (N compile steps). An app compile step's input
//! root holds its source, a per-directory shared and a per-file subset of the base, library and
//! application headers, as recc builds them: dependencies' artifacts staged under `usr/`, the
//! element's sources under `build/`. Between the builds some app sources, app headers and
//! library headers change, and one of two identical files (`twin_a.h`, `twin_b.h`). The true
//! action digests of build 2 are computed from the edited trees, so a prediction can be checked.
//!
//! Everything depends only on the profile and the seed.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use rayon::prelude::*;
use sa_cas::merkle::{self, DirectoryBuilder};
use sa_cas::{Blob, Cas, CasError, Digest, DigestFunction};
use sa_generator::graph::{Element, Graph};
use sa_proto::reapi::{Action, Command};
use serde_json::{Value, json};

/// The size of a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Profile {
    /// `small`, `medium`, `large` or `xlarge`.
    pub name: &'static str,
    /// Base header directories and headers in each.
    pub base_dirs: usize,
    /// Headers per base directory.
    pub base_per_dir: usize,
    /// Library headers.
    pub lib_headers: usize,
    /// Library sources (its compile steps).
    pub lib_sources: usize,
    /// Application source directories.
    pub app_dirs: usize,
    /// Sources (compile steps) per application directory.
    pub app_sources_per_dir: usize,
    /// Headers per application directory.
    pub app_headers_per_dir: usize,
    /// Common application headers.
    pub app_common: usize,
    /// Base headers every step of a directory includes.
    pub base_shared: usize,
    /// Base directories a step picks its own extra headers from, and how many from each.
    pub base_own_dirs: usize,
    /// Extra base headers per picked directory.
    pub base_own_per_dir: usize,
    /// Library headers shared per directory, and per step.
    pub lib_shared: usize,
    /// Library headers per step.
    pub lib_own: usize,
}

impl Profile {
    /// The profile called `name`.
    pub fn named(name: &str) -> Option<Profile> {
        let small = Profile {
            name: "small",
            base_dirs: 4,
            base_per_dir: 20,
            lib_headers: 20,
            lib_sources: 4,
            app_dirs: 3,
            app_sources_per_dir: 10,
            app_headers_per_dir: 8,
            app_common: 10,
            base_shared: 30,
            base_own_dirs: 1,
            base_own_per_dir: 10,
            lib_shared: 8,
            lib_own: 4,
        };
        match name {
            "small" => Some(small),
            "medium" => Some(Profile {
                name: "medium",
                base_dirs: 8,
                base_per_dir: 100,
                lib_headers: 200,
                lib_sources: 20,
                app_dirs: 10,
                app_sources_per_dir: 60,
                app_headers_per_dir: 20,
                app_common: 40,
                base_shared: 200,
                base_own_dirs: 2,
                base_own_per_dir: 50,
                lib_shared: 40,
                lib_own: 20,
            }),
            "large" => Some(Profile {
                name: "large",
                base_dirs: 16,
                base_per_dir: 250,
                lib_headers: 600,
                lib_sources: 60,
                app_dirs: 60,
                app_sources_per_dir: 100,
                app_headers_per_dir: 40,
                app_common: 100,
                base_shared: 500,
                base_own_dirs: 4,
                base_own_per_dir: 75,
                lib_shared: 100,
                lib_own: 50,
            }),
            // Ten times large: ten times the application (60,060 actions, ~60M references).
            "xlarge" => Some(Profile { name: "xlarge", app_dirs: 600, ..Profile::named("large")? }),
            _ => None,
        }
    }
}

/// What [`generate`] made.
#[derive(Clone, Debug)]
pub struct Workload {
    /// The build graph of build 1 (the format `sa` reads), with subactions.
    pub build1: Graph,
    /// The build graph of build 2 before it runs: sources, keys, `base.bst` and `lib.bst` built.
    pub build2: Graph,
    /// Per recorded subaction of build 1, the action build 2 really runs.
    pub truth: Vec<(Digest, Digest)>,
    /// Counts.
    pub stats: Value,
}

/// splitmix64: small, fast, and the same everywhere.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(parts: &[u64]) -> Rng {
        let mut rng = Rng(0x5eed_5eed_5eed_5eed);
        for part in parts {
            rng.0 ^= part.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            rng.next();
        }
        rng
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `k` distinct numbers below `n`, sorted.
    fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut pool: Vec<usize> = (0..n).collect();
        let k = k.min(n);
        for i in 0..k {
            let j = i + (self.next() % (n - i) as u64) as usize;
            pool.swap(i, j);
        }
        pool.truncate(k);
        pool.sort_unstable();
        pool
    }
}

/// The content of a file: deterministic, 100 to 2,000 bytes, different per version.
fn content(path: &str, version: u32) -> Bytes {
    let mut rng = Rng::new(&[path.len() as u64, path.bytes().map(u64::from).sum()]);
    let size = 100 + (rng.next() % 1900) as usize;
    let mut text = format!("/* {path} v{version} */\n");
    while text.len() < size {
        text.push_str(&format!("#define X_{:x} {}\n", rng.next() & 0xffff, rng.next() % 1000));
    }
    Bytes::from(text)
}

/// A set of files by path, with a version per build.
struct Files {
    by_path: BTreeMap<String, [Digest; 2]>,
    blobs: Vec<Blob>,
    edit: Edit,
}

impl Files {
    /// Adds the file at `path`; `edited` says whether [`Edit::Many`] changes it.
    fn add(&mut self, function: DigestFunction, path: &str, edited: bool) {
        let edited = self.edit.edits(path, edited);
        let mut digests = [function.empty_digest(); 2];
        for build in [1, 2] {
            let version = if build == 2 && edited { 2 } else { 1 };
            let blob = Blob::new(function, content(path, version));
            digests[build - 1] = *blob.digest();
            self.blobs.push(blob);
        }
        self.by_path.insert(path.to_owned(), digests);
    }

    fn get(&self, path: &str, build: usize) -> Digest {
        self.by_path[path][build - 1]
    }
}

/// Encodes a tree of `(path, digest)` files; appends every Directory blob to `out`.
fn encode_tree(
    function: DigestFunction,
    files: &[(String, Digest)],
    out: &mut Vec<Blob>,
) -> Result<Digest, CasError> {
    #[derive(Default)]
    struct Node<'a> {
        files: Vec<(&'a str, Digest)>,
        dirs: BTreeMap<&'a str, Node<'a>>,
    }
    fn encode(node: &Node<'_>, f: DigestFunction, out: &mut Vec<Blob>) -> Result<Digest, CasError> {
        let mut builder = DirectoryBuilder::new();
        for (name, child) in &node.dirs {
            builder = builder.directory(name, &encode(child, f, out)?);
        }
        for (name, digest) in &node.files {
            builder = builder.file(name, digest, false);
        }
        let blob = merkle::directory_blob(f, &builder.build(f)?);
        let digest = *blob.digest();
        out.push(blob);
        Ok(digest)
    }
    let mut root = Node::default();
    for (path, digest) in files {
        let mut node = &mut root;
        let mut parts = path.split('/').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                node.files.push((part, *digest));
            } else {
                node = node.dirs.entry(part).or_default();
            }
        }
    }
    encode(&root, function, out)
}

/// One compile step: its source and the files of its input root, by path in the input root
/// and path in the file set they come from.
struct Step {
    source: String,
    inputs: Vec<(String, String)>,
}

fn compile_action(
    function: DigestFunction,
    step: &Step,
    files: &Files,
    build: usize,
    out: &mut Vec<Blob>,
) -> Result<Digest, CasError> {
    let mut tree: Vec<(String, Digest)> =
        step.inputs.iter().map(|(at, from)| (at.clone(), files.get(from, build))).collect();
    tree.sort();
    let root = encode_tree(function, &tree, out)?;
    let object = step.source.replace(".c", ".o");
    let command = Command {
        arguments: vec![
            "gcc".into(),
            "-c".into(),
            step.source.clone(),
            "-o".into(),
            object.clone(),
            "-Iinclude".into(),
            "-I../usr/include".into(),
        ],
        output_paths: vec![object],
        working_directory: "build".into(),
        ..Default::default()
    };
    let command = Blob::from_message(function, &command);
    let action = Action {
        command_digest: Some(command.digest().to_proto()),
        input_root_digest: Some(root.to_proto()),
        ..Default::default()
    };
    let action = Blob::from_message(function, &action);
    let digest = *action.digest();
    out.push(command);
    out.push(action);
    Ok(digest)
}

/// Writes the blobs not written yet; returns how many were new.
fn write_new(
    store: &(impl Cas + ?Sized),
    written: &mut HashSet<Digest>,
    blobs: Vec<Blob>,
) -> Result<usize, CasError> {
    let fresh: Vec<Blob> = blobs.into_iter().filter(|b| written.insert(*b.digest())).collect();
    let count = fresh.len();
    let ranges =
        merkle::batch_ranges(fresh.iter().map(|b| b.digest().size()), store.max_batch_bytes());
    ranges.par_iter().try_for_each(|range| store.write_blobs(&fresh[range.clone()]))?;
    Ok(count)
}

/// What changes between the two builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edit {
    /// Every 50th application source and header, every 100th library header, every 10th
    /// library source, and `twin_b.h`: most actions change.
    Many,
    /// One application source (`app/src/d00/f0003.c`): one action changes; the library is not
    /// rebuilt.
    AppSource,
    /// One library header (`lib/include/lib/l007.h`): the library is rebuilt, and the
    /// application's actions that include the header change.
    LibHeader,
}

impl Edit {
    /// The edit called `name` (`many`, `app-source`, `lib-header`).
    pub fn named(name: &str) -> Option<Edit> {
        match name {
            "many" => Some(Edit::Many),
            "app-source" => Some(Edit::AppSource),
            "lib-header" => Some(Edit::LibHeader),
            _ => None,
        }
    }

    /// Whether the file at `path` changes, given the rule of [`Edit::Many`].
    fn edits(self, path: &str, many: bool) -> bool {
        match self {
            Edit::Many => many,
            Edit::AppSource => path == "app/src/d00/f0003.c",
            Edit::LibHeader => path == "lib/include/lib/l007.h",
        }
    }

    /// Whether the library is rebuilt.
    fn rebuilds_lib(self) -> bool {
        self != Edit::AppSource
    }
}

/// Generates the workload into `store`.
pub fn generate(
    store: &(impl Cas + ?Sized),
    profile: &Profile,
    seed: u64,
) -> Result<Workload, CasError> {
    generate_edit(store, profile, seed, Edit::Many)
}

/// Generates the workload with `edit` between the builds into `store`.
pub fn generate_edit(
    store: &(impl Cas + ?Sized),
    profile: &Profile,
    seed: u64,
    edit: Edit,
) -> Result<Workload, CasError> {
    let f = store.digest_function();
    let p = profile;
    let mut files = source_files(f, p, edit);
    let mut written = HashSet::new();
    let file_blobs = std::mem::take(&mut files.blobs);
    write_new(store, &mut written, file_blobs)?;
    let (trees, dir_blobs) = element_trees(f, p, &files, edit)?;
    write_new(store, &mut written, dir_blobs)?;
    let steps = compile_steps(p, seed);
    let encoded = encode_actions(store, &steps, &files, &mut written)?;
    let (build1, build2) = graphs(f, &trees, &steps, &encoded.actions, edit);
    let actions = encoded.actions;
    let changed = actions.iter().filter(|a| a[0] != a[1]).count();
    let stats = json!({
        "profile": p.name,
        "seed": seed,
        "actions": actions.len(),
        "actions_changed": changed,
        "file_references": encoded.file_refs,
        "distinct_input_directories_build1": encoded.distinct_dirs[0],
        "files": files.by_path.len(),
    });
    let truth = actions.iter().map(|a| (a[0], a[1])).collect();
    Ok(Workload { build1, build2, truth, stats })
}

/// Every source file of both builds: the base (unchanged between them), the library (every
/// 100th header and every 10th source change) and the application (every 50th source and
/// header change; twin_b.h changes, its byte-identical twin twin_a.h does not).
fn source_files(f: DigestFunction, p: &Profile, edit: Edit) -> Files {
    let mut files = Files { by_path: BTreeMap::new(), blobs: Vec::new(), edit };
    // Base: unchanged between the builds.
    for d in 0..p.base_dirs {
        for h in 0..p.base_per_dir {
            files.add(f, &format!("base/include/base/d{d:02}/h{h:04}.h"), false);
        }
    }
    // Library: every 100th header and every 10th source change.
    for h in 0..p.lib_headers {
        files.add(f, &format!("lib/include/lib/l{h:03}.h"), h % 100 == 7);
    }
    for s in 0..p.lib_sources {
        files.add(f, &format!("lib/src/l{s:03}.c"), s % 10 == 3);
    }
    // Application: every 50th source and header change; twin_b.h changes, twin_a.h does not.
    for d in 0..p.app_dirs {
        for s in 0..p.app_sources_per_dir {
            files.add(f, &format!("app/src/d{d:02}/f{s:04}.c"), (d * 7 + s) % 50 == 11);
        }
        for h in 0..p.app_headers_per_dir {
            files.add(f, &format!("app/src/d{d:02}/h{h:02}.h"), (d * 3 + h) % 50 == 5);
        }
    }
    for c in 0..p.app_common {
        files.add(f, &format!("app/include/common/c{c:03}.h"), false);
    }
    for twin in ["twin_a", "twin_b"] {
        let path = format!("app/include/common/{twin}.h");
        let same = Blob::new(f, "#pragma once\n/* a stub both twins share */\n");
        let changed = Blob::new(f, "#pragma once\n/* twin_b grew a declaration */\nint twin;\n");
        let second =
            if twin == "twin_b" && edit == Edit::Many { *changed.digest() } else { *same.digest() };
        files.by_path.insert(path, [*same.digest(), second]);
        files.blobs.extend([same, changed]);
    }
    files
}

/// The elements' trees of both builds, by name (`base1.sources`, `lib2.artifact`, …), and the
/// blobs to store for them.
fn element_trees(
    f: DigestFunction,
    p: &Profile,
    files: &Files,
    edit: Edit,
) -> Result<(BTreeMap<String, Digest>, Vec<Blob>), CasError> {
    // Element trees: sources (paths without the element prefix) and artifacts.
    let tree_of = |prefix: &str, map: &dyn Fn(&str) -> Option<String>, build: usize| {
        files
            .by_path
            .iter()
            .filter_map(|(path, digests)| {
                let rest = path.strip_prefix(prefix)?;
                map(rest).map(|at| (at, digests[build - 1]))
            })
            .collect::<Vec<_>>()
    };
    let mut trees: BTreeMap<String, Digest> = BTreeMap::new();
    let mut dir_blobs = Vec::new();
    for build in [1, 2] {
        for element in ["base", "lib", "app"] {
            let sources = tree_of(&format!("{element}/"), &|rest| Some(rest.to_owned()), build);
            trees.insert(
                format!("{element}{build}.sources"),
                encode_tree(f, &sources, &mut dir_blobs)?,
            );
        }
        let base_art = tree_of("base/include/", &|rest| Some(format!("usr/include/{rest}")), build);
        trees.insert(format!("base{build}.artifact"), encode_tree(f, &base_art, &mut dir_blobs)?);
        let mut lib_art =
            tree_of("lib/include/", &|rest| Some(format!("usr/include/{rest}")), build);
        // A derived archive: no source file has its content.
        let built = if edit.rebuilds_lib() { build } else { 1 };
        let archive = Blob::new(f, format!("!<arch>\nliblib build {built} of {}\n", p.lib_sources));
        lib_art.push(("usr/lib/liblib.a".into(), *archive.digest()));
        dir_blobs.push(archive);
        trees.insert(format!("lib{build}.artifact"), encode_tree(f, &lib_art, &mut dir_blobs)?);
    }
    let app_binary = Blob::new(f, "\x7fELF app build 1\n");
    let app_art = vec![("usr/bin/app".to_owned(), *app_binary.digest())];
    trees.insert("app1.artifact".into(), encode_tree(f, &app_art, &mut dir_blobs)?);
    dir_blobs.push(app_binary);
    Ok((trees, dir_blobs))
}

/// The compile steps of both elements, with the inputs each stages.
fn compile_steps(p: &Profile, seed: u64) -> Vec<(&'static str, Step)> {
    // Compile steps, as recc stages them: dependencies' artifacts under usr/, sources under build/.
    let base_path = |i: usize| format!("d{:02}/h{:04}.h", i / p.base_per_dir, i % p.base_per_dir);
    let base_input =
        |rel: &str| (format!("usr/include/base/{rel}"), format!("base/include/base/{rel}"));
    let mut steps = Vec::new();
    let lib_base = Rng::new(&[seed, 1]).sample(p.base_dirs * p.base_per_dir, p.base_shared / 2);
    for s in 0..p.lib_sources {
        let mut rng = Rng::new(&[seed, 2, s as u64]);
        let source = format!("src/l{s:03}.c");
        let mut inputs = vec![(format!("build/{source}"), format!("lib/{source}"))];
        inputs.extend(lib_base.iter().map(|&i| base_input(&base_path(i))));
        for h in rng.sample(p.lib_headers, p.lib_shared + p.lib_own) {
            inputs.push((
                format!("build/include/lib/l{h:03}.h"),
                format!("lib/include/lib/l{h:03}.h"),
            ));
        }
        steps.push(("lib.bst", Step { source, inputs }));
    }
    for d in 0..p.app_dirs {
        let mut dir_rng = Rng::new(&[seed, 3, d as u64]);
        let shared_base = dir_rng.sample(p.base_dirs * p.base_per_dir, p.base_shared);
        let shared_lib = dir_rng.sample(p.lib_headers, p.lib_shared);
        let shared_common = dir_rng.sample(p.app_common, p.app_common * 2 / 5);
        for s in 0..p.app_sources_per_dir {
            let mut rng = Rng::new(&[seed, 4, d as u64, s as u64]);
            let source = format!("src/d{d:02}/f{s:04}.c");
            let mut inputs = vec![(format!("build/{source}"), format!("app/{source}"))];
            let mut base: Vec<usize> = shared_base.clone();
            for dir in rng.sample(p.base_dirs, p.base_own_dirs) {
                let own = rng.sample(p.base_per_dir, p.base_own_per_dir);
                base.extend(own.into_iter().map(|h| dir * p.base_per_dir + h));
            }
            base.sort_unstable();
            base.dedup();
            inputs.extend(base.iter().map(|&i| base_input(&base_path(i))));
            let mut lib = shared_lib.clone();
            lib.extend(rng.sample(p.lib_headers, p.lib_own));
            lib.sort_unstable();
            lib.dedup();
            inputs.extend(lib.iter().map(|h| {
                (format!("usr/include/lib/l{h:03}.h"), format!("lib/include/lib/l{h:03}.h"))
            }));
            for h in rng.sample(p.app_headers_per_dir, p.app_headers_per_dir * 3 / 4) {
                let path = format!("src/d{d:02}/h{h:02}.h");
                inputs.push((format!("build/{path}"), format!("app/{path}")));
            }
            let mut common = shared_common.clone();
            common.extend(rng.sample(p.app_common, p.app_common / 5));
            common.sort_unstable();
            common.dedup();
            for c in common {
                let path = format!("include/common/c{c:03}.h");
                inputs.push((format!("build/{path}"), format!("app/{path}")));
            }
            for (twin, wanted) in
                [("twin_a", d % 2 == 0 || d % 3 == 0), ("twin_b", d % 2 == 1 || d % 3 == 0)]
            {
                if wanted {
                    let path = format!("include/common/{twin}.h");
                    inputs.push((format!("build/{path}"), format!("app/{path}")));
                }
            }
            steps.push(("app.bst", Step { source, inputs }));
        }
    }
    steps
}

/// Both builds' Actions of every step, stored.
struct Encoded {
    actions: Vec<[Digest; 2]>,
    distinct_dirs: [usize; 2],
    file_refs: usize,
}

fn encode_actions(
    store: &(impl Cas + ?Sized),
    steps: &[(&'static str, Step)],
    files: &Files,
    written: &mut HashSet<Digest>,
) -> Result<Encoded, CasError> {
    let f = store.digest_function();
    // Encode both builds' actions in parallel, in chunks to bound memory.
    let mut actions: Vec<[Digest; 2]> = Vec::with_capacity(steps.len());
    let mut distinct_dirs = [0usize; 2];
    let mut file_refs = 0usize;
    for chunk in steps.chunks(256) {
        let encoded: Vec<([Digest; 2], [Vec<Blob>; 2])> = chunk
            .par_iter()
            .map(|(_, step)| {
                let mut out1 = Vec::new();
                let mut out2 = Vec::new();
                let a1 = compile_action(f, step, files, 1, &mut out1)?;
                let a2 = compile_action(f, step, files, 2, &mut out2)?;
                Ok(([a1, a2], [out1, out2]))
            })
            .collect::<Result<_, CasError>>()?;
        for ((digests, outs), (_, step)) in encoded.into_iter().zip(chunk) {
            file_refs += step.inputs.len();
            for (build, out) in outs.into_iter().enumerate() {
                distinct_dirs[build] += write_new(store, written, out)?.saturating_sub(2);
            }
            actions.push(digests);
        }
    }
    Ok(Encoded { actions, distinct_dirs, file_refs })
}

/// The build graphs: build 1 with its subactions, build 2 before it runs.
fn graphs(
    f: DigestFunction,
    trees: &BTreeMap<String, Digest>,
    steps: &[(&'static str, Step)],
    actions: &[[Digest; 2]],
    edit: Edit,
) -> (Graph, Graph) {
    let subactions = |element: &str| -> Vec<Digest> {
        steps.iter().zip(actions).filter(|((e, _), _)| *e == element).map(|(_, a)| a[0]).collect()
    };
    let element =
        |name: &str, key: &str, deps: &[&str], sources: &str, artifact: Option<&str>| Element {
            name: name.into(),
            cache_key: Some(key.into()),
            sources: Some(trees[sources]),
            artifact: artifact.map(|a| trees[a]),
            build_deps: deps.iter().map(|d| (*d).to_owned()).collect(),
            subactions: Vec::new(),
            ..Default::default()
        };
    let build1 = Graph::new(
        f,
        vec![
            element("base.bst", "base-1", &[], "base1.sources", Some("base1.artifact")),
            Element {
                subactions: subactions("lib.bst"),
                ..element("lib.bst", "lib-1", &["base.bst"], "lib1.sources", Some("lib1.artifact"))
            },
            Element {
                subactions: subactions("app.bst"),
                ..element(
                    "app.bst",
                    "app-1",
                    &["lib.bst", "base.bst"],
                    "app1.sources",
                    Some("app1.artifact"),
                )
            },
        ],
    )
    .expect("the workload's graph is valid");
    let build2 = Graph::new(
        f,
        vec![
            element("base.bst", "base-1", &[], "base2.sources", Some("base2.artifact")),
            if edit.rebuilds_lib() {
                element("lib.bst", "lib-2", &["base.bst"], "lib2.sources", Some("lib2.artifact"))
            } else {
                element("lib.bst", "lib-1", &["base.bst"], "lib2.sources", Some("lib2.artifact"))
            },
            element("app.bst", "app-2", &["lib.bst", "base.bst"], "app2.sources", None),
        ],
    )
    .expect("the workload's graph is valid");
    (build1, build2)
}

/// Writes a workload's graphs and truth as JSON files in `dir`.
pub fn write_files(workload: &Workload, dir: &std::path::Path) -> std::io::Result<()> {
    let write = |name: &str, value: &Value| std::fs::write(dir.join(name), format!("{value:#}\n"));
    std::fs::write(dir.join("build1.json"), workload.build1.to_json())?;
    std::fs::write(dir.join("build2.json"), workload.build2.to_json())?;
    let truth: Vec<Value> =
        workload.truth.iter().map(|(b, t)| json!([b.to_string(), t.to_string()])).collect();
    write("truth.json", &Value::from(truth))?;
    write("workload.json", &workload.stats)
}

/// The elements of a workload, in dependency order.
pub const ELEMENTS: [&str; 3] = ["base.bst", "lib.bst", "app.bst"];

/// An element of a workload's graph.
pub fn element<'a>(graph: &'a Graph, name: &str) -> &'a Element {
    graph.get(name).expect("the element is in the graph")
}

/// What `sa generate` gives the generator for an element of build 1 (the one mapping,
/// [`sa_generator::GenerateInput::from_graph`]).
pub fn generate_input(graph: &Graph, name: &str) -> sa_generator::GenerateInput {
    sa_generator::GenerateInput::from_graph(graph, name).expect("the element is in the graph")
}

/// What `sa instantiate` gives the instantiator: build 2's states with build 1's keys and
/// SpeculativeActions (`specs`, by element), through the one mapping
/// ([`sa_instantiator::ElementState::from_graphs`]). No actions index is named: the
/// instantiator finds one in the store and checks it against the blob (a BuildStream graph).
pub fn states(
    build1: &Graph,
    build2: &Graph,
    specs: &std::collections::HashMap<&str, Digest>,
) -> Vec<sa_instantiator::ElementState> {
    states_with_indexes(build1, build2, specs, &std::collections::HashMap::new())
}

/// [`states`] with the actions indexes `sa generate` stored (`indexes`, by element), as the
/// graph `sa generate --output` writes names them: the path `sa instantiate` takes.
pub fn states_with_indexes(
    build1: &Graph,
    build2: &Graph,
    specs: &std::collections::HashMap<&str, Digest>,
    indexes: &std::collections::HashMap<&str, Digest>,
) -> Vec<sa_instantiator::ElementState> {
    let mut previous = build1.clone();
    for element in &mut previous.elements {
        element.speculative_actions = specs.get(element.name.as_str()).copied();
        element.actions_index = indexes.get(element.name.as_str()).copied();
    }
    sa_instantiator::ElementState::from_graphs(build2, &previous)
}

/// A tree of `files` files (`p000/m00/__init__.py`, …), all with the same content or each its
/// own, recorded by one action that read them all, and the same tree with every file's content
/// changed: the duplicate-content scaling case (real Python and JavaScript trees hold tens of
/// thousands of identical files).
#[derive(Clone, Debug)]
pub struct DuplicateCase {
    /// What the generator gets: the sources and the one action.
    pub input: sa_generator::GenerateInput,
    /// The sources after the edit.
    pub sources2: Digest,
}

impl DuplicateCase {
    /// The element's state after the edit, with what generate made of the build before it
    /// (its SpeculativeActions and the actions index the graph would name).
    pub fn state(&self, generated: &sa_generator::Generated) -> sa_instantiator::ElementState {
        sa_instantiator::ElementState {
            name: self.input.element.name.clone(),
            sources: Some(self.sources2),
            previous_key: Some("1".into()),
            current_key: Some("2".into()),
            previous_speculative_actions: Some(generated.digest),
            previous_actions_index: generated.index,
            ..Default::default()
        }
    }
}

/// Stores a [`DuplicateCase`] of `files` files in `store`.
pub fn duplicate_case(
    store: &(impl Cas + ?Sized),
    files: usize,
    identical: bool,
) -> Result<DuplicateCase, CasError> {
    let f = store.digest_function();
    let tree = |edit: &str| -> Result<Digest, CasError> {
        let mut blobs = Vec::new();
        let mut entries = Vec::with_capacity(files);
        for i in 0..files {
            let content = if identical { edit.to_owned() } else { format!("{edit}{i}\n") };
            let blob = Blob::new(f, content);
            let path = format!("p{:03}/m{:02}/__init__.py", i / 100, i % 100);
            entries.push(merkle::TreeFile::new(path, *blob.digest(), false));
            blobs.push(blob);
        }
        blobs.sort_unstable_by(|a, b| a.digest().cmp(b.digest()));
        blobs.dedup_by(|a, b| a.digest() == b.digest());
        merkle::write_in_batches(store, &blobs)?;
        merkle::build_tree(store, &entries)
    };
    let sources = tree("")?;
    let sources2 = tree("# edited\n")?;
    let command = Command {
        arguments: vec!["python3".into(), "-m".into(), "p000".into()],
        ..Default::default()
    };
    let action = Action {
        command_digest: Some(sa_cas::write_message(store, &command)?.to_proto()),
        input_root_digest: Some(sources.to_proto()),
        ..Default::default()
    };
    let action = sa_cas::write_message(store, &action)?;
    let input = sa_generator::GenerateInput {
        element: sa_generator::ElementTrees {
            name: "py.bst".into(),
            sources: Some(sources),
            artifact: None,
        },
        dependencies: Vec::new(),
        subactions: vec![action],
        earlier_sources: Vec::new(),
    };
    Ok(DuplicateCase { input, sources2 })
}
