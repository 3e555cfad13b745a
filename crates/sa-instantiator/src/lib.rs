//! Instantiation of speculative actions.
//!
//! Before the next build, an [`Instantiator`] adapts the actions an element's previous build
//! recorded to the current sources and dependencies, so they can be executed ahead of the
//! build (priming). For each overlay of each action it resolves the current digest:
//!
//! - **SOURCE**: the file at `source_path` in the current sources of the element or the named
//!   element;
//! - **ARTIFACT**: the file at `source_path` in the dependency's current artifact; when the
//!   dependency is not built yet, the overlay is traced through the dependency's previous
//!   `artifact_overlays` to its current sources (or its producers' results), so downstream
//!   actions can be primed while the dependency is still building;
//! - **ACTION**: the output at `source_path` in the result of the instantiated producer;
//!   unresolved until that result exists.
//!
//! Overlays of dependencies whose cache key did not change are skipped. Each file occurrence
//! is replaced by the overlay [`sa_generator::model::choose`] picks for its path, the rule the
//! generator attributed it by, so identical files stay apart. The rewrite is memoized: a
//! directory is rewritten only when its subtree holds a digest that changes, once per distinct
//! set of relevant replacements, and the result is shared by every action of the element;
//! blobs are edited at the byte level, so fields our protos do not know survive. Actions run in
//! parallel (rayon), in waves when ACTION overlays make one wait for another.
//!
//! ```
//! use sa_cas::{Cas, DigestFunction, MemoryCas, merkle::{self, DirectoryBuilder}, write_message};
//! use sa_generator::{ElementTrees, GenerateConfig, GenerateInput, generate};
//! use sa_instantiator::{ElementState, InstantiateConfig, Instantiator};
//! use sa_proto::reapi::Action;
//!
//! let cas = MemoryCas::new(DigestFunction::Sha256);
//! let f = cas.digest_function();
//! let tree = |content: &str| {
//!     let file = cas.write_blob(content.to_owned().into()).unwrap();
//!     let dir = DirectoryBuilder::new().file("main.c", &file, false).build(f).unwrap();
//!     cas.write_blob(merkle::directory_blob(f, &dir).into_data()).unwrap()
//! };
//! let (old, new) = (tree("int v = 1;\n"), tree("int v = 2;\n"));
//! let action = |root: sa_cas::Digest| write_message(&cas, &Action { input_root_digest: Some(root.to_proto()), ..Default::default() }).unwrap();
//! let recorded = action(old);
//! let input = GenerateInput {
//!     element: ElementTrees { name: "app".into(), sources: Some(old), artifact: None },
//!     dependencies: vec![],
//!     subactions: vec![recorded],
//!     earlier_sources: vec![],
//! };
//! let spec = generate(&cas, &input, &GenerateConfig::default()).unwrap().digest;
//! let state = ElementState { name: "app".into(), sources: Some(new), ..Default::default() };
//! let instantiator = Instantiator::new(&cas, vec![state], InstantiateConfig::default()).unwrap();
//! let outcome = &instantiator.instantiate_element("app", &spec).unwrap()[0];
//! assert!(outcome.complete);
//! assert_eq!(outcome.action, action(new), "the action the next build will run");
//! ```

#![deny(missing_docs)]

mod instantiate;
mod splice;

pub use instantiate::{
    ElementState, IndexStats, InstantiateConfig, InstantiateError, InstantiatedAction,
    Instantiator, StoreStep,
};
