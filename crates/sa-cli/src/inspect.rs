//! `inspect`: decode a blob and print it as JSON.

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use prost::Message;
use sa_cas::merkle::{self, TreeLimits};
use sa_cas::{ActionCache, Cas, Digest, DigestFunction};
use sa_proto::buildstream::v2::speculative_actions::Overlay;
use sa_proto::buildstream::v2::{Artifact, SpeculativeActions};
use sa_proto::reapi::{self, Action, ActionResult, Command, Directory};
use serde_json::{Value, json};

use crate::{StoreArgs, Ui, store};

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

fn directory_json(dir: &Directory) -> Value {
    json!({
        "files": dir.files.iter().map(|f| json!({"name": f.name, "digest": d(&f.digest), "is_executable": f.is_executable})).collect::<Vec<_>>(),
        "directories": dir.directories.iter().map(|x| json!({"name": x.name, "digest": d(&x.digest)})).collect::<Vec<_>>(),
        "symlinks": dir.symlinks.iter().map(|s| json!({"name": s.name, "target": s.target})).collect::<Vec<_>>(),
    })
}

fn result_json(r: &ActionResult) -> Value {
    json!({
        "exit_code": r.exit_code,
        "output_files": r.output_files.iter().map(|f| json!({"path": f.path, "digest": d(&f.digest), "is_executable": f.is_executable})).collect::<Vec<_>>(),
        "output_directories": r.output_directories.iter().map(|o| json!({"path": o.path, "tree_digest": d(&o.tree_digest)})).collect::<Vec<_>>(),
        "stdout_digest": d(&r.stdout_digest),
        "stderr_digest": d(&r.stderr_digest),
        "subactions": r.subactions.iter().map(|s| d(&Some(s.clone()))).collect::<Vec<_>>(),
    })
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
    if let Some(dir) = exact::<Directory>(data) {
        if merkle::validate_directory(function, digest, &dir, limits).is_ok() {
            return Some((Kind::Directory, directory_json(&dir)));
        }
    }
    if let Some(a) = exact::<Action>(data) {
        if digests_valid(function, &[&a.command_digest, &a.input_root_digest]) {
            return Some((Kind::Action, action_json(&a)));
        }
    }
    if let Some(s) = exact::<SpeculativeActions>(data) {
        let ok = !(s.actions.is_empty() && s.artifact_overlays.is_empty())
            && s.actions.iter().all(|a| digests_valid(function, &[&a.base_action_digest]));
        if ok {
            return Some((Kind::SpeculativeActions, speculative_json(&s)));
        }
    }
    if let Some(c) = exact::<Command>(data) {
        if !c.arguments.is_empty() {
            return Some((Kind::Command, command_json(&c)));
        }
    }
    if let Some(a) = exact::<Artifact>(data) {
        if a.version > 0 {
            return Some((Kind::Artifact, artifact_json(&a)));
        }
    }
    None
}

fn decode<M: Message + Default>(data: Bytes, digest: &Digest, what: &str) -> Result<M> {
    M::decode(data).with_context(|| format!("blob {digest} is not a valid {what}"))
}

pub(crate) fn inspect(args: &StoreArgs, cmd: &InspectArgs, ui: &mut Ui) -> Result<()> {
    let opened = store::open(args)?;
    let function = args.digest_function;
    let digest = Digest::parse(function, &cmd.digest)?;
    let store = &opened.store;
    let (kind, value) = match cmd.kind {
        Some(Kind::ActionResult) => {
            let result = store.get_action_result(&digest)?.ok_or_else(|| {
                anyhow!("no ActionResult for action {digest} in {}", opened.description)
            })?;
            (Kind::ActionResult, result_json(&result))
        }
        Some(Kind::Tree) => {
            let forest = merkle::fetch_tree(store, &digest, &args.limits.tree())?;
            let files = forest.files(&digest)?;
            let value: Vec<Value> = files
                .iter()
                .map(|(path, d, exec)| json!({"path": path, "digest": d.to_string(), "is_executable": exec}))
                .collect();
            (
                Kind::Tree,
                json!({"root": digest.to_string(), "directories": forest.len(), "files": value}),
            )
        }
        Some(kind) => {
            let data = store.read_blob(&digest)?;
            let value = match kind {
                Kind::Action => action_json(&decode(data, &digest, "Action")?),
                Kind::Command => command_json(&decode(data, &digest, "Command")?),
                Kind::Directory => {
                    directory_json(&merkle::decode_directory(&digest, &data, &args.limits.tree())?)
                }
                Kind::SpeculativeActions => {
                    speculative_json(&decode(data, &digest, "SpeculativeActions")?)
                }
                Kind::Artifact => artifact_json(&decode(data, &digest, "Artifact")?),
                Kind::ActionResult | Kind::Tree => unreachable!("handled above"),
            };
            (kind, value)
        }
        None => {
            let data = store.read_blob(&digest)?;
            match detect(function, &digest, &data, &args.limits.tree()) {
                Some(found) => found,
                None => bail!("blob {digest} does not decode as any known message: pass --as"),
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
    ui.report_stats(&opened, None);
    Ok(())
}
