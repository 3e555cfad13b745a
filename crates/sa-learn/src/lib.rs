//! Learning that accumulates: a project's learned state, updated by every build, from which
//! the next build is primed with no graph file and no person in the loop.
//!
//! Builds are incremental: a build asks the remote only for the actions it re-runs. So `sa`
//! keeps, per project (a name; `sa` uses one per workspace by default), for every action
//! *identity* ([`Identity`]: the working directory and sorted output paths of its Command) the
//! newest recorded action. A build updates the identities it re-ran and keeps the others,
//! whose inputs did not change, so the state after builds 1..k is what a clean build k would
//! teach ([`LearnedState::update`] says how failures and vanished identities are forgotten).
//! After each build the speculative actions of every entry are generated against the sources
//! that build saw, as one element.
//!
//! The state lives in the store itself, local or remote, found through the ActionCache by a
//! key made of the project's name (as BuildStream finds speculative actions under an element's
//! weak key): [`load`], [`save`]. [`learn`] is one build's whole step.
//!
//! ```
//! use sa_cas::{DigestFunction, MemoryCas};
//! use sa_learn::{LearnedState, Observed, Identity};
//!
//! let f = DigestFunction::Sha256;
//! let mut state = LearnedState::new("app");
//! let a_o = Identity { working_directory: String::new(), outputs: vec!["a.o".into()] };
//! let build = |n: u8| vec![Observed { identity: a_o.clone(), action: f.hash_bytes(&[n]), succeeded: true, cached: false }];
//! state.update(&build(1), 10);
//! let update = state.update(&[], 10); // an incremental build that re-ran nothing
//! assert!(update.learned.is_empty());
//! assert_eq!(state.entries[&a_o].action, f.hash_bytes(&[1]));
//! # let _ = MemoryCas::new(f);
//! ```

#![deny(missing_docs)]

mod identity;
mod learn;
mod order;
mod state;

pub use identity::Identity;
pub use learn::{
    LearnConfig, LearnError, Learned, LeftOut, Recorded, learn, load, recorded_from_log,
    recorded_from_proxy, save,
};
pub use order::{Ordered, in_producer_order, producer_order};
pub use state::{
    BuildSummary, DEFAULT_FORGET_AFTER, Entry, FORMAT, LearnedState, Observed, Prediction, Priming,
    Update,
};
