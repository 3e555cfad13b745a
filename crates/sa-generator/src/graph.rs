//! The build graph: a build's elements with their sources, artifacts, dependencies, recorded
//! subactions and stored `SpeculativeActions`, as the JSON file `sa generate`, `instantiate`
//! and `prime` read and write. This module is the format's one owner: the reader validates
//! everything (an error names the element and the key), the writer is serde's.
//!
//! ```json
//! {"digest_function": "sha256", "elements": [
//!   {"name": "lib.bst", "cache_key": "…", "sources": "HASH/SIZE", "artifact": "HASH/SIZE",
//!    "build_deps": [], "subactions": ["HASH/SIZE"], "speculative_actions": "HASH/SIZE",
//!    "actions_index": "HASH/SIZE"}]}
//! ```

use std::collections::{HashMap, HashSet};

use sa_cas::{Digest, DigestFunction};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

/// What is wrong with a graph, naming the element and the key.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// The graph breaks a rule of the format (the message names the element and the key).
    #[error("{0}")]
    Invalid(String),
    /// The graph names a digest function other than the one it is read with.
    #[error("the graph uses {named}, the store uses {wanted}")]
    DigestFunction {
        /// The graph's function.
        named: DigestFunction,
        /// The function it was read with (the store's).
        wanted: DigestFunction,
    },
    /// A selection names an element the graph does not have.
    #[error("unknown element {0:?}")]
    UnknownElement(String),
}

macro_rules! bail {
    ($($arg:tt)*) => { return Err(GraphError::Invalid(format!($($arg)*))) };
}

fn error(message: impl Into<String>) -> GraphError {
    GraphError::Invalid(message.into())
}

fn digest_text<S: Serializer>(digest: &Option<Digest>, serializer: S) -> Result<S::Ok, S::Error> {
    match digest {
        Some(digest) => serializer.collect_str(digest),
        None => serializer.serialize_none(),
    }
}

fn digest_list<S: Serializer>(digests: &[Digest], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(digests.iter().map(Digest::to_string))
}

fn function_name<S: Serializer>(function: &DigestFunction, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(function.name())
}

/// One element of a build.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Element {
    /// Its name, unique in the graph.
    pub name: String,
    /// Its cache key (an element whose key did not change is not re-instantiated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
    /// Root Directory of its sources.
    #[serde(serialize_with = "digest_text", skip_serializing_if = "Option::is_none")]
    pub sources: Option<Digest>,
    /// Root Directory of its artifact's files, once built.
    #[serde(serialize_with = "digest_text", skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Digest>,
    /// The elements its build depends on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub build_deps: Vec<String>,
    /// The Action digests its build ran, in order.
    #[serde(serialize_with = "digest_list", skip_serializing_if = "Vec::is_empty")]
    pub subactions: Vec<Digest>,
    /// Its stored `SpeculativeActions`.
    #[serde(serialize_with = "digest_text", skip_serializing_if = "Option::is_none")]
    pub speculative_actions: Option<Digest>,
    /// The actions index `sa generate` stored for `speculative_actions`. The graph is the
    /// user's own file, so this binds the index to the blob: the instantiator uses it as is,
    /// where an index found through the ActionCache (which anyone who can write the cache
    /// chooses) is checked against the blob first.
    #[serde(serialize_with = "digest_text", skip_serializing_if = "Option::is_none")]
    pub actions_index: Option<Digest>,
}

/// A validated build graph: unique names, known dependencies, no cycle, one digest function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Graph {
    /// The digest function of every digest in it.
    #[serde(serialize_with = "function_name")]
    pub digest_function: DigestFunction,
    /// Its elements, in the file's order.
    pub elements: Vec<Element>,
    #[serde(skip)]
    index: HashMap<String, usize>,
}

const ELEMENT_KEYS: &[&str] = &[
    "name",
    "cache_key",
    "sources",
    "artifact",
    "build_deps",
    "subactions",
    "speculative_actions",
    "actions_index",
];

impl Graph {
    /// A graph of `elements`, validated as a file would be.
    pub fn new(function: DigestFunction, elements: Vec<Element>) -> Result<Graph, GraphError> {
        for (i, element) in elements.iter().enumerate() {
            if element.name.is_empty() {
                bail!("element {i}: key \"name\" is not a non-empty string");
            }
            check_deps(element)?;
            for digest in element_digests(element) {
                if digest.function() != function {
                    bail!(
                        "element {:?}: digest {digest} is {}, the graph uses {function}",
                        element.name,
                        digest.function()
                    );
                }
            }
        }
        Graph::validated(function, elements)
    }

    /// Parses and validates a graph.
    pub fn parse(text: &str, function: DigestFunction) -> Result<Graph, GraphError> {
        let value: Value =
            serde_json::from_str(text).map_err(|err| error(format!("invalid JSON: {err}")))?;
        let top = value.as_object().ok_or_else(|| error("the top level is not an object"))?;
        for key in top.keys() {
            if key != "digest_function" && key != "elements" {
                bail!("unknown key {key:?} at the top level");
            }
        }
        if let Some(named) = top.get("digest_function") {
            let named =
                named.as_str().ok_or_else(|| error("key \"digest_function\" is not a string"))?;
            let named: DigestFunction =
                named.parse().map_err(|err| error(format!("key \"digest_function\": {err}")))?;
            if named != function {
                return Err(GraphError::DigestFunction { named, wanted: function });
            }
        }
        let elements = match top.get("elements") {
            None => bail!("missing key \"elements\""),
            Some(Value::Array(elements)) => elements,
            Some(_) => bail!("key \"elements\" is not an array"),
        };
        let mut parsed = Vec::with_capacity(elements.len());
        for (i, element) in elements.iter().enumerate() {
            let object = element
                .as_object()
                .ok_or_else(|| error(format!("element {i} is not an object")))?;
            let name = match object.get("name") {
                Some(Value::String(name)) if !name.is_empty() => name.clone(),
                Some(_) => bail!("element {i}: key \"name\" is not a non-empty string"),
                None => bail!("element {i}: missing key \"name\""),
            };
            parsed.push(parse_element(object, name, function)?);
        }
        Graph::validated(function, parsed)
    }

    /// Checks what involves several elements: unique names, known dependencies, no cycle.
    fn validated(function: DigestFunction, parsed: Vec<Element>) -> Result<Graph, GraphError> {
        let mut index = HashMap::new();
        for (i, element) in parsed.iter().enumerate() {
            if index.insert(element.name.clone(), i).is_some() {
                bail!("element {:?} appears twice", element.name);
            }
        }
        for element in &parsed {
            for dep in &element.build_deps {
                if !index.contains_key(dep) {
                    bail!(
                        "element {:?}: key \"build_deps\": unknown element {dep:?}",
                        element.name
                    );
                }
            }
        }
        let graph = Graph { digest_function: function, elements: parsed, index };
        graph.topological_order()?;
        Ok(graph)
    }

    /// The element called `name`.
    pub fn get(&self, name: &str) -> Option<&Element> {
        self.index.get(name).map(|&i| &self.elements[i])
    }

    /// The element called `name`, to fill in (its name and dependencies stay as validated).
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Element> {
        self.index.get(name).map(|&i| &mut self.elements[i])
    }

    /// Element indices, dependencies before dependents; fails naming a cycle.
    pub fn topological_order(&self) -> Result<Vec<usize>, GraphError> {
        let n = self.elements.len();
        let mut pending: Vec<usize> = self.elements.iter().map(|e| e.build_deps.len()).collect();
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, element) in self.elements.iter().enumerate() {
            for dep in &element.build_deps {
                dependents[self.index[dep]].push(i);
            }
        }
        let mut ready: Vec<usize> = (0..n).rev().filter(|&i| pending[i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = ready.pop() {
            order.push(i);
            for &j in dependents[i].iter().rev() {
                pending[j] -= 1;
                if pending[j] == 0 {
                    ready.push(j);
                }
            }
        }
        if order.len() < n {
            let mut cycle: Vec<&str> = (0..n)
                .filter(|&i| pending[i] > 0)
                .map(|i| self.elements[i].name.as_str())
                .collect();
            cycle.sort_unstable();
            bail!("build_deps form a cycle among {cycle:?}");
        }
        Ok(order)
    }

    /// Selects elements by name (all when `names` is empty, filtered by `keep`), in
    /// topological order; an unknown name is an error.
    pub fn select(
        &self,
        names: &[String],
        keep: impl Fn(&Element) -> bool,
    ) -> Result<Vec<&Element>, GraphError> {
        let wanted: HashSet<&str> = names.iter().map(String::as_str).collect();
        for name in &wanted {
            if !self.index.contains_key(*name) {
                return Err(GraphError::UnknownElement((*name).to_owned()));
            }
        }
        Ok(self
            .topological_order()?
            .into_iter()
            .map(|i| &self.elements[i])
            .filter(|e| if wanted.is_empty() { keep(e) } else { wanted.contains(e.name.as_str()) })
            .collect())
    }

    /// The graph as its JSON file holds it (pretty-printed, with a final newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a graph serializes") + "\n"
    }
}

/// Every digest an element names.
fn element_digests(element: &Element) -> impl Iterator<Item = &Digest> {
    [&element.sources, &element.artifact, &element.speculative_actions, &element.actions_index]
        .into_iter()
        .flatten()
        .chain(&element.subactions)
}

/// An element's own dependency list: not itself, none twice.
fn check_deps(element: &Element) -> Result<(), GraphError> {
    let context = format!("element {:?}: key \"build_deps\"", element.name);
    if element.build_deps.contains(&element.name) {
        bail!("{context}: the element depends on itself");
    }
    let mut seen = HashSet::new();
    if let Some(dup) = element.build_deps.iter().find(|d| !seen.insert(*d)) {
        bail!("{context}: {dup:?} is listed twice");
    }
    Ok(())
}

fn parse_element(
    object: &Map<String, Value>,
    name: String,
    function: DigestFunction,
) -> Result<Element, GraphError> {
    let context = |key: &str| format!("element {name:?}: key {key:?}");
    for key in object.keys() {
        if !ELEMENT_KEYS.contains(&key.as_str()) {
            bail!("element {name:?}: unknown key {key:?}");
        }
    }
    let string = |key: &str| -> Result<Option<String>, GraphError> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(error(format!("{} is not a string", context(key)))),
        }
    };
    let digest = |key: &str| -> Result<Option<Digest>, GraphError> {
        string(key)?
            .map(|s| {
                Digest::parse(function, &s).map_err(|err| error(format!("{}: {err}", context(key))))
            })
            .transpose()
    };
    let list = |key: &str| -> Result<Vec<String>, GraphError> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| error(format!("{}: item {i} is not a string", context(key))))
                })
                .collect(),
            Some(_) => Err(error(format!("{} is not an array", context(key)))),
        }
    };
    let subactions = list("subactions")?
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Digest::parse(function, s)
                .map_err(|err| error(format!("{}: item {i}: {err}", context("subactions"))))
        })
        .collect::<Result<_, _>>()?;
    let build_deps = list("build_deps")?;
    let element = Element {
        cache_key: string("cache_key")?,
        sources: digest("sources")?,
        artifact: digest("artifact")?,
        speculative_actions: digest("speculative_actions")?,
        actions_index: digest("actions_index")?,
        build_deps,
        subactions,
        name,
    };
    check_deps(&element)?;
    Ok(element)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// JSON values shaped like graphs: the right keys with wrong or right values, nesting.
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-z0-9/.]{0,70}".prop_map(Value::from),
            Just(Value::from(format!("{}/5", "e".repeat(64)))),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("name".to_owned()),
                        Just("elements".to_owned()),
                        Just("build_deps".to_owned()),
                        Just("subactions".to_owned()),
                        Just("sources".to_owned()),
                        Just("digest_function".to_owned()),
                        "[a-z_]{1,12}",
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_text_parses_or_fails_cleanly(text in "\\PC{0,300}") {
            let _ = Graph::parse(&text, DigestFunction::Sha256);
        }

        #[test]
        fn arbitrary_json_parses_or_fails_and_valid_graphs_round_trip(value in json()) {
            let text = value.to_string();
            if let Ok(graph) = Graph::parse(&text, DigestFunction::Sha256) {
                let again = Graph::parse(&graph.to_json(), DigestFunction::Sha256)
                    .expect("a graph's own JSON parses");
                prop_assert_eq!(again.elements, graph.elements);
            }
        }
    }
}
