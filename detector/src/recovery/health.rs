//! Health checks: after a restart, poll the unit's HTTP endpoint until it answers the expected
//! status or the deadline passes.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::Health;

/// A client for health checks. It ignores `HTTP_PROXY` and friends: the endpoint is the unit's
/// own, and a proxy in between would check the proxy.
#[must_use]
pub(crate) fn client(follow_redirects: bool) -> reqwest::Client {
    let redirects = if follow_redirects {
        reqwest::redirect::Policy::limited(5)
    } else {
        reqwest::redirect::Policy::none()
    };
    reqwest::Client::builder()
        .no_proxy()
        .redirect(redirects)
        .build()
        .unwrap_or_else(|e| {
            // Building fails only when the TLS backend or resolver cannot start; we have neither.
            tracing::error!(error = %e, "cannot build the health-check client; using the default");
            reqwest::Client::new()
        })
}

/// How a health check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The endpoint answered the expected status, on attempt `attempts`.
    Healthy { attempts: u32 },
    /// The deadline passed; `last` says what the last attempt got.
    Unhealthy { attempts: u32, last: String },
}

/// What one failed attempt got, in words: the status, or the innermost cause of the error
/// ("Connection refused (os error 111)") rather than reqwest's "error sending request".
fn describe(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        return format!("no answer within {timeout:?}");
    }
    let mut cause: &dyn std::error::Error = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// One attempt, bounded by `timeout`: Ok when it answered the expected status, else what it got.
pub(crate) async fn check(
    client: &reqwest::Client,
    health: &Health,
    timeout: Duration,
) -> Result<(), String> {
    match client.get(health.url.clone()).timeout(timeout).send().await {
        Ok(response) if response.status().as_u16() == health.expect => Ok(()),
        Ok(response) => Err(format!(
            "status {} (expected {})",
            response.status().as_u16(),
            health.expect
        )),
        Err(e) => Err(describe(&e, timeout)),
    }
}

/// Polls `health` every `interval` until it passes or `until`. Each attempt is bounded by the
/// check's timeout and by what is left of the deadline.
pub(crate) async fn wait_healthy(
    client: &reqwest::Client,
    health: &Health,
    until: Instant,
) -> Verdict {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let left = until.saturating_duration_since(Instant::now());
        let timeout = health.timeout.min(left);
        let last = match check(client, health, timeout).await {
            Ok(()) => return Verdict::Healthy { attempts },
            Err(last) => last,
        };
        let next = Instant::now() + health.interval;
        if next >= until {
            return Verdict::Unhealthy { attempts, last };
        }
        tokio::time::sleep_until(next).await;
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::TcpListener,
        time::Duration,
    };

    use tokio::time::Instant;

    use super::{Verdict, client, wait_healthy};
    use crate::config::Health;

    fn health(url: &str, expect: u16) -> Health {
        Health {
            url: url::Url::parse(url).expect("url"),
            follow_redirects: false,
            expect,
            timeout: Duration::from_millis(300),
            interval: Duration::from_millis(20),
            deadline: Duration::from_millis(400),
        }
    }

    /// A real listener answering `status` to every request, on a free local port.
    fn serve(status: u16) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut buf = [0; 1024];
                let _ = stream.read(&mut buf);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        port
    }

    #[tokio::test]
    async fn verdicts() {
        let ok = serve(200);
        let broken = serve(503);
        // A port that was free a moment ago: nothing listens there.
        let closed = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let client = client(false);
        let until = || Instant::now() + Duration::from_millis(400);
        let check = |port: u16, expect| health(&format!("http://127.0.0.1:{port}/health"), expect);
        assert_eq!(
            wait_healthy(&client, &check(ok, 200), until()).await,
            Verdict::Healthy { attempts: 1 }
        );
        match wait_healthy(&client, &check(broken, 200), until()).await {
            Verdict::Unhealthy { attempts, last } => {
                assert!(attempts > 1, "{attempts}");
                assert_eq!(last, "status 503 (expected 200)");
            }
            v @ Verdict::Healthy { .. } => panic!("503 passed: {v:?}"),
        }
        assert_eq!(
            wait_healthy(&client, &check(broken, 503), until()).await,
            Verdict::Healthy { attempts: 1 }
        );
        match wait_healthy(&client, &check(closed, 200), until()).await {
            Verdict::Unhealthy { last, .. } => {
                assert!(last.contains("onnection refused"), "{last}");
            }
            v @ Verdict::Healthy { .. } => panic!("a closed port passed: {v:?}"),
        }
    }
}
