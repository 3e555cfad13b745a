//! What the proxy lets a client hold, whoever the client is: connections (idle ones are
//! closed, and evicted first when room is needed), streams per connection, and the bytes of
//! recorded requests buffered at once. Nothing a client does grows the proxy past these.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bounds on what clients may make the proxy hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyLimits {
    /// Connections served at once. A connection over it evicts the longest-idle one (no
    /// open stream); when every connection is busy it is closed at once.
    pub max_connections: usize,
    /// Streams (calls) open at once on one connection (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_streams_per_connection: u32,
    /// Largest recorded request (`Execute`, `WaitExecution`, `GetActionResult`) read whole;
    /// larger is `RESOURCE_EXHAUSTED`.
    pub max_recorded_request_bytes: usize,
    /// Bytes of recorded requests buffered at once over all streams; a stream that would
    /// exceed it is answered `RESOURCE_EXHAUSTED`.
    pub recorded_budget_bytes: usize,
    /// A connection that opens no stream within this long is closed (a client that connects
    /// and says nothing, or never finishes its TLS handshake).
    pub handshake_timeout: Duration,
    /// A connection with no open stream for this long is closed with GOAWAY (gRPC clients
    /// reconnect when they next call).
    pub idle_timeout: Duration,
    /// HTTP/2 pings to a connection silent for this long; a peer that does not answer within
    /// the same time is dropped.
    pub keepalive_interval: Duration,
    /// Largest header block of one request.
    pub max_header_list_bytes: u32,
}

impl Default for ProxyLimits {
    fn default() -> ProxyLimits {
        ProxyLimits {
            max_connections: 1024,
            max_streams_per_connection: 128,
            max_recorded_request_bytes: 1 << 20,
            recorded_budget_bytes: 64 << 20,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(30),
            max_header_list_bytes: 64 << 10,
        }
    }
}

/// The bytes of recorded requests held now, against [`ProxyLimits::recorded_budget_bytes`].
#[derive(Debug)]
pub(crate) struct Budget {
    held: AtomicUsize,
    max: usize,
}

impl Budget {
    pub(crate) fn new(max: usize) -> Arc<Budget> {
        Arc::new(Budget { held: AtomicUsize::new(0), max })
    }

    /// Takes `bytes` more for `share`, or says no (nothing taken) when the budget is spent.
    pub(crate) fn take(self: &Arc<Budget>, share: &mut Share, bytes: usize) -> bool {
        let taken = self.held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
            held.checked_add(bytes).filter(|total| *total <= self.max)
        });
        if taken.is_ok() {
            share.bytes += bytes;
        }
        taken.is_ok()
    }

    /// Bytes held now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// One stream's part of the budget, given back when dropped.
#[derive(Debug)]
pub(crate) struct Share {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Share {
    pub(crate) fn new(budget: &Arc<Budget>) -> Share {
        Share { budget: budget.clone(), bytes: 0 }
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// One live connection as the registry sees it.
#[derive(Debug)]
pub(crate) struct Conn {
    /// Streams open now.
    active: AtomicUsize,
    /// Milliseconds since the registry's epoch when a stream last opened or closed.
    last_change: AtomicU64,
    /// Whether a stream was ever opened (before that, the handshake timeout applies).
    opened: AtomicBool,
    /// Told to close (evicted).
    pub(crate) close: tokio::sync::Notify,
    epoch: Instant,
}

impl Conn {
    fn touch(&self) {
        self.last_change.store(self.epoch.elapsed().as_millis() as u64, Ordering::Release);
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.last_change.load(Ordering::Acquire));
        Some(self.epoch.elapsed().saturating_sub(since))
    }

    /// Whether a stream was ever opened on it (a client that never spoke gets no GOAWAY).
    pub(crate) fn ever_opened(&self) -> bool {
        self.opened.load(Ordering::Acquire)
    }

    /// Whether the connection has been idle past its timeout: `handshake` before its first
    /// stream, `idle` after.
    pub(crate) fn expired(&self, handshake: Duration, idle: Duration) -> bool {
        let limit = if self.opened.load(Ordering::Acquire) { idle } else { handshake };
        self.idle_for().is_some_and(|idle_for| idle_for >= limit)
    }
}

/// A stream open on a connection: counted while it lives (held by the response body, so a
/// stream ends when its response does).
#[derive(Debug)]
pub(crate) struct StreamGuard(Arc<Conn>);

impl StreamGuard {
    pub(crate) fn open(conn: &Arc<Conn>) -> StreamGuard {
        conn.active.fetch_add(1, Ordering::AcqRel);
        conn.opened.store(true, Ordering::Release);
        conn.touch();
        StreamGuard(conn.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The live connections.
#[derive(Debug)]
pub(crate) struct Connections {
    live: Mutex<HashMap<u64, Arc<Conn>>>,
    next: AtomicU64,
    max: usize,
    epoch: Instant,
}

/// A connection's place in the registry; dropping it leaves.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub(crate) conn: Arc<Conn>,
    id: u64,
    registry: Arc<Connections>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl Connections {
    pub(crate) fn new(max: usize) -> Arc<Connections> {
        Arc::new(Connections {
            live: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            max: max.max(1),
            epoch: Instant::now(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.live.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A place for a new connection: at the limit the longest-idle connection is told to
    /// close and gives up its place; `None` when every connection has an open stream.
    pub(crate) fn admit(self: &Arc<Connections>) -> Option<Admitted> {
        let mut live = self.lock();
        if live.len() >= self.max && !Connections::evict_locked(&mut live) {
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            active: AtomicUsize::new(0),
            last_change: AtomicU64::new(0),
            opened: AtomicBool::new(false),
            close: tokio::sync::Notify::new(),
            epoch: self.epoch,
        });
        conn.touch();
        live.insert(id, conn.clone());
        Some(Admitted { conn, id, registry: self.clone() })
    }

    /// Tells the longest-idle connection to close (out of file descriptors, say); whether
    /// there was one.
    pub(crate) fn evict_idle(&self) -> bool {
        Connections::evict_locked(&mut self.lock())
    }

    fn evict_locked(live: &mut HashMap<u64, Arc<Conn>>) -> bool {
        let victim = live
            .iter()
            .filter_map(|(id, conn)| conn.idle_for().map(|idle| (idle, *id)))
            .max()
            .map(|(_, id)| id);
        match victim.and_then(|id| live.remove(&id)) {
            Some(conn) => {
                conn.close.notify_one();
                true
            }
            None => false,
        }
    }

    /// Connections served now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Says a recurring problem at most once per interval, with how often it happened since.
#[derive(Debug)]
pub(crate) struct Throttled {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
    every: Duration,
}

impl Throttled {
    pub(crate) fn new(every: Duration) -> Throttled {
        Throttled { last: Mutex::new(None), suppressed: AtomicU64::new(0), every }
    }

    /// Whether to log now; `Some(n)`: log, `n` occurrences were not logged since the last line.
    pub(crate) fn check(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match *last {
            Some(at) if at.elapsed() < self.every => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                *last = Some(Instant::now());
                Some(self.suppressed.swap(0, Ordering::Relaxed))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failing unwrap names the line, which is what a test wants
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_past_its_limit_and_gets_shares_back_when_dropped() {
        let budget = Budget::new(100);
        let mut a = Share::new(&budget);
        assert!(budget.take(&mut a, 60));
        let mut b = Share::new(&budget);
        assert!(!budget.take(&mut b, 41), "60 + 41 > 100");
        assert!(budget.take(&mut b, 40));
        assert_eq!(budget.held(), 100);
        drop(a);
        assert_eq!(budget.held(), 40);
        drop(b);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn at_the_limit_the_longest_idle_connection_is_evicted_and_busy_ones_never() {
        let registry = Connections::new(2);
        let first = registry.admit().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let second = registry.admit().unwrap();
        let third = registry.admit().expect("room made by evicting the longest idle");
        assert_eq!(registry.len(), 2);
        // The first was told to close (a permit is stored for it).
        let notified = first.conn.close.notified();
        futures_lite_ready(notified);
        // Both remaining connections busy: no room.
        let _busy2 = StreamGuard::open(&second.conn);
        let _busy3 = StreamGuard::open(&third.conn);
        assert!(registry.admit().is_none());
        drop(_busy3);
        assert!(registry.admit().is_some(), "an idle one is evicted again");
    }

    /// A `Notified` future whose permit is already stored completes on its first poll.
    fn futures_lite_ready(future: tokio::sync::futures::Notified<'_>) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_millis(100), future)
                .await
                .expect("the evicted connection was notified");
        });
    }

    #[test]
    fn a_silent_connection_expires_at_the_handshake_timeout_and_an_idle_one_at_the_idle() {
        let registry = Connections::new(8);
        let silent = registry.admit().unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert!(silent.conn.expired(Duration::from_millis(20), Duration::from_secs(60)));
        let used = registry.admit().unwrap();
        drop(StreamGuard::open(&used.conn));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!used.conn.expired(Duration::from_millis(20), Duration::from_secs(60)));
        assert!(used.conn.expired(Duration::from_millis(20), Duration::from_millis(20)));
        let _open = StreamGuard::open(&used.conn);
        assert!(!used.conn.expired(Duration::ZERO, Duration::ZERO), "a busy one never");
    }

    #[test]
    fn a_throttled_message_is_said_once_per_interval_with_the_count_it_held_back() {
        let throttled = Throttled::new(Duration::from_millis(50));
        assert_eq!(throttled.check(), Some(0));
        assert_eq!(throttled.check(), None);
        assert_eq!(throttled.check(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(throttled.check(), Some(2));
    }
}
