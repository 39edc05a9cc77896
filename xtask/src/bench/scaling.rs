//! The scaling curve: failing exits paced at a set rate (`victim pace`, one worker per core),
//! and what a reader does at each rate: the rate reached, latency p50/p99, records lost, and its
//! CPU. Printed as a table and drawn to `target/bench/scaling.svg`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    cores,
    peers::{Peer, Tools},
    percentile,
    reader::Reader,
    svg::{Panel, Series, plot},
};

/// Target deaths/s; `None` is the host's maximum (the workers fork as fast as they can).
const RATES: [Option<u32>; 5] = [Some(1000), Some(5000), Some(10_000), Some(20_000), None];
/// How long each rate runs.
const SECONDS: f64 = 3.0;
/// Time for the reader to drain what the storm left in its buffer.
const SETTLE: Duration = Duration::from_millis(300);

pub(super) struct Point {
    target: Option<u32>,
    achieved: f64,
    records: usize,
    p50_us: f64,
    p99_us: f64,
    lost: u64,
    /// CPU time of the reader while the storm ran and drained, per second of storm, in % of one
    /// core.
    cpu_pct: f64,
}

/// Runs `victim pace` on every core for [`SECONDS`]; returns the failing exits per second made.
fn paced(victim: &Path, rate: Option<u32>) -> Result<f64> {
    let n = cores();
    // The rate is split evenly over the workers; 0 means unpaced.
    let per_worker = rate.map_or(0, |r| r.div_ceil(n as u32));
    let start = Instant::now();
    let workers = (0..n)
        .map(|_| {
            Command::new(victim)
                .args(["pace", &per_worker.to_string(), &SECONDS.to_string(), "1"])
                .stdout(Stdio::piped())
                .spawn()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut forked = 0u64;
    for worker in workers {
        let out = worker.wait_with_output()?;
        if !out.status.success() {
            bail!("victim pace failed: {}", out.status);
        }
        forked += String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u64>()
            .context("victim pace printed no count")?;
    }
    Ok(forked as f64 / start.elapsed().as_secs_f64())
}

/// One reader at one rate: a fresh reader each time, so its `lost` is this rate's.
fn point(tools: &Tools, victim: &Path, peer: Peer, rate: Option<u32>) -> Result<Point> {
    let reader = Reader::start(tools, peer)?;
    // Whatever arrived while it started (other processes' deaths) is not this rate's.
    thread::sleep(Duration::from_millis(200));
    let _ = reader.take_latencies();
    let cpu = reader.cpu_seconds()?;
    let start = Instant::now();
    let achieved = paced(victim, rate)?;
    let storm = start.elapsed().as_secs_f64();
    thread::sleep(SETTLE);
    let used = reader.cpu_seconds()? - cpu;
    let outcome = reader.stop()?;
    let mut lat = outcome.latencies_ns;
    lat.sort_unstable();
    Ok(Point {
        target: rate,
        achieved,
        records: lat.len(),
        p50_us: percentile(&lat, 50.0) as f64 / 1000.0,
        p99_us: percentile(&lat, 99.0) as f64 / 1000.0,
        lost: outcome.lost,
        cpu_pct: used / storm * 100.0,
    })
}

fn table(peer: Peer, points: &[Point]) {
    println!(
        "scaling, {}: failing exits paced on {} cores, {SECONDS} s a rate (records beyond \
         reached × {SECONDS} s: other deaths on the host meanwhile)",
        peer.name(),
        cores()
    );
    println!(
        "  {:>8} {:>10} {:>8} {:>9} {:>9} {:>6} {:>13}",
        "target/s", "reached/s", "records", "p50 µs", "p99 µs", "lost", "CPU % of core"
    );
    for p in points {
        let target = p.target.map_or_else(|| "max".to_owned(), |t| t.to_string());
        println!(
            "  {target:>8} {:>10.0} {:>8} {:>9.0} {:>9.0} {:>6} {:>13.1}",
            p.achieved, p.records, p.p50_us, p.p99_us, p.lost, p.cpu_pct
        );
    }
}

/// Runs the curve for detector and, if it can run, the C reader; prints the tables and writes
/// the SVG. Returns the SVG's path.
pub(super) fn run(tools: &Tools, victim: &Path) -> Result<PathBuf> {
    let mut curves = Vec::new();
    for peer in [Peer::Detector, Peer::CReader] {
        if let Some(why) = tools.unavailable(peer) {
            println!("scaling, {}: not run: {why}", peer.name());
            continue;
        }
        let mut points = Vec::new();
        for rate in RATES {
            match point(tools, victim, peer, rate) {
                Ok(p) => points.push(p),
                Err(e) => println!("scaling, {} at {rate:?}/s: failed: {e:#}", peer.name()),
            }
        }
        table(peer, &points);
        curves.push((peer, points));
    }
    let colour = |peer| {
        if peer == Peer::Detector {
            "#c0392b"
        } else {
            "#2471a3"
        }
    };
    let series = |y: fn(&Point) -> f64| -> Vec<Series> {
        curves
            .iter()
            .map(|(peer, points)| Series {
                name: peer.name().to_owned(),
                colour: colour(*peer),
                points: points.iter().map(|p| (p.achieved, y(p))).collect(),
            })
            .collect()
    };
    let panels = [
        Panel {
            title: "kernel → handler latency, p99".to_owned(),
            y_label: "p99 latency (µs, log scale)".to_owned(),
            log_y: true,
            series: series(|p| p.p99_us),
        },
        Panel {
            title: "reader CPU".to_owned(),
            y_label: "CPU (% of one core)".to_owned(),
            log_y: false,
            series: series(|p| p.cpu_pct),
        },
    ];
    // Drops get a caption line, not a panel: they are zero unless something is wrong.
    let mut caption = vec![format!(
        "failing exits paced at 1k, 5k, 10k, 20k/s and the host's maximum on {} cores, \
         {SECONDS} s a point (cargo xtask bench)",
        cores()
    )];
    caption.push(format!(
        "records lost, rate by rate: {}",
        curves
            .iter()
            .map(|(peer, points)| {
                let lost: Vec<String> = points.iter().map(|p| p.lost.to_string()).collect();
                format!("{} {}", peer.name(), lost.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    ));
    let svg = plot("failing exits per second (reached)", &panels, &caption);
    let dir = crate::root().join("target/bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("scaling.svg");
    std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
