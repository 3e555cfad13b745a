//! What a command shows: lines on stdout (or JSON), `--stats` on stderr, progress bars.

use std::io::Write;
use std::time::Instant;

use crate::store;

/// Output to stdout and the time per phase, shared by the commands.
pub(crate) struct Ui {
    json: bool,
    stats: bool,
    phases: Vec<(&'static str, std::time::Duration)>,
    /// Other `--stats` lines, by name.
    counts: Vec<(&'static str, String)>,
    /// The stores whose traffic `--stats` reports, by role.
    watched: Vec<Watched>,
    stdout: std::io::StdoutLock<'static>,
}

impl Ui {
    /// A UI on this process's stdout.
    pub(crate) fn new(json: bool, stats: bool) -> Self {
        Ui {
            json,
            stats,
            phases: Vec::new(),
            counts: Vec::new(),
            watched: Vec::new(),
            stdout: std::io::stdout().lock(),
        }
    }

    /// Prints a line; a closed stdout becomes a `BrokenPipe` error that ends quietly.
    pub(crate) fn line(&mut self, text: impl std::fmt::Display) -> anyhow::Result<()> {
        writeln!(self.stdout, "{text}").map_err(anyhow::Error::from)
    }

    /// Flushes stdout (before a long-running command blocks).
    pub(crate) fn flush(&mut self) -> anyhow::Result<()> {
        self.stdout.flush().map_err(anyhow::Error::from)
    }

    pub(crate) fn json(&self) -> bool {
        self.json
    }

    /// Runs `work` as a named phase (timed for `--stats`).
    pub(crate) fn phase<T>(&mut self, name: &'static str, work: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let result = work();
        let elapsed = start.elapsed();
        tracing::info!("phase {name}: {:.3}s", elapsed.as_secs_f64());
        self.phases.push((name, elapsed));
        result
    }

    /// Records a line for `--stats` (`stats: NAME: TEXT`).
    pub(crate) fn count(&mut self, name: &'static str, text: String) {
        self.counts.push((name, text));
    }

    /// Records a phase timed elsewhere (for `--stats`).
    pub(crate) fn record_phase(&mut self, name: &'static str, elapsed: std::time::Duration) {
        self.phases.push((name, elapsed));
    }

    /// A progress bar on stderr (hidden when stderr is not a terminal).
    pub(crate) fn progress(&self, len: usize, what: &str) -> indicatif::ProgressBar {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(len as u64),
            indicatif::ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_message(what.to_owned());
        bar
    }

    /// Reports `opened`'s traffic under `role` ("store", "execution service") with `--stats`,
    /// at the end of the command, however it ends.
    pub(crate) fn watch(&mut self, role: &'static str, opened: &store::Opened) {
        self.watched.push(Watched {
            role,
            description: opened.description.clone(),
            meter: opened.store.meter(),
            grpc: opened.grpc.clone(),
        });
    }

    /// With `--stats`, prints each watched store's traffic and the time of each phase.
    pub(crate) fn report_stats(&self) {
        if !self.stats {
            return;
        }
        for watched in &self.watched {
            let t = watched.meter.stats();
            let rpcs = watched
                .grpc
                .as_ref()
                .map(|g| format!(", {} RPCs", g.rpc_count()))
                .unwrap_or_default();
            eprintln!(
                "stats: {} {}: read {} blobs ({} bytes), wrote {} blobs ({} bytes), {} presence checks, {} action-cache reads, {} writes, {} calls{rpcs}",
                watched.role,
                watched.description,
                t.blobs_read,
                t.bytes_read,
                t.blobs_written,
                t.bytes_written,
                t.presence_checks,
                t.action_cache_reads,
                t.action_cache_writes,
                t.calls
            );
        }
        for (name, text) in &self.counts {
            eprintln!("stats: {name}: {text}");
        }
        self.report_phases();
    }

    /// With `--stats`, prints the time of each phase to stderr.
    fn report_phases(&self) {
        for (name, duration) in &self.phases {
            eprintln!("stats: phase {name}: {:.3}s", duration.as_secs_f64());
        }
    }
}

/// A store `--stats` reports on.
struct Watched {
    role: &'static str,
    description: String,
    meter: sa_cas::Meter,
    grpc: Option<std::sync::Arc<sa_cas::GrpcCas>>,
}

/// Logs to stderr: `-v` info, `-vv` debug, `-vvv` trace, or `SA_LOG` as a tracing filter.
pub(crate) fn init_logging(verbose: u8) {
    let filter = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SA_LOG").unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into logs and pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
