//! The build graph (JSON): the input of `generate`, `instantiate` and `prime`.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use sa_cas::{Digest, DigestFunction};

use crate::StoreArgs;
use serde_json::{Map, Value};

/// One element of a build.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Element {
    pub(crate) name: String,
    pub(crate) cache_key: Option<String>,
    pub(crate) sources: Option<Digest>,
    pub(crate) artifact: Option<Digest>,
    pub(crate) build_deps: Vec<String>,
    pub(crate) subactions: Vec<Digest>,
    pub(crate) speculative_actions: Option<Digest>,
}

/// A validated build graph.
#[derive(Clone, Debug)]
pub(crate) struct Graph {
    pub(crate) digest_function: DigestFunction,
    pub(crate) elements: Vec<Element>,
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
];

impl Graph {
    /// Reads and validates a graph file; digests use `function` unless the file names another,
    /// which is then an error.
    pub(crate) fn load(path: &Path, args: &StoreArgs) -> Result<Graph> {
        let size = std::fs::metadata(path)
            .with_context(|| format!("reading graph {}", path.display()))?
            .len();
        let max = args.limits.max_graph_bytes;
        if size > max {
            bail!("graph {}: {size} bytes, more than --max-graph-bytes {max}", path.display());
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading graph {}", path.display()))?;
        Graph::parse(&text, args.digest_function)
            .with_context(|| format!("graph {}", path.display()))
    }

    pub(crate) fn parse(text: &str, function: DigestFunction) -> Result<Graph> {
        let value: Value = serde_json::from_str(text).context("invalid JSON")?;
        let top = value.as_object().ok_or_else(|| anyhow!("the top level is not an object"))?;
        for key in top.keys() {
            if key != "digest_function" && key != "elements" {
                bail!("unknown key {key:?} at the top level");
            }
        }
        if let Some(named) = top.get("digest_function") {
            let named =
                named.as_str().ok_or_else(|| anyhow!("key \"digest_function\" is not a string"))?;
            let named: DigestFunction = named.parse().with_context(|| "key \"digest_function\"")?;
            if named != function {
                bail!("the graph uses {named}, the store uses {function} (see --digest-function)");
            }
        }
        let elements = match top.get("elements") {
            None => bail!("missing key \"elements\""),
            Some(Value::Array(elements)) => elements,
            Some(_) => bail!("key \"elements\" is not an array"),
        };
        let mut parsed = Vec::with_capacity(elements.len());
        for (i, element) in elements.iter().enumerate() {
            let object =
                element.as_object().ok_or_else(|| anyhow!("element {i} is not an object"))?;
            let name = match object.get("name") {
                Some(Value::String(name)) if !name.is_empty() => name.clone(),
                Some(_) => bail!("element {i}: key \"name\" is not a non-empty string"),
                None => bail!("element {i}: missing key \"name\""),
            };
            parsed.push(parse_element(object, name, function)?);
        }
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

    pub(crate) fn get(&self, name: &str) -> Option<&Element> {
        self.index.get(name).map(|&i| &self.elements[i])
    }

    pub(crate) fn get_mut(&mut self, name: &str) -> Option<&mut Element> {
        self.index.get(name).map(|&i| &mut self.elements[i])
    }

    /// Element indices, dependencies before dependents; fails naming a cycle.
    pub(crate) fn topological_order(&self) -> Result<Vec<usize>> {
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
    pub(crate) fn select(
        &self,
        names: &[String],
        keep: impl Fn(&Element) -> bool,
    ) -> Result<Vec<&Element>> {
        let wanted: HashSet<&str> = names.iter().map(String::as_str).collect();
        for name in &wanted {
            if !self.index.contains_key(*name) {
                bail!("unknown element {name:?} (--element)");
            }
        }
        Ok(self
            .topological_order()?
            .into_iter()
            .map(|i| &self.elements[i])
            .filter(|e| if wanted.is_empty() { keep(e) } else { wanted.contains(e.name.as_str()) })
            .collect())
    }

    pub(crate) fn to_json(&self) -> Value {
        let elements: Vec<Value> = self
            .elements
            .iter()
            .map(|e| {
                let mut object = Map::new();
                object.insert("name".into(), e.name.clone().into());
                if let Some(key) = &e.cache_key {
                    object.insert("cache_key".into(), key.clone().into());
                }
                for (key, digest) in [("sources", e.sources), ("artifact", e.artifact)] {
                    if let Some(d) = digest {
                        object.insert(key.into(), d.to_string().into());
                    }
                }
                if !e.build_deps.is_empty() {
                    object.insert("build_deps".into(), e.build_deps.clone().into());
                }
                if !e.subactions.is_empty() {
                    let list: Vec<Value> =
                        e.subactions.iter().map(|d| d.to_string().into()).collect();
                    object.insert("subactions".into(), list.into());
                }
                if let Some(d) = e.speculative_actions {
                    object.insert("speculative_actions".into(), d.to_string().into());
                }
                Value::Object(object)
            })
            .collect();
        serde_json::json!({ "digest_function": self.digest_function.name(), "elements": elements })
    }
}

fn parse_element(
    object: &Map<String, Value>,
    name: String,
    function: DigestFunction,
) -> Result<Element> {
    let context = |key: &str| format!("element {name:?}: key {key:?}");
    for key in object.keys() {
        if !ELEMENT_KEYS.contains(&key.as_str()) {
            bail!("element {name:?}: unknown key {key:?}");
        }
    }
    let string = |key: &str| -> Result<Option<String>> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(anyhow!("{} is not a string", context(key))),
        }
    };
    let digest = |key: &str| -> Result<Option<Digest>> {
        string(key)?
            .map(|s| {
                Digest::parse(function, &s)
                    .map_err(anyhow::Error::from)
                    .with_context(|| context(key))
            })
            .transpose()
    };
    let list = |key: &str| -> Result<Vec<String>> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| anyhow!("{}: item {i} is not a string", context(key)))
                })
                .collect(),
            Some(_) => Err(anyhow!("{} is not an array", context(key))),
        }
    };
    let subactions = list("subactions")?
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Digest::parse(function, s)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("{}: item {i}", context("subactions")))
        })
        .collect::<Result<_>>()?;
    let build_deps = list("build_deps")?;
    if build_deps.contains(&name) {
        bail!("{}: the element depends on itself", context("build_deps"));
    }
    let mut seen = HashSet::new();
    if let Some(dup) = build_deps.iter().find(|d| !seen.insert(*d)) {
        bail!("{}: {dup:?} is listed twice", context("build_deps"));
    }
    Ok(Element {
        cache_key: string("cache_key")?,
        sources: digest("sources")?,
        artifact: digest("artifact")?,
        speculative_actions: digest("speculative_actions")?,
        build_deps,
        subactions,
        name,
    })
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
                let again = Graph::parse(&graph.to_json().to_string(), DigestFunction::Sha256)
                    .expect("a graph's own JSON parses");
                prop_assert_eq!(again.elements, graph.elements);
            }
        }
    }
}
