//! A real HTTP receiver on loopback that records every request it gets: what the alert sinks
//! send, as the other side sees it. Each path answers as its [`Script`] says: a status, a
//! status for the first tries then another, or no answer at all.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant, SystemTime},
};

use serde_json::Value;

/// How a path answers.
#[derive(Debug, Clone, Copy)]
pub enum Script {
    /// Always this status.
    Status(u16),
    /// `first` for the first `tries` requests, then `then`.
    FailFirst { tries: u32, first: u16, then: u16 },
    /// Read the request, never answer.
    Silent,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    /// Header names lowercased.
    pub headers: HashMap<String, String>,
    pub body: Value,
    /// When the body was in, by the wall clock.
    pub at: SystemTime,
    /// The status we answered (None: no answer).
    pub answered: Option<u16>,
}

type Seen = Arc<(Mutex<Vec<Request>>, Condvar)>;

/// A recording receiver; it lives as long as the test process.
pub struct Receiver {
    pub port: u16,
    seen: Seen,
}

fn read_request(stream: &TcpStream) -> Option<(String, HashMap<String, String>, Vec<u8>)> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 || header == "\r\n" {
            break;
        }
        if let Some((name, value)) = header.trim_end().split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let length = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((path, headers, body))
}

impl Receiver {
    /// Listens on 127.0.0.1:`port`; `scripts` says how each path answers (others: 200).
    ///
    /// # Panics
    /// If the port is taken.
    #[must_use]
    pub fn start(port: u16, scripts: &[(&str, Script)]) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("the receiver cannot listen on 127.0.0.1:{port}: {e}"));
        let scripts: HashMap<String, Script> =
            scripts.iter().map(|(p, s)| ((*p).to_owned(), *s)).collect();
        let seen: Seen = Arc::default();
        let recorded = Arc::clone(&seen);
        thread::spawn(move || {
            let mut tries: HashMap<String, u32> = HashMap::new();
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let Some((path, headers, body)) = read_request(&stream) else {
                    continue;
                };
                let at = SystemTime::now();
                let n = tries.entry(path.clone()).or_default();
                *n += 1;
                let answer = match scripts.get(&path).copied().unwrap_or(Script::Status(200)) {
                    Script::Status(status) => Some(status),
                    Script::FailFirst { tries, first, then } => {
                        Some(if *n <= tries { first } else { then })
                    }
                    Script::Silent => None,
                };
                let (lock, cv) = &*recorded;
                lock.lock().expect("lock").push(Request {
                    path,
                    headers,
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                    at,
                    answered: answer,
                });
                cv.notify_all();
                match answer {
                    Some(status) => {
                        let _ = write!(
                            stream,
                            "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                        );
                    }
                    None => held.push(stream),
                }
            }
        });
        Self { port, seen }
    }

    /// `http://127.0.0.1:PORT{path}`.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every request to `path` so far, in order.
    ///
    /// # Panics
    /// If a thread panicked holding the record.
    #[must_use]
    pub fn requests(&self, path: &str) -> Vec<Request> {
        let (lock, _) = &*self.seen;
        lock.lock()
            .expect("lock")
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `path` got a request matching `pred`, and returns it.
    ///
    /// # Panics
    /// If none comes within `wait`.
    #[must_use]
    pub fn wait_for(&self, path: &str, wait: Duration, pred: impl Fn(&Request) -> bool) -> Request {
        let deadline = Instant::now() + wait;
        let (lock, cv) = &*self.seen;
        let mut seen = lock.lock().expect("lock");
        loop {
            if let Some(found) = seen.iter().find(|r| r.path == path && pred(r)) {
                return found.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no matching request to {path} within {wait:?}; got: {:?}",
                seen.iter().map(|r| (&r.path, &r.body)).collect::<Vec<_>>()
            );
            seen = cv.wait_timeout(seen, left).expect("lock").0;
        }
    }
}
