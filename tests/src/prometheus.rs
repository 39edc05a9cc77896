//! Debian's Prometheus for the metrics tests: started on loopback with a scrape job for the
//! daemon, queried over its HTTP API with a plain HTTP/1.0 client (the tests carry no HTTP stack).

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::machine::tempdir;

/// A GET over plain HTTP/1.0; returns the status code and body.
#[must_use]
pub fn get(addr: &str, target: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {target} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Debian's Prometheus, scraping the daemon every second; killed when dropped.
pub struct Prometheus {
    child: Child,
    addr: &'static str,
    _dir: tempdir::Dir,
}

impl Prometheus {
    /// Starts it on `addr`, scraping `target` (`host:port`), and waits until it is ready.
    ///
    /// # Panics
    /// If it cannot start or does not get ready within a minute.
    #[must_use]
    pub fn start(addr: &'static str, target: &str) -> Self {
        let dir = tempdir::Dir::new("prometheus");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
                 - job_name: detector\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("prometheus.yml");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start prometheus (cargo xtask installs it): {e}"));
        let prometheus = Self {
            child,
            addr,
            _dir: dir,
        };
        let started = Instant::now();
        while get(addr, "/-/ready").is_none_or(|(status, _)| status != 200) {
            assert!(
                started.elapsed() < Duration::from_mins(1),
                "prometheus never got ready"
            );
            thread::sleep(Duration::from_millis(200));
        }
        prometheus
    }

    /// An instant query: each series' labels and value.
    ///
    /// # Panics
    /// If Prometheus does not answer it.
    #[must_use]
    pub fn query(&self, expr: &str) -> Vec<(Value, f64)> {
        let (status, body) = get(self.addr, &format!("/api/v1/query?query={}", encode(expr)))
            .unwrap_or_else(|| panic!("prometheus did not answer {expr}"));
        let answer: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(
            (status, &answer["status"]),
            (200, &json!("success")),
            "{expr}: {body}"
        );
        answer["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let value = r["value"][1].as_str().and_then(|v| v.parse().ok());
                (r["metric"].clone(), value.unwrap_or(f64::NAN))
            })
            .collect()
    }

    /// The one value of `expr`, None while it has no series.
    ///
    /// # Panics
    /// If it has several.
    #[must_use]
    pub fn value(&self, expr: &str) -> Option<f64> {
        let result = self.query(expr);
        assert!(result.len() <= 1, "{expr} has several series: {result:?}");
        result.first().map(|(_, v)| *v)
    }

    /// Waits until `expr` is `want` (new scrapes come every second).
    ///
    /// # Panics
    /// If it is not within 30 s.
    pub fn wait_for(&self, expr: &str, want: f64) {
        let started = Instant::now();
        loop {
            let got = self.value(expr);
            if got == Some(want) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{expr} is {got:?}, not {want}"
            );
            thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
