//! `/metrics` over HTTP/1: a tiny server on the daemon's runtime. It reads one request head
//! (at most [`MAX_HEAD`] bytes, within [`IO_TIMEOUT`]), answers `GET /metrics` with the
//! exposition and anything else with an error status, and closes the connection. At most
//! [`MAX_CONNECTIONS`] are served at once; more are closed at once. Prometheus needs no more,
//! and a hand-parsed request line keeps an HTTP server stack out of a privileged daemon.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use super::Metrics;

const MAX_HEAD: usize = 8192;
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 8;
/// What Prometheus-client's text encoder writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PLAIN: &str = "text/plain; charset=utf-8";

/// Binds `addr`; the error names the address.
pub(crate) async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))
}

/// Serves `/metrics` on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: wait rather than spin.
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, "metrics: too many connections, closing this one");
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(IO_TIMEOUT, answer(stream, &metrics)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics: connection failed"),
                Err(_) => tracing::debug!(%peer, "metrics: connection timed out"),
            }
        });
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics) -> io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0_u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return reply(
                &mut stream,
                "431 Request Header Fields Too Large",
                PLAIN,
                "",
            )
            .await;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head
        .split(|b| *b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim_end().to_owned())
        .unwrap_or_default();
    let (status, content_type, body) = respond(&line, || metrics.encode());
    let body = if line.starts_with("HEAD ") {
        String::new()
    } else {
        body
    };
    reply(&mut stream, status, content_type, &body).await
}

async fn reply(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// The answer to a request line: status, content type, body. `exposition` is called only for
/// `/metrics`.
fn respond(
    line: &str,
    exposition: impl FnOnce() -> String,
) -> (&'static str, &'static str, String) {
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return ("400 Bad Request", PLAIN, "bad request line\n".to_owned());
    };
    if !version.starts_with("HTTP/1.") {
        return (
            "505 HTTP Version Not Supported",
            PLAIN,
            "HTTP/1 only\n".to_owned(),
        );
    }
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", PLAIN, "GET only\n".to_owned());
    }
    match target.split('?').next() {
        Some("/metrics") => ("200 OK", OPENMETRICS, exposition()),
        Some("/") => (
            "200 OK",
            PLAIN,
            "detector: Prometheus metrics at /metrics\n".to_owned(),
        ),
        _ => (
            "404 Not Found",
            PLAIN,
            "not found; try /metrics\n".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::{MAX_HEAD, respond};

    #[test]
    fn request_lines() {
        let body = || "figures".to_owned();
        for (line, status) in [
            ("GET /metrics HTTP/1.1", "200 OK"),
            ("GET /metrics?x=1 HTTP/1.0", "200 OK"),
            ("HEAD /metrics HTTP/1.1", "200 OK"),
            ("GET / HTTP/1.1", "200 OK"),
            ("GET /other HTTP/1.1", "404 Not Found"),
            ("POST /metrics HTTP/1.1", "405 Method Not Allowed"),
            ("GET /metrics HTTP/2", "505 HTTP Version Not Supported"),
            ("GET /metrics", "400 Bad Request"),
            ("", "400 Bad Request"),
        ] {
            assert_eq!(respond(line, body).0, status, "{line:?}");
        }
        assert_eq!(respond("GET /metrics HTTP/1.1", body).2, "figures");
    }

    /// A real socket: the exposition over HTTP, and an endless head cut off.
    #[tokio::test]
    async fn serves_over_tcp() {
        let metrics = std::sync::Arc::new(super::super::tests::metrics());
        let listener = super::bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(super::serve(listener, metrics));
        let get = |request: Vec<u8>| {
            tokio::task::spawn_blocking(move || {
                let mut stream = std::net::TcpStream::connect(addr).expect("connect");
                // The server may close before reading all of an oversized head.
                let _ = stream.write_all(&request);
                let mut answer = String::new();
                let _ = stream.read_to_string(&mut answer);
                answer
            })
        };
        let answer = get(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec())
            .await
            .expect("join");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains("application/openmetrics-text") && answer.ends_with("# EOF\n"),
            "{answer}"
        );
        assert!(answer.contains("detector_build_info{version="), "{answer}");
        let mut long = b"GET /metrics HTTP/1.1\r\n".to_vec();
        long.resize(MAX_HEAD, b'a');
        let answer = get(long).await.expect("join");
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        server.abort();
    }
}
