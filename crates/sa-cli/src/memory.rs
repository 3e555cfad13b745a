//! The memory budget of one `sa` process (`--max-memory`): a watchdog thread samples the
//! resident set every 20 ms and, past the budget, ends the command with an error naming the
//! budget, ending running actions and removing scratch directories first, as a signal would.
//! The limits on what is fetched and listed (entries, depth, expansion) are counts, and a
//! count cannot know how much memory a walk needs per entry; this is what keeps a command
//! that would exhaust the machine from being killed by it (or taking others with it).

use std::time::Duration;

/// Half the machine's memory (`MemTotal`), or 4 GiB when it cannot be read.
pub(crate) fn default_budget() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024 / 2)
        })
        .unwrap_or(4 << 30)
}

/// This process's resident memory, in bytes.
fn resident() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

/// Starts the watchdog for `budget` bytes.
pub(crate) fn watch(budget: u64) -> std::io::Result<()> {
    std::thread::Builder::new().name("memory".into()).spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let Some(now) = resident() else { return };
            if now > budget {
                let (groups, dirs) = sa_exec::interrupt();
                eprintln!(
                    "error: resident memory reached {} MiB, over the memory budget of {} MiB \
                     (--max-memory; the default is half the machine's memory): stopped \
                     (ended {groups} running actions, removed {dirs} scratch directories)",
                    now >> 20,
                    budget >> 20
                );
                std::process::exit(1);
            }
        }
    })?;
    Ok(())
}
