//! Overlay generation for speculative-actions.
//!
//! After a build, this crate turns the element's recorded subactions into a
//! `SpeculativeActions` message: a parallel digest index over the element's sources, its
//! dependencies' sources and artifacts, and earlier subactions' outputs maps every input file of
//! every subaction to its origin (SOURCE, ACTION or ARTIFACT overlays), deterministically.

#![deny(missing_docs)]
