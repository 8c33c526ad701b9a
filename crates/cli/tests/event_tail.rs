//! `opsloop event tail` as a process against an in-test `EventService` whose
//! stream breaks: the CLI reconnects from the last sequence number it printed,
//! so no event is skipped or printed twice.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opsloop_core::proto::v1::event_service_server::{EventService, EventServiceServer};
use opsloop_core::proto::v1::{
    EmitEventRequest, EmitEventResponse, Event, ListEventsRequest, ListEventsResponse,
    TailEventsRequest, TailEventsResponse,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

type TailStream = Pin<Box<dyn Stream<Item = Result<TailEventsResponse, Status>> + Send>>;

/// Streams events 1..=3 then breaks; later calls stream from the cursor up
/// to 5 and then stay open.
struct FlakyEvents {
    cursors: Arc<Mutex<Vec<Option<i64>>>>,
}

fn event(seq: i64) -> TailEventsResponse {
    TailEventsResponse {
        event: Some(Event {
            id: format!("event-{seq}"),
            seq,
            kind: "demo.tick".into(),
            source: "test".into(),
            payload_json: format!("{{\"n\": {seq}}}"),
            ..Event::default()
        }),
    }
}

#[tonic::async_trait]
impl EventService for FlakyEvents {
    async fn emit_event(
        &self,
        _: Request<EmitEventRequest>,
    ) -> Result<Response<EmitEventResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn list_events(
        &self,
        _: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    type TailEventsStream = TailStream;

    async fn tail_events(
        &self,
        request: Request<TailEventsRequest>,
    ) -> Result<Response<TailStream>, Status> {
        let cursor = request.into_inner().from_seq;
        let first_call = {
            let mut cursors = self.cursors.lock().unwrap();
            cursors.push(cursor);
            cursors.len() == 1
        };
        let stream: TailStream = if first_call {
            // Replays 1..=3 (the client asked for 0), then the server "restarts".
            Box::pin(tokio_stream::iter((1..=3).map(|seq| Ok(event(seq)))).chain(
                tokio_stream::once(Err(Status::unavailable("api restarting"))),
            ))
        } else {
            let from = cursor.unwrap_or(0);
            // Deliberately overlapping: resends the cursor's own event, which
            // the CLI must not print twice.
            Box::pin(
                tokio_stream::iter((from..=5).map(|seq| Ok(event(seq))))
                    .chain(tokio_stream::pending()),
            )
        };
        Ok(Response::new(stream))
    }
}

async fn serve(cursors: Arc<Mutex<Vec<Option<i64>>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EventServiceServer::new(FlakyEvents { cursors }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_resumes_after_the_last_printed_seq() {
    let cursors = Arc::new(Mutex::new(Vec::new()));
    let addr = serve(cursors.clone()).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_opsloop"))
        .args([
            "--endpoint",
            &format!("http://{addr}"),
            "--output",
            "json",
            "event",
            "tail",
            "--from-seq",
            "0",
        ])
        .env_remove("OPSLOOP_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut seqs = Vec::new();
    while seqs.len() < 5 {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("events keep coming after the reconnect")
            .unwrap()
            .expect("the tail keeps running");
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["kind"], "demo.tick");
        assert_eq!(value["payload"]["n"], value["seq"]);
        seqs.push(value["seq"].as_i64().unwrap());
    }
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    assert_eq!(*cursors.lock().unwrap(), vec![Some(0), Some(3)]);
    child.start_kill().unwrap();
    let _ = child.wait().await;
}
