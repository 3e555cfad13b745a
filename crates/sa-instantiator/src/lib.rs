//! Instantiation of speculative actions.
//!
//! Before the next build, this crate resolves the overlays of an element's `SpeculativeActions`
//! against the current sources, artifacts and producer results, and rewrites the recorded input
//! trees with a memoizing tree rewriter, storing the adapted Actions.

#![deny(missing_docs)]
