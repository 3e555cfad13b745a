//! How the process ends: usage errors (exit 2), broken pipes (quietly 0), signals (128 + the
//! signal, after ending running actions).

use std::sync::atomic::{AtomicI32, Ordering};

/// The signal being handled, once one came (0 before).
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

/// On SIGINT, SIGTERM or SIGHUP: end every running action's process group, remove every
/// scratch directory, and exit with 128 + the signal, as shells report it.
pub(crate) fn install_signal_handlers() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        if let Some(signal) = signals.forever().next() {
            // Before anything is ended: the command failing because its actions were ended
            // must not exit first with its own code (see `exit_if_interrupted`).
            INTERRUPTED.store(signal, Ordering::SeqCst);
            let (groups, dirs) = sa_exec::interrupt();
            eprintln!(
                "sa: interrupted by signal {signal}: ended {groups} running actions, removed {dirs} scratch directories"
            );
            std::process::exit(128 + signal);
        }
    })?;
    Ok(())
}

/// When a signal is being handled, waits for the handler to finish its cleanup and exit with
/// 128 + the signal (exits so itself if the handler takes more than 30 s): a command that
/// ended because the handler ended its actions never exits with its own code.
pub(crate) fn exit_if_interrupted() {
    let signal = INTERRUPTED.load(Ordering::SeqCst);
    if signal == 0 {
        return;
    }
    std::thread::sleep(std::time::Duration::from_secs(30));
    std::process::exit(128 + signal);
}

/// A combination of options that cannot work together: exit 2, like clap's own usage errors.
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Fails with a [`UsageError`].
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::exit::UsageError(format!($($arg)*))))
    };
}
pub(crate) use usage;

pub(crate) fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The flag that settles an error a library reported without naming flags (libraries know
/// nothing of the command line), as a note for the error's line.
pub(crate) fn hint(err: &anyhow::Error) -> Option<&'static str> {
    use sa_generator::graph::GraphError;
    err.chain().find_map(|cause| {
        if let Some(GraphError::DigestFunction { .. }) = cause.downcast_ref::<GraphError>() {
            Some("see --digest-function")
        } else if let Some(GraphError::UnknownElement(_)) = cause.downcast_ref::<GraphError>() {
            Some("--element")
        } else if let Some(sa_cas::CasError::StoreDigestFunction { .. }) = cause.downcast_ref() {
            Some("see --digest-function")
        } else {
            None
        }
    })
}
