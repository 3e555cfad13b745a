//! Overlay generation for speculative-actions.
//!
//! After a build, [`generate`] turns an element's recorded subactions into a
//! `SpeculativeActions` message (`buildstream/v2/speculative_actions.proto`) stored in the CAS.
//! For every input file of every subaction it finds where the content came from:
//!
//! - **SOURCE**: a file of the element's own sources (`source_element` "") or of a direct
//!   dependency's sources;
//! - **ACTION**: an output (`ActionResult.output_files`) of an *earlier* subaction of the same
//!   element, so a link step can be primed once its compile steps have results;
//! - **ARTIFACT**: a file of a direct dependency's artifact.
//!
//! Unlike the reference, origins are not keyed by digest alone: every origin of a digest is
//! kept, and each occurrence picks the one whose path shares the longest suffix with the
//! occurrence's path, then by priority SOURCE, ACTION, ARTIFACT ([`model::choose`], shared with
//! the instantiator). Each action gets one overlay per distinct (digest, origin) it uses, so two
//! identical files stay distinguishable when only one of them changes. `artifact_overlays`
//! trace the element's own artifact files the same way. Overlays are sorted by type priority,
//! target digest, element, path: the blob is byte-identical whatever the thread count.
//!
//! ```
//! use sa_cas::{Cas, DigestFunction, MemoryCas, merkle::{self, DirectoryBuilder}, write_message};
//! use sa_generator::{ElementTrees, GenerateConfig, GenerateInput, generate};
//! use sa_proto::reapi::Action;
//!
//! let cas = MemoryCas::new(DigestFunction::Sha256);
//! let f = cas.digest_function();
//! let main_c = cas.write_blob("int main;\n".into()).unwrap();
//! let sources = DirectoryBuilder::new().file("main.c", &main_c, false).build(f).unwrap();
//! let sources = cas.write_blob(merkle::directory_blob(f, &sources).into_data()).unwrap();
//! // The compile step saw the same tree as its input root.
//! let action = Action { input_root_digest: Some(sources.to_proto()), ..Default::default() };
//! let action = write_message(&cas, &action).unwrap();
//! let input = GenerateInput {
//!     element: ElementTrees { name: "app.bst".into(), sources: Some(sources), artifact: None },
//!     dependencies: vec![],
//!     subactions: vec![action],
//!     earlier_sources: vec![],
//! };
//! let generated = generate(&cas, &input, &GenerateConfig::default()).unwrap();
//! assert_eq!((generated.stats.actions, generated.stats.source_overlays), (1, 1));
//! ```

#![deny(missing_docs)]

pub mod actions_index;
mod generate;
pub mod graph;
mod index;
pub mod model;
pub mod skeleton;

pub use actions_index::{ActionsIndex, IndexedAction};
pub use generate::{
    ElementTrees, GenerateConfig, GenerateError, GenerateInput, GenerateStats, Generated, Progress,
    SkippedSubaction, generate, generate_observed,
};
pub use index::{Candidates, OriginIndex};
pub use skeleton::InputSkeleton;
