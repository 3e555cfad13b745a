//! How the process ends: usage errors (exit 2), broken pipes (quietly 0), signals (128 + the
//! signal, after ending running actions).

/// On SIGINT, SIGTERM or SIGHUP: end every running action's process group, remove every
/// scratch directory, and exit with 128 + the signal, as shells report it.
pub(crate) fn install_signal_handlers() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let (groups, dirs) = sa_exec::interrupt();
            eprintln!(
                "sa: interrupted by signal {signal}: ended {groups} running actions, removed {dirs} scratch directories"
            );
            std::process::exit(128 + signal);
        }
    })?;
    Ok(())
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
