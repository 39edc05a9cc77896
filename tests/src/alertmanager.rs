//! A real Prometheus Alertmanager (Debian's `prometheus-alertmanager`, installed by `cargo xtask
//! test`), started on loopback with a temporary configuration and storage, clustering off; its
//! own notifications go to a receiver of the test's.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::machine::tempdir;

const BINARY: &str = "/usr/bin/prometheus-alertmanager";

/// A running Alertmanager; killed when dropped.
pub struct Alertmanager {
    child: Child,
    pub port: u16,
    _dir: tempdir::Dir,
}

impl Alertmanager {
    /// Starts it on 127.0.0.1:`port`, notifying `webhook` (firing and resolved) within about a
    /// second of a change, and waits until it is ready.
    ///
    /// # Panics
    /// If it is not installed or not ready within 30 s.
    #[must_use]
    pub fn start(port: u16, webhook: &str) -> Self {
        let dir = tempdir::Dir::new("alertmanager");
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                "route:\n  receiver: recorder\n  group_by: ['alertname', 'unit']\n  \
                 group_wait: 100ms\n  group_interval: 1s\n  repeat_interval: 1h\n\
                 receivers:\n  - name: recorder\n    webhook_configs:\n      \
                 - url: '{webhook}'\n        send_resolved: true\n"
            ),
        )
        .expect("write the Alertmanager configuration");
        let log = std::fs::File::create(dir.path().join("alertmanager.log")).expect("log");
        let child = Command::new(BINARY)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // No gossip: it would listen on 0.0.0.0:9094.
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {BINARY} (cargo xtask test installs it): {e}")
            });
        let am = Self {
            child,
            port,
            _dir: dir,
        };
        let started = Instant::now();
        let runtime = runtime();
        while !runtime.block_on(async {
            client()
                .get(format!("http://127.0.0.1:{port}/-/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "Alertmanager was not ready in 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        am
    }

    /// `GET /api/v2/alerts`: the alerts it holds that have not ended.
    ///
    /// # Panics
    /// If the API does not answer with JSON.
    #[must_use]
    pub fn alerts(&self) -> Vec<Value> {
        let url = format!("http://127.0.0.1:{}/api/v2/alerts", self.port);
        runtime().block_on(async {
            let body = client()
                .get(&url)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .unwrap_or_else(|e| panic!("GET {url}: {e}"))
                .bytes()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}"));
            serde_json::from_slice::<Vec<Value>>(&body)
                .unwrap_or_else(|e| panic!("GET {url}: not a list of alerts: {e}"))
        })
    }
}

/// Straight to loopback, whatever `HTTP_PROXY` says.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("HTTP client")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
