//! A transparent recording proxy for the Remote Execution API (REAPI v2), so any client
//! (Bazel, Buck2, Pants, recc, BuildStream) feeds `sa generate` by changing one URL.
//!
//! [`Proxy`] accepts HTTP/2 gRPC connections and forwards every request to the upstream
//! server as it came: the path names the service and method, so every REAPI service
//! (Capabilities, ContentAddressableStorage, ByteStream, ActionCache, Execution) and
//! `google.longrunning.Operations` pass through without the proxy knowing their messages.
//! Request headers pass through (the upstream's own headers, such as `authorization` from
//! `--remote-header`, are added); responses come back frame by frame with their status,
//! message, details and trailers unchanged; bodies are never buffered, so HTTP/2 flow control
//! gives backpressure end to end; a client that goes away drops its upstream stream, which
//! cancels the call there; an unreachable upstream answers `UNAVAILABLE` at once.
//!
//! Two kinds of call are also recorded: `Execute` (and `WaitExecution` of an operation an
//! `Execute` started) and `GetActionResult`. Their requests are small and unary, so they are
//! read whole and decoded (the action digest, the instance); their responses are watched as
//! they stream past (the final Operation's `ExecuteResponse`, the gRPC status). One JSON line
//! per call goes to `DIR/<tool_invocation_id>.jsonl` ([`Recorder`]), with the client's
//! `RequestMetadata` when it sends one. [`read_recording`] reads such a file back.
//!
//! ```no_run
//! use sa_cas::GrpcConfig;
//! use sa_proxy::{Listen, Proxy, ProxyConfig};
//!
//! let config = ProxyConfig::new(GrpcConfig::new("grpc://127.0.0.1:50051"), "recordings".into());
//! let proxy = Proxy::start(&Listen::parse("127.0.0.1:0").unwrap(), config).unwrap();
//! println!("point the client at {}", proxy.endpoint());
//! ```

#![deny(missing_docs)]

mod activity;
mod forward;
mod limits;
mod recording;

pub use activity::{Activity, State as InvocationState};
pub use forward::{Listen, Proxy, ProxyConfig, ProxyError};
pub use limits::ProxyLimits;
pub use recording::{RecordWriter, Recorder, Recording, read_recording};
