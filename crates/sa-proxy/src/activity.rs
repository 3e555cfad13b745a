//! Which invocations have recorded calls open, and since when each has been quiet: what tells
//! a learner that a build has ended (its recording alone cannot: a call is written when it
//! ends, so a long Execute looks like silence).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Invocations remembered at once; past it the longest-quiet one with no call open is
/// forgotten (a learner then falls back to its recording's age).
const MAX_REMEMBERED: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Active {
    open: usize,
    last: Instant,
}

/// The recorded calls of each invocation, keyed like its recording file (the file's stem).
#[derive(Debug, Default)]
pub struct Activity {
    invocations: Mutex<HashMap<String, Active>>,
}

/// What [`Activity::of`] knows of one invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Recorded calls are open.
    Busy,
    /// No call open, the last one ended this long ago.
    Quiet(Duration),
    /// Nothing known (no call seen since the proxy started, or forgotten).
    Unknown,
}

impl Activity {
    pub(crate) fn begin(&self, stem: &str) {
        let mut invocations = self.invocations.lock().unwrap_or_else(|e| e.into_inner());
        if !invocations.contains_key(stem) && invocations.len() >= MAX_REMEMBERED {
            let quietest = invocations
                .iter()
                .filter(|(_, a)| a.open == 0)
                .min_by_key(|(_, a)| a.last)
                .map(|(stem, _)| stem.clone());
            match quietest {
                Some(stem) => invocations.remove(&stem),
                None => return, // Every one busy: this one stays unknown.
            };
        }
        let active =
            invocations.entry(stem.to_owned()).or_insert(Active { open: 0, last: Instant::now() });
        active.open += 1;
        active.last = Instant::now();
    }

    pub(crate) fn end(&self, stem: &str) {
        let mut invocations = self.invocations.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(active) = invocations.get_mut(stem) {
            active.open = active.open.saturating_sub(1);
            active.last = Instant::now();
        }
    }

    /// What is known of the invocation recorded in `<stem>.jsonl`.
    pub fn of(&self, stem: &str) -> State {
        let invocations = self.invocations.lock().unwrap_or_else(|e| e.into_inner());
        match invocations.get(stem) {
            Some(a) if a.open > 0 => State::Busy,
            Some(a) => State::Quiet(a.last.elapsed()),
            None => State::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_call_is_busy_however_long_and_memory_stays_bounded() {
        let activity = Activity::default();
        assert_eq!(activity.of("a"), State::Unknown);
        activity.begin("a");
        activity.begin("a");
        activity.end("a");
        assert_eq!(activity.of("a"), State::Busy);
        activity.end("a");
        assert!(matches!(activity.of("a"), State::Quiet(_)));
        for n in 0..MAX_REMEMBERED + 10 {
            activity.begin(&format!("x{n}"));
            activity.end(&format!("x{n}"));
        }
        assert_eq!(activity.invocations.lock().expect("not poisoned").len(), MAX_REMEMBERED);
        assert_eq!(activity.of("a"), State::Unknown, "the quietest was forgotten");
    }
}
