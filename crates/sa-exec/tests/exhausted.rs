//! A service whose Execute streams and workers share one pool of threads, as BuildGrid's do:
//! a client that holds every thread starves the workers, and nothing finishes.

#![allow(clippy::unwrap_used)] // tests: a failure is the test failing

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use sa_cas::{DigestFunction, GrpcConfig, GrpcConnection};
use sa_exec::{Executor, Outcome, RemoteExecutor, RemoteOptions};
use sa_proto::google::longrunning::{Operation, operation};
use sa_proto::reapi::execution_server::{Execution, ExecutionServer};
use sa_proto::reapi::{ActionResult, ExecuteRequest, ExecuteResponse, WaitExecutionRequest};
use tokio::sync::{Semaphore, mpsc, watch};
use tonic::{Request, Response, Status};

type OperationStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<Operation, Status>> + Send + 'static>>;

/// `threads` places shared by open streams and the one worker, which needs a place for each
/// result it reports (an upload).
struct Farm {
    threads: Arc<Semaphore>,
    operations: Mutex<HashMap<String, watch::Receiver<Option<Operation>>>>,
    queue: mpsc::UnboundedSender<(String, watch::Sender<Option<Operation>>)>,
    refused: AtomicU64,
    next: AtomicU64,
}

impl Farm {
    fn stream(&self, name: String) -> Result<Response<OperationStream>, Status> {
        let Ok(place) = self.threads.clone().try_acquire_owned() else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Status::resource_exhausted("Concurrent RPC limit exceeded!"));
        };
        let Some(mut done) = self.operations.lock().unwrap().get(&name).cloned() else {
            return Err(Status::not_found(name));
        };
        let (sender, receiver) = mpsc::channel(4);
        tokio::spawn(async move {
            let _place = place;
            let first = Operation { name: name.clone(), ..Default::default() };
            if sender.send(Ok(first)).await.is_err() {
                return;
            }
            // Held until the result, or until the client closes the stream.
            let finished = tokio::select! {
                finished = done.wait_for(Option::is_some) => finished.map(|op| op.clone()).ok().flatten(),
                () = sender.closed() => None,
            };
            if let Some(operation) = finished {
                let _ = sender.send(Ok(operation)).await;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }
}

/// The farm as the Execution service.
struct Service(Arc<Farm>);

#[tonic::async_trait]
impl Execution for Service {
    type ExecuteStream = OperationStream;
    type WaitExecutionStream = OperationStream;

    async fn execute(
        &self,
        _request: Request<ExecuteRequest>,
    ) -> Result<Response<OperationStream>, Status> {
        if self.0.threads.available_permits() == 0 {
            self.0.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Status::resource_exhausted("Concurrent RPC limit exceeded!"));
        }
        let name = format!("operation-{}", self.0.next.fetch_add(1, Ordering::Relaxed));
        let (sender, receiver) = watch::channel(None);
        self.0.operations.lock().unwrap().insert(name.clone(), receiver);
        self.0.queue.send((name.clone(), sender)).unwrap();
        self.0.stream(name)
    }

    async fn wait_execution(
        &self,
        request: Request<WaitExecutionRequest>,
    ) -> Result<Response<OperationStream>, Status> {
        self.0.stream(request.into_inner().name)
    }
}

/// The worker: runs queued operations in order (50 ms each); each result needs a free place
/// to be reported.
async fn work(
    threads: Arc<Semaphore>,
    mut queue: mpsc::UnboundedReceiver<(String, watch::Sender<Option<Operation>>)>,
) {
    while let Some((name, done)) = queue.recv().await {
        // Running the action needs no place; reporting its result does.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let place = loop {
            match threads.clone().try_acquire_owned() {
                Ok(place) => break place,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let response =
            ExecuteResponse { result: Some(ActionResult::default()), ..Default::default() };
        let any = prost_types::Any {
            type_url: "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse".into(),
            value: response.encode_to_vec(),
        };
        let operation = Operation {
            name,
            done: true,
            result: Some(operation::Result::Response(any)),
            ..Default::default()
        };
        drop(place);
        let _ = done.send(Some(operation));
    }
}

#[test]
fn a_client_never_holds_the_threads_the_services_workers_need_to_report_results() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let threads = Arc::new(Semaphore::new(8));
    let (queue, jobs) = mpsc::unbounded_channel();
    let farm = Arc::new(Farm {
        threads: threads.clone(),
        operations: Mutex::default(),
        queue,
        refused: AtomicU64::new(0),
        next: AtomicU64::new(0),
    });
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    runtime.spawn(work(threads, jobs));
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(ExecutionServer::new(Service(farm.clone())))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let connection =
        GrpcConnection::open(GrpcConfig::new(format!("grpc://127.0.0.1:{port}"))).unwrap();
    // 64 streams against 8 places: before, the client kept 8 streams open (one fewer per
    // refusal, until none was refused) and the worker never had a place to report a result.
    let options = RemoteOptions { timeout: Duration::from_secs(30), ..RemoteOptions::default() };
    let executor = RemoteExecutor::new(connection, options);
    let actions: Vec<_> = (0..40)
        .map(|n| DigestFunction::Sha256.hash_bytes(format!("action {n}").as_bytes()))
        .collect();
    let (sender, receiver) = std::sync::mpsc::channel();
    let executor = Arc::new(executor);
    let client = executor.clone();
    std::thread::spawn(move || {
        let mut outcomes = Vec::new();
        client.execute_all(&actions, &mut |finished| outcomes.push(finished.outcome));
        let _ = sender.send(outcomes);
    });
    // Before, this never returned: the worker waited for a place the client held.
    let outcomes = receiver
        .recv_timeout(Duration::from_secs(120))
        .expect("the client held every place; the worker could report no result");
    assert_eq!(outcomes.len(), 40);
    for outcome in &outcomes {
        assert!(matches!(outcome, Outcome::Executed(_)), "{outcome:?}");
    }
    let counters = executor.counters();
    assert!(farm.refused.load(Ordering::Relaxed) > 0, "the service was exhausted");
    assert!(counters.retries > 0, "{counters:?}");
    assert!(counters.parked > 0, "streams over the lowered limit were parked: {counters:?}");
}
