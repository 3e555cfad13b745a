//! `inspect`: decode a blob and print it as JSON.

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use prost::Message;
use sa_cas::merkle::{self, TreeLimits};
use sa_cas::{ActionCache, Cas, Digest, DigestFunction};
use sa_proto::buildstream::v2::speculative_actions::Overlay;
use sa_proto::buildstream::v2::{Artifact, SpeculativeActions};
use sa_proto::reapi::{self, Action, ActionResult, Command, Directory, Tree};
use serde_json::{Value, json};

use crate::args::StoreArgs;
use crate::store;
use crate::ui::Ui;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Kind {
    Action,
    Command,
    Directory,
    Tree,
    ActionResult,
    SpeculativeActions,
    Artifact,
}

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The blob's digest (HASH/SIZE); for action-result, the action's digest.
    digest: String,
    /// What the blob holds; default: detect what decodes.
    #[arg(long = "as", value_enum)]
    kind: Option<Kind>,
}

fn d(proto: &Option<reapi::Digest>) -> Value {
    proto.as_ref().map_or(Value::Null, |d| format!("{}/{}", d.hash, d.size_bytes).into())
}

fn platform(p: &Option<reapi::Platform>) -> Value {
    p.as_ref()
        .map(|p| {
            p.properties
                .iter()
                .map(|x| json!({"name": x.name, "value": x.value}))
                .collect::<Vec<_>>()
                .into()
        })
        .unwrap_or(Value::Null)
}

fn action_json(a: &Action) -> Value {
    json!({
        "command_digest": d(&a.command_digest),
        "input_root_digest": d(&a.input_root_digest),
        "timeout_seconds": a.timeout.as_ref().map(|t| t.seconds),
        "do_not_cache": a.do_not_cache,
        "salt": hex::encode(&a.salt),
        "platform": platform(&a.platform),
    })
}

// Older clients still send the deprecated fields: show them.
#[allow(deprecated)]
fn command_json(c: &Command) -> Value {
    json!({
        "arguments": c.arguments,
        "environment_variables": c.environment_variables.iter().map(|e| json!({"name": e.name, "value": e.value})).collect::<Vec<_>>(),
        "output_paths": c.output_paths,
        "output_files": c.output_files,
        "output_directories": c.output_directories,
        "working_directory": c.working_directory,
        "platform": platform(&c.platform),
    })
}

fn node_properties(p: &Option<reapi::NodeProperties>) -> Value {
    p.as_ref().map_or(Value::Null, |p| {
        json!({
            "properties": p.properties.iter().map(|x| json!({"name": x.name, "value": x.value})).collect::<Vec<_>>(),
            "mtime": p.mtime.as_ref().map(|t| json!({"seconds": t.seconds, "nanos": t.nanos})),
            "unix_mode": p.unix_mode,
        })
    })
}

fn directory_json(dir: &Directory) -> Value {
    json!({
        "files": dir.files.iter().map(|f| json!({"name": f.name, "digest": d(&f.digest), "is_executable": f.is_executable, "node_properties": node_properties(&f.node_properties)})).collect::<Vec<_>>(),
        "directories": dir.directories.iter().map(|x| json!({"name": x.name, "digest": d(&x.digest)})).collect::<Vec<_>>(),
        "symlinks": dir.symlinks.iter().map(|s| json!({"name": s.name, "target": s.target, "node_properties": node_properties(&s.node_properties)})).collect::<Vec<_>>(),
        "node_properties": node_properties(&dir.node_properties),
    })
}

fn symlinks_json(links: &[reapi::OutputSymlink]) -> Value {
    links
        .iter()
        .map(|l| json!({"path": l.path, "target": l.target, "node_properties": node_properties(&l.node_properties)}))
        .collect::<Vec<_>>()
        .into()
}

fn timestamp(t: &Option<prost_types::Timestamp>) -> Value {
    t.as_ref().map_or(Value::Null, |t| json!({"seconds": t.seconds, "nanos": t.nanos}))
}

// Results of older servers still carry the deprecated symlink lists: show them.
#[allow(deprecated)]
fn result_json(r: &ActionResult) -> Value {
    let metadata = r.execution_metadata.as_ref().map_or(Value::Null, |m| {
        json!({
            "worker": m.worker,
            "queued_timestamp": timestamp(&m.queued_timestamp),
            "worker_start_timestamp": timestamp(&m.worker_start_timestamp),
            "worker_completed_timestamp": timestamp(&m.worker_completed_timestamp),
            "execution_start_timestamp": timestamp(&m.execution_start_timestamp),
            "execution_completed_timestamp": timestamp(&m.execution_completed_timestamp),
            "auxiliary_metadata": m.auxiliary_metadata.len(),
        })
    });
    json!({
        "exit_code": r.exit_code,
        "output_files": r.output_files.iter().map(|f| json!({"path": f.path, "digest": d(&f.digest), "is_executable": f.is_executable, "contents": hex::encode(&f.contents), "node_properties": node_properties(&f.node_properties)})).collect::<Vec<_>>(),
        "output_symlinks": symlinks_json(&r.output_symlinks),
        "output_file_symlinks": symlinks_json(&r.output_file_symlinks),
        "output_directories": r.output_directories.iter().map(|o| json!({"path": o.path, "tree_digest": d(&o.tree_digest), "is_topologically_sorted": o.is_topologically_sorted, "root_directory_digest": d(&o.root_directory_digest)})).collect::<Vec<_>>(),
        "output_directory_symlinks": symlinks_json(&r.output_directory_symlinks),
        "stdout_raw": hex::encode(&r.stdout_raw),
        "stdout_digest": d(&r.stdout_digest),
        "stderr_raw": hex::encode(&r.stderr_raw),
        "stderr_digest": d(&r.stderr_digest),
        "execution_metadata": metadata,
        "subactions": r.subactions.iter().map(|s| d(&Some(s.clone()))).collect::<Vec<_>>(),
    })
}

/// A REAPI `Tree`: the root and children Directories, each with the digest it has as a blob.
fn tree_json(function: DigestFunction, tree: &Tree) -> Value {
    let one = |dir: &Directory| {
        let mut value = directory_json(dir);
        value["digest"] = merkle::directory_blob(function, dir).digest().to_string().into();
        value
    };
    json!({
        "root": tree.root.as_ref().map_or(Value::Null, one),
        "children": tree.children.iter().map(one).collect::<Vec<_>>(),
    })
}

/// Top-level fields of `data` that `M` does not know (prost drops them when decoding): their
/// numbers and wire types, so a reader sees that the blob holds more than is printed.
fn unknown_fields<M: Message + Default>(data: &[u8]) -> Value {
    let Ok(message) = M::decode(data) else { return Value::Null };
    let known = top_level_fields(&message.encode_to_vec());
    let unknown: Vec<Value> = top_level_fields(data)
        .into_iter()
        .filter(|field| !known.iter().any(|k| k.0 == field.0))
        .map(|(number, wire_type)| json!({"number": number, "wire_type": wire_type}))
        .collect();
    unknown.into()
}

/// `(number, wire type)` of each top-level field, in order; stops at the first malformed one.
fn top_level_fields(data: &[u8]) -> Vec<(u32, u8)> {
    use sa_proto::wire::{self, Value};
    wire::fields(data)
        .map_while(Result::ok)
        .map(|field| {
            let wire_type = match field.value {
                Value::Varint(_) => 0,
                Value::Fixed64(_) => 1,
                Value::Bytes(_) => 2,
                Value::Fixed32(_) => 5,
            };
            (field.number, wire_type)
        })
        .collect()
}

fn overlay_json(o: &Overlay) -> Value {
    json!({
        "type": o.r#type().as_str_name(),
        "source_element": o.source_element,
        "source_action_digest": d(&o.source_action_digest),
        "source_path": o.source_path,
        "target_digest": d(&o.target_digest),
    })
}

fn speculative_json(s: &SpeculativeActions) -> Value {
    json!({
        "actions": s.actions.iter().map(|a| json!({
            "base_action_digest": d(&a.base_action_digest),
            "overlays": a.overlays.iter().map(overlay_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "artifact_overlays": s.artifact_overlays.iter().map(overlay_json).collect::<Vec<_>>(),
    })
}

fn artifact_json(a: &Artifact) -> Value {
    json!({
        "version": a.version,
        "build_success": a.build_success,
        "strong_key": a.strong_key,
        "weak_key": a.weak_key,
        "files": d(&a.files),
        "sources": d(&a.sources),
        "build_deps": a.build_deps.iter().map(|b| json!({"project_name": b.project_name, "element_name": b.element_name, "cache_key": b.cache_key})).collect::<Vec<_>>(),
        "speculative_actions": d(&a.speculative_actions),
    })
}

/// Decodes `data` as `M` only if it re-encodes to the same bytes (so a message of another type
/// that happens to parse is not mistaken for this one).
fn exact<M: Message + Default>(data: &Bytes) -> Option<M> {
    let message = M::decode(data.clone()).ok()?;
    (message.encode_to_vec() == data[..]).then_some(message)
}

fn digests_valid(function: DigestFunction, digests: &[&Option<reapi::Digest>]) -> bool {
    digests.iter().all(|d| d.as_ref().is_some_and(|d| Digest::from_proto(function, d).is_ok()))
}

fn detect(
    function: DigestFunction,
    digest: &Digest,
    data: &Bytes,
    limits: &TreeLimits,
) -> Option<(Kind, Value)> {
    if data.is_empty() {
        return Some((Kind::Directory, directory_json(&Directory::default())));
    }
    if let Some(dir) = exact::<Directory>(data)
        && merkle::validate_directory(function, digest, &dir, limits).is_ok()
    {
        return Some((Kind::Directory, directory_json(&dir)));
    }
    if let Some(a) = exact::<Action>(data)
        && digests_valid(function, &[&a.command_digest, &a.input_root_digest])
    {
        return Some((Kind::Action, action_json(&a)));
    }
    if let Some(s) = exact::<SpeculativeActions>(data) {
        let ok = !(s.actions.is_empty() && s.artifact_overlays.is_empty())
            && s.actions.iter().all(|a| digests_valid(function, &[&a.base_action_digest]));
        if ok {
            return Some((Kind::SpeculativeActions, speculative_json(&s)));
        }
    }
    if let Some(c) = exact::<Command>(data)
        && !c.arguments.is_empty()
        && command_is_text(&c)
    {
        return Some((Kind::Command, command_json(&c)));
    }
    if let Some(tree) = exact::<Tree>(data)
        && tree_valid(function, &tree, limits)
    {
        return Some((Kind::Tree, tree_json(function, &tree)));
    }
    if let Some(a) = exact::<Artifact>(data)
        && a.version > 0
    {
        return Some((Kind::Artifact, artifact_json(&a)));
    }
    None
}

/// Whether every string of a Command is text: no control characters but tab, line feed and
/// carriage return (an encoded message has them in its keys and lengths, so another message
/// that happens to parse as a Command is not taken for one).
#[allow(deprecated)] // the deprecated output lists are strings too
fn command_is_text(c: &Command) -> bool {
    let text =
        |s: &String| !s.chars().any(|ch| ch.is_control() && !matches!(ch, '\t' | '\n' | '\r'));
    let env = c.environment_variables.iter().flat_map(|e| [&e.name, &e.value]);
    c.arguments
        .iter()
        .chain(env)
        .chain(&c.output_paths)
        .chain(&c.output_files)
        .chain(&c.output_directories)
        .chain(std::iter::once(&c.working_directory))
        .all(text)
}

/// Whether a Tree's root and children all validate as Directories.
fn tree_valid(function: DigestFunction, tree: &Tree, limits: &TreeLimits) -> bool {
    tree.root.iter().chain(&tree.children).all(|dir| {
        let blob = merkle::directory_blob(function, dir);
        merkle::validate_directory(function, blob.digest(), dir, limits).is_ok()
    }) && tree.root.is_some()
}

fn decode<M: Message + Default>(data: Bytes, digest: &Digest, what: &str) -> Result<M> {
    M::decode(data).with_context(|| format!("blob {digest} is not a valid {what}"))
}

fn with_unknown<M: Message + Default>(mut value: Value, data: &[u8]) -> Value {
    value["unknown_fields"] = unknown_fields::<M>(data);
    value
}

/// Every path below the Directory `root`, files, symlinks and directories, after the expansion
/// limit has been checked on the DAG's counts.
fn expanded_json(store: &dyn sa_cas::Store, root: &Digest, limits: &TreeLimits) -> Result<Value> {
    let forest = merkle::fetch_tree(store, root, limits)?;
    let mut files = Vec::new();
    let mut symlinks = Vec::new();
    let mut directories = Vec::new();
    let mut stack = vec![(*root, String::new())];
    while let Some((digest, prefix)) = stack.pop() {
        let dir = forest.get(&digest).ok_or(sa_cas::CasError::NotFound(digest))?;
        for file in &dir.files {
            files.push(json!({"path": merkle::join(&prefix, &file.name), "digest": file.digest.to_string(), "is_executable": file.is_executable}));
        }
        for link in &dir.symlinks {
            symlinks
                .push(json!({"path": merkle::join(&prefix, &link.name), "target": &*link.target}));
        }
        for sub in dir.directories.iter().rev() {
            let path = merkle::join(&prefix, &sub.name);
            directories.push(json!({"path": path, "digest": sub.digest.to_string()}));
            stack.push((sub.digest, path));
        }
    }
    Ok(json!({
        "root": root.to_string(),
        "distinct_directories": forest.len(),
        "files": files,
        "symlinks": symlinks,
        "directories": directories,
    }))
}

pub(crate) fn inspect(args: &StoreArgs, cmd: &InspectArgs, ui: &mut Ui) -> Result<()> {
    let opened = store::open_existing(args)?;
    ui.watch("store", &opened);
    let function = args.digest_function;
    let digest = Digest::parse(function, &cmd.digest)?;
    let store = &opened.store;
    let limits = args.limits.tree();
    let (kind, value) = match cmd.kind {
        Some(Kind::ActionResult) => {
            let result = store.get_action_result(&digest)?.ok_or_else(|| {
                anyhow!("no ActionResult for action {digest} in {}", opened.description)
            })?;
            (Kind::ActionResult, result_json(&result))
        }
        Some(Kind::Tree) => (Kind::Tree, tree_value(store, &digest, &limits)?),
        Some(kind) => (kind, message_value(kind, &digest, &store.read_blob(&digest)?, &limits)?),
        None => {
            let data = store.read_blob(&digest)?;
            match detect(function, &digest, &data, &limits) {
                Some(found) => found,
                None => {
                    // The likeliest intent, said with its reason.
                    if exact::<Directory>(&data).is_some() {
                        merkle::decode_directory(&digest, &data, &limits)
                            .with_context(|| format!("blob {digest} is not any known message"))?;
                    }
                    bail!("blob {digest} does not decode as any known message: pass --as")
                }
            }
        }
    };
    let kind = kind.to_possible_value().expect("every kind has a name").get_name().to_owned();
    let out = json!({"digest": digest.to_string(), "kind": kind, "value": value});
    ui.line(if ui.json() {
        out.to_string()
    } else {
        serde_json::to_string_pretty(&out).expect("JSON values serialize")
    })?;
    Ok(())
}

/// A blob read `--as tree`: a REAPI Tree, or a root Directory expanded with what is below it.
fn tree_value(store: &dyn sa_cas::Store, digest: &Digest, limits: &TreeLimits) -> Result<Value> {
    let function = store.digest_function();
    let data = store.read_blob(digest)?;
    let as_directory = merkle::decode_directory(digest, &data, limits);
    match exact::<Tree>(&data) {
        Some(tree) if as_directory.is_err() => {
            if !tree_valid(function, &tree, limits) {
                bail!("blob {digest} is a Tree holding an invalid Directory");
            }
            let mut value = tree_json(function, &tree);
            value["unknown_fields"] = unknown_fields::<Tree>(&data);
            Ok(value)
        }
        _ => {
            as_directory.with_context(|| {
                format!("blob {digest} is neither a REAPI Tree nor a Directory")
            })?;
            expanded_json(store, digest, limits)
        }
    }
}

/// A blob decoded as the message `kind` names, with the fields our protos do not know.
fn message_value(kind: Kind, digest: &Digest, data: &Bytes, limits: &TreeLimits) -> Result<Value> {
    Ok(match kind {
        Kind::Action => {
            with_unknown::<Action>(action_json(&decode(data.clone(), digest, "Action")?), data)
        }
        Kind::Command => {
            with_unknown::<Command>(command_json(&decode(data.clone(), digest, "Command")?), data)
        }
        Kind::Directory => with_unknown::<Directory>(
            directory_json(&merkle::decode_directory(digest, data, limits)?),
            data,
        ),
        Kind::SpeculativeActions => with_unknown::<SpeculativeActions>(
            speculative_json(&decode(data.clone(), digest, "SpeculativeActions")?),
            data,
        ),
        Kind::Artifact => with_unknown::<Artifact>(
            artifact_json(&decode(data.clone(), digest, "Artifact")?),
            data,
        ),
        Kind::ActionResult | Kind::Tree => unreachable!("read by their own functions"),
    })
}
