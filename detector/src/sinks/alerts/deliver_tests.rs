//! Delivery against real local HTTP listeners: one that fails its first answers, one that
//! always answers 500, one that never answers, a closed port, and a final 4xx.

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use super::{Answer, Retry, with_retries};

/// Fast figures for tests: waits of 20-60 ms, 1 s in all.
const FAST: Retry = Retry {
    first: Duration::from_millis(20),
    factor: 1.5,
    max_wait: Duration::from_millis(60),
    deadline: Duration::from_secs(1),
};

/// A listener answering the n-th request (0-based) with `answer(n)`: a status and a body, or
/// None to read the request and never answer. Returns its port and the request count.
fn serve(
    answer: impl Fn(u32) -> Option<(u16, &'static str)> + Send + 'static,
) -> (u16, Arc<AtomicU32>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let count = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&count);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0; 4096];
            let _ = stream.read(&mut buf);
            let n = seen.fetch_add(1, Ordering::SeqCst);
            match answer(n) {
                Some((status, body)) => {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
                // Keep the connection open and silent.
                None => held.push(stream),
            }
        }
    });
    (port, count)
}

fn post(port: u16) -> impl Fn() -> reqwest::RequestBuilder {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    move || {
        client
            .post(format!("http://127.0.0.1:{port}/hook"))
            .body("{}")
    }
}

#[tokio::test]
async fn a_receiver_failing_its_first_answers_gets_the_notice() {
    let (port, count) = serve(|n| Some(if n < 2 { (503, "busy") } else { (200, "ok") }));
    let mut first_failure = Vec::new();
    let delivery = with_retries(post(port), Duration::from_secs(1), FAST, |a| {
        first_failure.push(a.clone());
    })
    .await;
    assert_eq!(
        (delivery.answer, delivery.attempts),
        (Answer::Status(200, "ok".into()), 3)
    );
    assert_eq!(count.load(Ordering::SeqCst), 3);
    assert_eq!(
        first_failure,
        [Answer::Status(503, "busy".into())],
        "logged once"
    );
}

#[tokio::test]
async fn status_500_and_429_are_retried_until_the_deadline() {
    for status in [500, 429] {
        let (port, count) = serve(move |_| Some((status, "nope")));
        let started = std::time::Instant::now();
        let delivery = with_retries(post(port), Duration::from_secs(1), FAST, |_| {}).await;
        assert_eq!(delivery.answer, Answer::Status(status, "nope".into()));
        assert!(delivery.attempts >= 5, "{delivery:?}");
        assert_eq!(count.load(Ordering::SeqCst), delivery.attempts);
        assert!(started.elapsed() <= FAST.deadline + Duration::from_millis(500));
    }
}

#[tokio::test]
async fn a_final_4xx_is_not_retried_and_keeps_the_body() {
    let (port, count) = serve(|_| Some((400, "invalid_payload")));
    let delivery = with_retries(post(port), Duration::from_secs(1), FAST, |_| {}).await;
    assert_eq!(
        (delivery.answer, delivery.attempts),
        (Answer::Status(400, "invalid_payload".into()), 1)
    );
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_receiver_that_never_answers_times_out_and_is_retried() {
    let (port, count) = serve(|_| None);
    let delivery = with_retries(post(port), Duration::from_millis(150), FAST, |_| {}).await;
    assert_eq!(
        delivery.answer,
        Answer::Network("no answer within 150ms".into())
    );
    assert!(delivery.attempts >= 2, "{delivery:?}");
    assert_eq!(count.load(Ordering::SeqCst), delivery.attempts);
}

#[tokio::test]
async fn a_closed_port_is_a_network_error_without_the_url() {
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let delivery = with_retries(post(port), Duration::from_secs(1), FAST, |_| {}).await;
    let Answer::Network(cause) = &delivery.answer else {
        panic!("{delivery:?}");
    };
    assert!(cause.contains("onnection refused"), "{cause}");
    assert!(
        !cause.contains("127.0.0.1") && !cause.contains("/hook"),
        "{cause}"
    );
    assert!(delivery.attempts >= 2, "{delivery:?}");
}

#[test]
fn backoff_grows_by_the_factor_up_to_its_cap_with_jitter() {
    let retry = Retry::DEFAULT;
    let base: Vec<u128> = (0..12).map(|n| retry.base_wait(n).as_millis()).collect();
    assert_eq!(&base[..5], [500, 750, 1125, 1687, 2531]);
    assert_eq!(base[11], 30_000, "capped: {base:?}");
    for n in 0..12 {
        let wait = retry.wait(n);
        let b = retry.base_wait(n);
        assert!(wait >= b / 2 && wait <= b * 3 / 2, "{n}: {wait:?} vs {b:?}");
    }
}

#[test]
fn only_server_errors_throttling_and_the_network_are_retried() {
    let retryable = |status| Answer::Status(status, String::new()).retryable();
    assert!(retryable(500) && retryable(503) && retryable(429));
    assert!(!retryable(400) && !retryable(403) && !retryable(404) && !retryable(410));
    assert!(
        !retryable(301),
        "a redirect is not followed: the URL is wrong"
    );
    assert!(Answer::Network("reset".into()).retryable());
    assert!(Answer::Status(202, String::new()).delivered());
}
