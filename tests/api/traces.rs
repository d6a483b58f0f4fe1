//! Traces and logs (issue 5 item 5): the real binary exports its spans over OTLP/HTTP to a
//! collector the test runs, and a request that carries a W3C `traceparent` must show up as:
//! the HTTP server span in the caller's trace, under the caller's span; `ledger.submit` under
//! it; `ledger.queue_wait` under that; and the `ledger.commit_batch` span (a root of its own)
//! linked to the `ledger.submit` span of the request it carried. The JSON access log line of
//! that request carries its request id and the caller's trace id.
//!
//! A separate process because the tracing subscriber is global; spans are flushed by the
//! graceful shutdown, so the test sends SIGTERM and waits for the exit.

use std::sync::Mutex;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;
use crate::process::Service;

/// The caller's trace and span (W3C trace-context: 16 and 8 bytes, lowercase hex).
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";
/// OTLP span kind `SPAN_KIND_SERVER`.
const SERVER: i32 = 2;

/// Every span the fake collector received.
type Collected = web::Data<Mutex<Vec<Span>>>;

async fn collect(body: web::Bytes, collected: Collected) -> HttpResponse {
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            let spans = request
                .resource_spans
                .into_iter()
                .flat_map(|resource| resource.scope_spans)
                .flat_map(|scope| scope.spans);
            collected.lock().unwrap().extend(spans);
            HttpResponse::Ok()
                .content_type("application/x-protobuf")
                .finish()
        }
        Err(error) => HttpResponse::BadRequest().body(error.to_string()),
    }
}

#[actix_web::test]
async fn spans_are_exported_in_the_callers_trace_and_the_batch_links_to_its_requests() {
    let collected: Collected = web::Data::new(Mutex::new(Vec::new()));
    let collector_state = collected.clone();
    let collector = HttpServer::new(move || {
        App::new()
            .app_data(collector_state.clone())
            .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
            .route("/v1/traces", web::post().to(collect))
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .expect("bind the collector");
    let collector_port = collector.addrs()[0].port();
    let collector = collector.run();
    let collector_handle = collector.handle();
    actix_web::rt::spawn(collector);

    let database_url = format!(
        "{}/tally_test_traces_{}",
        database_server(),
        Uuid::new_v4().simple()
    );
    let mut service = Service::start_with(
        &database_url,
        &[(
            "TALLY__TELEMETRY__OTLP_ENDPOINT",
            format!("http://127.0.0.1:{collector_port}"),
        )],
    )
    .await;
    let app = service.app(&database_url);
    let alice = app.user("trace").await;
    let reply = app
        .http
        .post(format!("{}/api/v1/transactions/credit", app.address))
        .bearer_auth(&alice.token)
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01"))
        .json(&json!({"amount": 1_000, "currency": "USD"}))
        .send()
        .await
        .expect("credit");
    assert_eq!(reply.status(), StatusCode::CREATED);

    // The access line of that request names its request id and the caller's trace id. It
    // reaches this process through the child's stdout, possibly after the reply: wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let access = loop {
        let found = service
            .recent_logs()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|event| {
                event["target"] == "tally::access"
                    && event["route"] == "/api/v1/transactions/credit"
            });
        match found {
            Some(access) => break access,
            None if std::time::Instant::now() < deadline => {
                // A pause between polls of the condition, not a synchronization by itself.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            None => panic!("an access line for the credit"),
        }
    };
    let request_span = &access["spans"][0];
    assert_eq!(request_span["trace_id"], TRACE_ID, "{access}");
    assert!(
        request_span["request_id"]
            .as_str()
            .is_some_and(|id| Uuid::parse_str(id).is_ok()),
        "{access}"
    );
    assert_eq!(access["status"], 201, "{access}");

    service.terminate();
    let status = service
        .wait_for_exit(Duration::from_secs(20))
        .await
        .expect("the service exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    collector_handle.stop(true).await;

    let spans = collected.lock().unwrap().clone();
    let trace_id = hex::decode(TRACE_ID).expect("hex");
    let parent_span_id = hex::decode(PARENT_SPAN_ID).expect("hex");
    let named = |name: &str| -> Vec<&Span> { spans.iter().filter(|s| s.name == name).collect() };
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();

    let server = named("POST /api/v1/transactions/credit");
    assert_eq!(server.len(), 1, "one server span for the credit: {names:?}");
    let server = server[0];
    assert_eq!(server.trace_id, trace_id, "the caller's trace is continued");
    assert_eq!(
        server.parent_span_id, parent_span_id,
        "under the caller's span"
    );
    assert_eq!(server.kind, SERVER);

    let submit = named("ledger.submit");
    let submit = submit
        .iter()
        .find(|s| s.trace_id == trace_id)
        .unwrap_or_else(|| panic!("no ledger.submit span in the trace: {names:?}"));
    assert_eq!(submit.parent_span_id, server.span_id);

    let queue = named("ledger.queue_wait");
    let queue = queue
        .iter()
        .find(|s| s.trace_id == trace_id)
        .unwrap_or_else(|| panic!("no ledger.queue_wait span in the trace: {names:?}"));
    assert_eq!(queue.parent_span_id, submit.span_id);
    assert!(queue.end_time_unix_nano >= queue.start_time_unix_nano);

    let batches = named("ledger.commit_batch");
    let batch = batches
        .iter()
        .find(|batch| {
            batch
                .links
                .iter()
                .any(|link| link.trace_id == trace_id && link.span_id == submit.span_id)
        })
        .unwrap_or_else(|| panic!("no commit_batch span links to the request: {batches:?}"));
    assert_ne!(
        batch.trace_id, trace_id,
        "a batch is a trace root of its own"
    );
    assert!(batch.parent_span_id.is_empty());

    eprintln!(
        "traces: {} spans exported ({} batch spans); the credit's trace: server span -> \
         ledger.submit -> ledger.queue_wait ({} µs), linked from a commit_batch span with {} \
         link(s)",
        spans.len(),
        batches.len(),
        (queue.end_time_unix_nano - queue.start_time_unix_nano) / 1_000,
        batch.links.len()
    );
}
