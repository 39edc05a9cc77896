//! Health checks: after a restart, poll the unit's HTTP endpoint until it answers the expected
//! status or the deadline passes.
//!
//! Each attempt is one `GET` over a connection of its own, made from the watched systemd's
//! network namespace ([`Dialer`]): plain HTTP/1.1 with hyper's client connection, no pool, no
//! proxy (the endpoint is the unit's own; a proxy in between would check the proxy). A redirect
//! is followed only when the check asks (`follow_redirects`), at most [`MAX_REDIRECTS`] times,
//! and only to a host the configuration allows: loopback, or one listed in `health_hosts`.
//! Names other than `localhost` are resolved by the daemon (its `/etc/hosts` and resolver), and
//! the connection is then made from the manager's namespace.

use std::{net::SocketAddr, time::Duration};

use hyper::{
    StatusCode,
    header::{CONNECTION, HOST, LOCATION, USER_AGENT},
};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::{netns::Dialer, timer::Timer};
use crate::config::{Health, host_allowed};

/// Most redirects one attempt follows (when its check asks to follow any).
const MAX_REDIRECTS: usize = 5;

/// How a health check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The endpoint answered the expected status, on attempt `attempts`.
    Healthy { attempts: u32 },
    /// The deadline passed; `last` says what the last attempt got.
    Unhealthy { attempts: u32, last: String },
}

/// An error in words: its innermost cause ("Connection refused (os error 111)") rather than the
/// outer layer's "error sending request".
fn describe(error: &dyn std::error::Error) -> String {
    let mut cause = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// One attempt, bounded by `timeout`: Ok when it answered the expected status, else what it got.
pub(crate) async fn check(
    dialer: &Dialer,
    health: &Health,
    timeout: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, status(dialer, health)).await {
        Err(_) => Err(format!("no answer within {timeout:?}")),
        Ok(Err(e)) => Err(e),
        Ok(Ok(status)) if status.as_u16() == health.expect => Ok(()),
        Ok(Ok(status)) => Err(format!(
            "status {} (expected {})",
            status.as_u16(),
            health.expect
        )),
    }
}

/// The status `health`'s URL answers, after the redirects it may follow.
async fn status(dialer: &Dialer, health: &Health) -> Result<StatusCode, String> {
    let mut url = health.url.clone();
    let mut followed = 0;
    loop {
        let response = get(dialer, &url).await?;
        let status = response.status();
        let redirect = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
        if !health.follow_redirects || !redirect {
            return Ok(status);
        }
        let Some(location) = response.headers().get(LOCATION) else {
            return Ok(status);
        };
        if followed == MAX_REDIRECTS {
            return Err(format!("more than {MAX_REDIRECTS} redirects"));
        }
        let next = location
            .to_str()
            .ok()
            .and_then(|l| url.join(l).ok())
            .ok_or_else(|| format!("status {}: a redirect to no URL", status.as_u16()))?;
        if next.scheme() != "http" {
            return Err(format!("redirected to {next}: only http:// is followed"));
        }
        if !host_allowed(&next, &health.hosts) {
            return Err(format!(
                "redirected to {next}: its host is neither loopback nor in `health_hosts`"
            ));
        }
        url = next;
        followed += 1;
    }
}

/// One `GET url` over a new connection; the response's head (its body is not read).
async fn get(
    dialer: &Dialer,
    url: &url::Url,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let stream = connect(dialer, url).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, String>(TokioIo::new(stream))
            .await
            .map_err(|e| describe(&e))?;
    let mut target = url.path().to_owned();
    if let Some(query) = url.query() {
        target.push('?');
        target.push_str(query);
    }
    // `host_str` has an IPv6 address in brackets, as the header wants it.
    let host = url.host_str().unwrap_or_default();
    let host = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    let request = hyper::Request::get(target)
        .header(HOST, host)
        .header(USER_AGENT, "detector")
        .header(CONNECTION, "close")
        .body(String::new())
        .map_err(|e| describe(&e))?;
    // The connection is driven alongside the request. It may end first (the server closed it
    // after answering): the answer, if one came, is then already in.
    let connection = std::pin::pin!(connection);
    let mut response = std::pin::pin!(sender.send_request(request));
    tokio::select! {
        response = &mut response => response.map_err(|e| describe(&e)),
        ended = connection => match ended {
            Ok(()) => response.await.map_err(|e| describe(&e)),
            Err(e) => Err(describe(&e)),
        },
    }
}

/// A connection to `url`'s host and port, trying each of its addresses in turn.
async fn connect(dialer: &Dialer, url: &url::Url) -> Result<tokio::net::TcpStream, String> {
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs: Vec<SocketAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => vec![(ip, port).into()],
        Some(url::Host::Ipv6(ip)) => vec![(ip, port).into()],
        // Loopback by definition (RFC 6761), whatever a machine's hosts file says.
        Some(url::Host::Domain("localhost")) => vec![
            (std::net::Ipv4Addr::LOCALHOST, port).into(),
            (std::net::Ipv6Addr::LOCALHOST, port).into(),
        ],
        Some(url::Host::Domain(name)) => tokio::net::lookup_host((name, port))
            .await
            .map_err(|e| format!("cannot resolve `{name}`: {e}"))?
            .collect(),
        None => return Err(format!("{url} has no host")),
    };
    let mut last = None;
    for addr in addrs {
        match dialer.connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(
        || format!("`{}` has no address", url.host_str().unwrap_or_default()),
        |e| e.to_string(),
    ))
}

/// Polls `health` every `interval` until it passes or `until`. Each attempt is bounded by the
/// check's timeout and by what is left of the deadline.
pub(crate) async fn wait_healthy(dialer: &Dialer, health: &Health, until: Instant) -> Verdict {
    let mut attempts = 0;
    let mut timer = Timer::new();
    loop {
        attempts += 1;
        let left = until.saturating_duration_since(Instant::now());
        let timeout = health.timeout.min(left);
        let last = match check(dialer, health, timeout).await {
            Ok(()) => return Verdict::Healthy { attempts },
            Err(last) => last,
        };
        let next = Instant::now() + health.interval;
        if next >= until {
            return Verdict::Unhealthy { attempts, last };
        }
        match &mut timer {
            Some(timer) => timer.sleep_until(next).await,
            None => tokio::time::sleep_until(next).await,
        }
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

    use super::{Dialer, Verdict, check, wait_healthy};
    use crate::config::Health;

    fn health(url: &str, expect: u16) -> Health {
        Health {
            url: url::Url::parse(url).expect("url"),
            follow_redirects: false,
            hosts: Vec::new(),
            expect,
            timeout: Duration::from_millis(300),
            interval: Duration::from_millis(20),
            deadline: Duration::from_millis(400),
        }
    }

    /// A real listener answering `head` (a status and headers) to every request, on a free
    /// local port.
    fn serve_head(head: String) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut buf = [0; 1024];
                let _ = stream.read(&mut buf);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {head}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        port
    }

    fn serve(status: u16) -> u16 {
        serve_head(format!("{status} X"))
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
        let dialer = Dialer::here();
        let until = || Instant::now() + Duration::from_millis(400);
        let check = |port: u16, expect| health(&format!("http://127.0.0.1:{port}/health"), expect);
        assert_eq!(
            wait_healthy(&dialer, &check(ok, 200), until()).await,
            Verdict::Healthy { attempts: 1 }
        );
        match wait_healthy(&dialer, &check(broken, 200), until()).await {
            Verdict::Unhealthy { attempts, last } => {
                assert!(attempts > 1, "{attempts}");
                assert_eq!(last, "status 503 (expected 200)");
            }
            v @ Verdict::Healthy { .. } => panic!("503 passed: {v:?}"),
        }
        assert_eq!(
            wait_healthy(&dialer, &check(broken, 503), until()).await,
            Verdict::Healthy { attempts: 1 }
        );
        match wait_healthy(&dialer, &check(closed, 200), until()).await {
            Verdict::Unhealthy { last, .. } => {
                assert!(last.contains("onnection refused"), "{last}");
            }
            v @ Verdict::Healthy { .. } => panic!("a closed port passed: {v:?}"),
        }
    }

    /// A listener that accepts and never answers: the attempt ends at its timeout.
    #[tokio::test]
    async fn silence_is_a_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let silent = health(&format!("http://127.0.0.1:{port}/"), 200);
        let got = check(&Dialer::here(), &silent, Duration::from_millis(100)).await;
        assert_eq!(got, Err("no answer within 100ms".to_owned()));
        drop(listener);
    }

    /// Redirects: not followed unless asked; when asked, only to an allowed host.
    #[tokio::test]
    async fn redirects_only_when_asked_and_only_where_allowed() {
        let dialer = Dialer::here();
        let ok = serve(200);
        let to_ok = serve_head(format!(
            "302 Found\r\nlocation: http://127.0.0.1:{ok}/health"
        ));
        let away = serve_head("301 Moved\r\nlocation: http://192.0.2.1/steal".to_owned());
        let timeout = Duration::from_millis(300);
        let url = |port: u16| format!("http://127.0.0.1:{port}/");
        let mut plain = health(&url(to_ok), 200);
        assert_eq!(
            check(&dialer, &plain, timeout).await,
            Err("status 302 (expected 200)".to_owned())
        );
        plain.follow_redirects = true;
        assert_eq!(check(&dialer, &plain, timeout).await, Ok(()));
        let mut outside = health(&url(away), 200);
        outside.follow_redirects = true;
        assert_eq!(
            check(&dialer, &outside, timeout).await,
            Err(
                "redirected to http://192.0.2.1/steal: its host is neither loopback nor in \
                 `health_hosts`"
                    .to_owned()
            )
        );
    }
}
