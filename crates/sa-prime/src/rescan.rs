//! Re-scanning changed compiles: a recorded compile whose inputs an overlay replaced may now
//! read other files (an include added or removed, a new header). Its dependency scan (the
//! same compiler, flags and source with `-M`) runs as an action on the executor against the
//! next sources, and the input root is rebuilt from the files it lists: files of the sources
//! from the next sources, the others (generated, from dependencies, outside the sources) as
//! the instantiated action has them. Where the list is the instantiated root's, the
//! instantiated action stands byte for byte.
//!
//! The sources are at the root of the input root (`sa record --root` the workspace, Bazel's
//! execroot): a listed path is a source when the next sources have a file there.
//!
//! What runs is the recorded compiler with the recorded flags and environment, asked for
//! `-M` into one declared output file: nothing the recording did not name. What comes back is
//! untrusted: a listed path must stay inside the root and name a file of the next sources or
//! of the instantiated root (else the action is unpredictable), the listing is bounded.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use sa_cas::merkle::{self, Forest, TreeFile, TreeLimits};
use sa_cas::{CasError, DecodedAction, Digest, Store, decode_message, write_message};
use sa_compile::{below, parse_compile, parse_make_deps};
use sa_exec::{Executor, Outcome};
use sa_instantiator::Instantiator;
use sa_proto::reapi::{Action, Command};

use crate::{PrimeError, Stores, keep_result, stderr_excerpt, store_error, upload};

/// The file the scan writes its listing to, in the compile's working directory.
pub const SCAN_FILE: &str = ".sa-scan.d";

/// The largest listing read back.
pub const MAX_SCAN_BYTES: u64 = 16 << 20;

/// What a re-scan made of an instantiated action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Scanned {
    /// Not a compile `sa` recognizes, or its scan lists the inputs it has: it stands.
    Stands,
    /// Its inputs differ: this action (the same Action, the scanned input root) runs instead.
    Replaced(Digest),
    /// Its inputs cannot be known: why. It is not executed.
    Unpredictable(String),
    /// The scan could not be run or its result kept (the executor's or a store's error).
    Error(String),
}

/// A compile to scan.
#[derive(Clone, Debug)]
pub(crate) struct Request {
    /// The element whose next sources it reads.
    pub element: String,
    /// What its outcome is kept under: the instantiated action, or a new compile's key.
    pub key: Digest,
    /// The action whose Action fields (timeout, platform, salt), Command (unless `command`)
    /// and, with `keep_inputs`, input files the rebuilt action takes.
    pub template: Digest,
    /// The Command to run instead of the template's (a compilation database's arguments).
    pub command: Option<Command>,
    /// Keep the template's input files (those not in the next sources as they are); false:
    /// the next sources alone.
    pub keep_inputs: bool,
    /// The recorded action, when its client chose its input root: the root is rebuilt only if
    /// the recorded root is exactly what its own scan lists (a client that builds input roots
    /// by scan, as recc and `sa record` do; Bazel sends every declared header instead, and
    /// its overlay result stands).
    pub recorded: Option<Digest>,
    /// Input files of the template to leave out (sources the overlays could not resolve: gone
    /// from the next sources); a request that drops any always rebuilds.
    pub drop: Vec<Digest>,
}

impl Request {
    /// The scan of an instantiated action (recorded as `base`) whose inputs changed.
    pub(crate) fn changed(element: &str, base: Digest, action: Digest) -> Request {
        Request {
            element: element.to_owned(),
            key: action,
            template: action,
            command: None,
            keep_inputs: true,
            recorded: Some(base),
            drop: Vec::new(),
        }
    }

    /// The scan of an instantiated action (recorded as `base`) that could not be completed
    /// because source files it read are gone (`gone`: their digests): a renamed or removed
    /// header. The scan says what it reads now.
    pub(crate) fn gone(element: &str, base: Digest, action: Digest, gone: Vec<Digest>) -> Request {
        Request { drop: gone, ..Request::changed(element, base, action) }
    }
}

/// A compile whose scan is about to run.
struct Pending {
    key: Digest,
    decoded: DecodedAction,
    /// The Command to store (a new one), or `None`: the template's stands.
    new_command: Option<Command>,
    working_directory: String,
    /// The input files kept from the template.
    files: Vec<TreeFile>,
    /// The next sources' files, by path.
    sources: Arc<BTreeMap<String, TreeFile>>,
    /// The scan of the recorded action over its own root, and that root's paths.
    recorded: Option<(Digest, HashSet<String>)>,
    /// Whether template files were left out (the action must be rebuilt).
    dropped: bool,
}

/// Scans each request's compile and replaces, in `instantiator`, the actions whose inputs
/// or command differ; returns what became of each, by key.
pub(crate) fn rescan<S: Store + ?Sized>(
    stores: &Stores<'_, S>,
    executor: &dyn Executor,
    instantiator: &Instantiator<'_, S>,
    requests: &[Request],
    limits: &TreeLimits,
) -> Result<HashMap<Digest, Scanned>, PrimeError> {
    let store = stores.build;
    let mut scanned = HashMap::new();
    // Every Action the requests name, then every Command they need, each in one batch.
    let wanted: Vec<Digest> =
        requests.iter().flat_map(|r| [Some(r.template), r.recorded]).flatten().collect();
    let decoded = read_actions(store, &wanted)?;
    let mut command_digests: Vec<Digest> = Vec::new();
    for request in requests.iter().filter(|r| r.command.is_none()) {
        let template = &request.template;
        let digest = decoded[template]
            .command()
            .map_err(store_error(format!("reading action {template}")))?;
        command_digests.push(digest);
    }
    let commands = read_commands(store, &command_digests)?;
    let mut compiles = Vec::new();
    for request in requests {
        let template = decoded[&request.template].clone();
        let command = match &request.command {
            Some(command) => command.clone(),
            None => commands[&template.command().expect("read above")].clone(),
        };
        let sources = instantiator.element(&request.element).and_then(|e| e.sources);
        let recorded = request.recorded.map(|base| decoded[&base].clone());
        match (parse_compile(&command.arguments).is_some(), sources) {
            (true, Some(sources)) => compiles.push((request, template, command, sources, recorded)),
            _ => {
                scanned.insert(request.key, Scanned::Stands);
            }
        }
    }
    if compiles.is_empty() {
        return Ok(scanned);
    }
    let mut roots: Vec<Digest> = compiles
        .iter()
        .flat_map(|(_, d, _, s, r)| {
            [Some(d.input_root), Some(*s), r.as_ref().map(|r| r.input_root)]
        })
        .flatten()
        .collect();
    roots.sort_unstable();
    roots.dedup();
    let forest = merkle::fetch_forest(store, &roots, limits)
        .map_err(store_error("reading the changed compiles' input roots and sources"))?;
    let mut source_files: HashMap<Digest, Arc<BTreeMap<String, TreeFile>>> = HashMap::new();
    let mut pending = Vec::new();
    let mut scans = Vec::new();
    for (request, decoded, command, sources_root, recorded) in compiles {
        let key = request.key;
        let sources = match source_files.get(&sources_root) {
            Some(files) => files.clone(),
            None => {
                let files = forest
                    .files(&sources_root)
                    .map_err(store_error(format!("listing the sources {sources_root}")))?;
                let files: Arc<BTreeMap<String, TreeFile>> =
                    Arc::new(files.into_iter().map(|f| (f.path.clone(), f)).collect());
                source_files.insert(sources_root, files.clone());
                files
            }
        };
        let files = if request.keep_inputs {
            if has_symlinks(&forest, &decoded.input_root) {
                // Symlinks are not files a scan lists: the overlay result stands as it is.
                tracing::debug!("action {key}: its input root has symlinks, not re-scanned");
                scanned.insert(key, Scanned::Stands);
                continue;
            }
            let mut files = forest
                .files(&decoded.input_root)
                .map_err(store_error(format!("listing the input root of {key}")))?;
            files.retain(|f| !request.drop.contains(&f.digest));
            files
        } else {
            Vec::new()
        };
        let output = join(&command.working_directory, SCAN_FILE);
        let mut recorded_scan = None;
        if let Some(recorded) = &recorded {
            let files = forest
                .files(&recorded.input_root)
                .map_err(store_error(format!("listing the input root of {key}'s recording")))?;
            let paths: HashSet<String> = files.iter().map(|f| f.path.clone()).collect();
            if paths.contains(&output) {
                scanned.insert(key, Scanned::Stands);
                continue;
            }
            // Over the recorded root itself, as the recording had it.
            match scan_action(store, &recorded.action, recorded.input_root, command.clone()) {
                Ok(scan) => recorded_scan = Some((scan, paths)),
                Err(why) => {
                    scanned.insert(key, Scanned::Unpredictable(why));
                    continue;
                }
            }
        }
        let root = match scan_root(store, sources_root, &sources, &files, &output) {
            Ok(root) => root,
            Err(why) => {
                scanned.insert(key, Scanned::Unpredictable(why));
                continue;
            }
        };
        match scan_action(store, &decoded.action, root, command.clone()) {
            Ok(scan) => {
                scans.push(scan);
                scans.extend(recorded_scan.as_ref().map(|(scan, _)| *scan));
                pending.push((
                    Pending {
                        key,
                        working_directory: command.working_directory.clone(),
                        new_command: request.command.clone(),
                        decoded,
                        files,
                        sources,
                        recorded: recorded_scan,
                        dropped: !request.drop.is_empty(),
                    },
                    scan,
                ));
            }
            Err(why) => {
                scanned.insert(key, Scanned::Unpredictable(why));
            }
        }
    }
    scans.sort_unstable();
    scans.dedup();
    if let Some(remote) = stores.executor_cas {
        upload(store, remote, &scans, limits)?;
    }
    let mut outcomes: HashMap<Digest, Outcome> = HashMap::new();
    executor.execute_all(&scans, &mut |finished| {
        outcomes.insert(finished.action, finished.outcome);
    });
    for (item, scan) in &pending {
        if let Some((recorded_scan, paths)) = &item.recorded
            && !lists_exactly(stores, recorded_scan, outcomes.get(recorded_scan), item, paths)
        {
            tracing::debug!(
                "action {}: its recorded input root is not what its compiler reads (a client \
                 that sends declared inputs): the overlay result stands",
                item.key
            );
            scanned.insert(item.key, Scanned::Stands);
            continue;
        }
        let outcome = outcomes.get(scan).cloned();
        let result = listing(stores, scan, outcome)
            .and_then(|text| rebuild(store, item, &text).map_err(Failure::Unpredictable));
        let status = match result {
            Ok(None) => Scanned::Stands,
            Ok(Some(replacement)) => {
                instantiator.replace(item.key, replacement);
                Scanned::Replaced(replacement)
            }
            Err(Failure::Unpredictable(why)) => Scanned::Unpredictable(why),
            Err(Failure::Error(why)) => Scanned::Error(why),
        };
        scanned.insert(item.key, status);
    }
    Ok(scanned)
}

/// The Actions `digests` name, read in batches and decoded.
pub(crate) fn read_actions<S: Store + ?Sized>(
    store: &S,
    digests: &[Digest],
) -> Result<HashMap<Digest, DecodedAction>, PrimeError> {
    let function = store.digest_function();
    read_decoded(store, digests, "action", |digest, raw| {
        DecodedAction::decode(function, digest, raw)
    })
}

/// The Commands `digests` name, read in batches and decoded.
pub(crate) fn read_commands<S: Store + ?Sized>(
    store: &S,
    digests: &[Digest],
) -> Result<HashMap<Digest, Command>, PrimeError> {
    read_decoded(store, digests, "command", |digest, raw| decode_message(digest, raw, "Command"))
}

/// Each distinct blob of `digests` read (in batches) and decoded; the first failure is an
/// error naming the `what` and its digest.
fn read_decoded<S: Store + ?Sized, T>(
    store: &S,
    digests: &[Digest],
    what: &str,
    decode: impl Fn(&Digest, Bytes) -> Result<T, CasError>,
) -> Result<HashMap<Digest, T>, PrimeError> {
    let mut wanted = digests.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    let mut decoded = HashMap::with_capacity(wanted.len());
    for (digest, raw) in wanted.iter().zip(merkle::read_each(store, &wanted)) {
        let value = raw
            .and_then(|raw| decode(digest, raw))
            .map_err(store_error(format!("reading {what} {digest}")))?;
        decoded.insert(*digest, value);
    }
    Ok(decoded)
}

enum Failure {
    Unpredictable(String),
    Error(String),
}

/// Whether any directory of the tree at `root` holds a symlink.
fn has_symlinks(forest: &Forest, root: &Digest) -> bool {
    let mut stack = vec![*root];
    let mut seen = HashSet::new();
    while let Some(digest) = stack.pop() {
        if !seen.insert(digest) {
            continue;
        }
        let Some(dir) = forest.get(&digest) else { continue };
        if !dir.symlinks.is_empty() {
            return true;
        }
        stack.extend(dir.directories.iter().map(|d| d.digest));
    }
    false
}

/// The input root a compile's scan reads: the next sources with `files` (the instantiated
/// root's) on top, without the scan's own `output`. When every file is the sources' own and
/// the output is not a source, that is the sources' root as it is: no tree is built (a
/// workspace's sources are one tree, shared by all its compiles).
fn scan_root<S: Store + ?Sized>(
    store: &S,
    sources_root: Digest,
    sources: &BTreeMap<String, TreeFile>,
    files: &[TreeFile],
    output: &str,
) -> Result<Digest, String> {
    if !sources.contains_key(output) && files.iter().all(|f| sources.get(&f.path) == Some(f)) {
        return Ok(sources_root);
    }
    let mut root: BTreeMap<&str, &TreeFile> =
        sources.iter().map(|(path, file)| (path.as_str(), file)).collect();
    for file in files {
        root.insert(&file.path, file);
    }
    root.remove(output);
    let root: Vec<TreeFile> = root.into_values().cloned().collect();
    merkle::build_tree(store, &root).map_err(|err| {
        format!("its scan's input root cannot be built: {}", sa_cas::error_chain(&err))
    })
}

/// Stores the scan of a compile: its `command`'s flags with `-M` into [`SCAN_FILE`], the
/// same environment, platform and working directory, over `input_root`, with `template`'s
/// Action fields. `Err`: why no scan can be built.
fn scan_action<S: Store + ?Sized>(
    store: &S,
    template: &Action,
    input_root: Digest,
    command: Command,
) -> Result<Digest, String> {
    let compile = parse_compile(&command.arguments).ok_or("not a compile")?;
    let mut arguments = compile.deps_args().to_vec();
    arguments.extend(["-MF".into(), SCAN_FILE.into()]);
    // The platform is the recorded one, in whichever field the recording used.
    #[allow(deprecated)]
    let scan_command = Command {
        arguments,
        environment_variables: command.environment_variables,
        output_paths: vec![SCAN_FILE.into()],
        working_directory: command.working_directory,
        platform: command.platform,
        ..Default::default()
    };
    let write = |err: CasError| format!("storing its scan: {}", sa_cas::error_chain(&err));
    let command_digest = write_message(store, &scan_command).map_err(write)?;
    let action = Action {
        command_digest: Some(command_digest.to_proto()),
        input_root_digest: Some(input_root.to_proto()),
        timeout: template.timeout,
        platform: template.platform.clone(),
        salt: template.salt.clone(),
        ..Default::default()
    };
    write_message(store, &action).map_err(write)
}

/// Whether the recorded action's own scan lists exactly the files of its input root.
fn lists_exactly<S: Store + ?Sized>(
    stores: &Stores<'_, S>,
    scan: &Digest,
    outcome: Option<&Outcome>,
    item: &Pending,
    paths: &HashSet<String>,
) -> bool {
    let Ok(text) = listing(stores, scan, outcome.cloned()) else { return false };
    let Ok(listed) = parse_make_deps(&text) else { return false };
    let listed: HashSet<String> =
        listed.iter().filter_map(|path| below(&item.working_directory, path)).collect();
    &listed == paths
}

/// The listing a scan wrote, from its outcome (brought back into the build's store).
fn listing<S: Store + ?Sized>(
    stores: &Stores<'_, S>,
    scan: &Digest,
    outcome: Option<Outcome>,
) -> Result<String, Failure> {
    let result = match outcome {
        Some(Outcome::Cached(result) | Outcome::Executed(result)) => result,
        Some(Outcome::Accepted { operation }) => {
            return Err(Failure::Unpredictable(format!(
                "its dependency scan {scan} was accepted as {operation} and not waited for"
            )));
        }
        Some(Outcome::Failed(why)) => {
            return Err(Failure::Error(format!("its dependency scan {scan}: {}", why.message)));
        }
        None => return Err(Failure::Error(format!("its dependency scan {scan} has no outcome"))),
    };
    if result.exit_code != 0 {
        let stderr = match stores.executor_cas {
            Some(remote) => stderr_excerpt(remote, &result),
            None => stderr_excerpt(stores.build, &result),
        };
        return Err(Failure::Unpredictable(format!(
            "its dependency scan {scan} failed: exit code {}{stderr}",
            result.exit_code
        )));
    }
    if let Some(remote) = stores.executor_cas {
        keep_result(stores.build, remote, scan, &result).map_err(|err| {
            Failure::Error(format!(
                "copying the result of its dependency scan {scan} back: {}",
                sa_cas::error_chain(&err)
            ))
        })?;
    }
    let function = stores.build.digest_function();
    let file = result.output_files.iter().find(|f| f.path == SCAN_FILE).ok_or_else(|| {
        Failure::Error(format!("its dependency scan {scan} wrote no {SCAN_FILE}"))
    })?;
    let bad = |what: String| Failure::Error(format!("its dependency scan {scan}: {what}"));
    let digest = Digest::from_proto_field(function, file.digest.as_ref(), "OutputFile.digest")
        .map_err(|err| bad(sa_cas::error_chain(&err)))?;
    if digest.size() > MAX_SCAN_BYTES {
        return Err(bad(format!("its listing {digest} is larger than {MAX_SCAN_BYTES} bytes")));
    }
    let data = stores.build.read_blob(&digest).map_err(|err| bad(sa_cas::error_chain(&err)))?;
    String::from_utf8(data.to_vec()).map_err(|_| {
        Failure::Unpredictable(format!(
            "its dependency scan {scan} listed a file name that is not UTF-8"
        ))
    })
}

/// The input root the listing `text` gives `item`, stored with its Action; `None` when it is
/// the instantiated root's. `Err`: why the inputs cannot be known.
fn rebuild<S: Store + ?Sized>(
    store: &S,
    item: &Pending,
    text: &str,
) -> Result<Option<Digest>, String> {
    let listed = parse_make_deps(text).map_err(|err| format!("its dependency scan: {err}"))?;
    let listed: HashSet<String> =
        listed.iter().filter_map(|path| below(&item.working_directory, path)).collect();
    let mut files: Vec<TreeFile> = item
        .files
        .iter()
        .filter(|f| listed.contains(&f.path) || !item.sources.contains_key(&f.path))
        .cloned()
        .collect();
    let kept = files.len();
    let recorded: HashSet<&str> = item.files.iter().map(|f| f.path.as_str()).collect();
    let mut added: Vec<&String> =
        listed.iter().filter(|p| !recorded.contains(p.as_str())).collect();
    added.sort_unstable();
    if kept == item.files.len() && added.is_empty() && item.new_command.is_none() && !item.dropped {
        return Ok(None);
    }
    for path in added {
        let file = item.sources.get(path).ok_or_else(|| {
            format!(
                "its dependency scan lists {path:?}, which neither the sources nor its inputs have"
            )
        })?;
        files.push(file.clone());
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let stored =
        |err: CasError| format!("storing its re-scanned input root: {}", sa_cas::error_chain(&err));
    let root = merkle::build_tree(store, &files).map_err(stored)?;
    let mut action = item.decoded.action.clone();
    action.input_root_digest = Some(root.to_proto());
    if let Some(command) = &item.new_command {
        let digest = write_message(store, command).map_err(stored)?;
        action.command_digest = Some(digest.to_proto());
    }
    write_message(store, &action).map(Some).map_err(stored)
}

fn join(directory: &str, name: &str) -> String {
    merkle::join(directory.trim_end_matches('/'), name)
}
