//! Services with workers, on real systemd: FastAPI under the real uvicorn (and gunicorn)
//! supervisors at the versions `cargo xtask test` installs in the machine, with the guide's unit
//! (`--workers 4`, `Restart=always`, `RestartSec=5`). The unit is the patient, not its main
//! process: a worker's death is a unit incident, the deaths of one failure are one incident, and
//! a unit that hangs is caught by its liveness checks. Needs root; run with `cargo xtask test`.

#![expect(
    unused_crate_dependencies,
    reason = "each target of the tests package uses a part of its dependencies"
)]

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    incidents::{incident_for, incidents_of, journal_has, steps},
    machine::Machine,
};

/// The guide's unit (crash-recovery-guide.txt), with the app at /opt/demo and the pinned
/// packages at /opt/detector-py; `server` is the command after `python3 -m`.
fn guide_unit(server: &str, mode: &str) -> String {
    format!(
        "[Unit]\nDescription=FastAPI Application\nAfter=network.target\n\n[Service]\n\
         User=www-data\nGroup=www-data\nWorkingDirectory=/opt/demo\n\
         ExecStart=/usr/bin/python3 -m {server}\nRestart=always\nRestartSec=5\n\
         Environment=PYTHONUNBUFFERED=1\nEnvironment=PYTHONPATH=/opt/detector-py\n\
         Environment=DEMO_MODE={mode} DEMO_HANG_FILE=/tmp/demo-hang\n\n\
         [Install]\nWantedBy=multi-user.target\n"
    )
}

fn uvicorn(port: u16) -> String {
    format!("uvicorn fastapi_app:app --host 127.0.0.1 --port {port} --workers 4")
}

fn gunicorn(port: u16) -> String {
    format!("gunicorn -w 4 -k uvicorn.workers.UvicornWorker -b 127.0.0.1:{port} fastapi_app:app")
}

fn boot(unit: &str, contents: &str) -> Machine {
    Machine::boot_with(
        &[(unit, contents)],
        &[(
            concat!(env!("CARGO_MANIFEST_DIR"), "/demo/fastapi_app.py"),
            "/opt/demo/fastapi_app.py",
        )],
    )
}

/// A policy with a health check on `port`, and `extra` TOML lines for the unit.
fn policy(unit: &str, restart: &str, port: u16, extra: &str) -> String {
    format!(
        "[[unit]]\nname = \"{unit}\"\nrestart = \"{restart}\"\n\
         health = {{ url = \"http://127.0.0.1:{port}/health\", interval = \"100ms\", deadline = \"30s\" }}\n{extra}"
    )
}

/// GET `path` on the loopback port (the machine shares the host's network): status and body.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text))
}

/// Waits until the service answers /health with 200.
fn wait_serving(port: u16) {
    let started = Instant::now();
    while get(port, "/health").map(|(s, _)| s) != Some(200) {
        assert!(
            started.elapsed() < Duration::from_mins(1),
            "port {port} never served"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// The unit's processes (host pids) with their parent and command line.
fn processes(machine: &Machine, unit: &str) -> Vec<(u32, u32, String)> {
    machine
        .unit_pids(&format!("system.slice/{unit}"))
        .into_iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
            Some((pid, ppid, cmdline.replace('\0', " ")))
        })
        .collect()
}

/// The supervisor (its parent is the machine's systemd) and its workers.
fn main_and_workers(machine: &Machine, unit: &str) -> (u32, Vec<u32>) {
    let all = processes(machine, unit);
    let leader: u32 = machine
        .root()
        .trim_start_matches("/proc/")
        .trim_end_matches("/root")
        .parse()
        .expect("leader pid");
    let main = all
        .iter()
        .find(|(_, ppid, _)| *ppid == leader)
        .map_or_else(|| panic!("no main process in {all:?}"), |(pid, _, _)| *pid);
    let workers = all
        .iter()
        .filter(|(_, ppid, cmd)| *ppid == main && !cmd.contains("resource_tracker"))
        .map(|(pid, _, _)| *pid)
        .collect();
    (main, workers)
}

fn kill(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

#[test]
fn a_worker_killed_by_another_process_is_one_incident_healed_by_its_supervisor() {
    let unit = "fastapi-app.service";
    let machine = boot(unit, &guide_unit(&uvicorn(18010), "ok"));
    let (daemon, _config) = machine.watch_with_config(&policy(unit, "restart", 18010, ""));
    machine.systemctl(&["start", unit]);
    wait_serving(18010);
    let (main, workers) = main_and_workers(&machine, unit);
    assert_eq!(workers.len(), 4, "uvicorn --workers 4: {workers:?}");
    kill(workers[0], "KILL");
    let record = daemon.record_for(workers[0]);
    assert_eq!(
        (record["role"].as_str(), record["signal"].as_str()),
        (Some("worker"), Some("SIGKILL")),
        "{record}"
    );
    let incident = incident_for(&daemon, unit);
    assert_eq!(
        (
            incident["role"].as_str(),
            incident["cause"].as_str(),
            incident["action"].as_str(),
            incident["deaths"].as_u64(),
        ),
        (Some("worker"), Some("signal"), Some("watched"), Some(1)),
        "{incident}"
    );
    assert_eq!(steps(&incident), ["detected", "health_ok"], "{incident}");
    // The supervisor healed it: systemd never restarted it, nor did we.
    assert_eq!(machine.show(unit, "NRestarts"), "0");
    assert!(
        processes(&machine, unit)
            .iter()
            .any(|(pid, _, _)| *pid == main),
        "the supervisor lives on"
    );
    let (records, _) = daemon.stop();
    assert_eq!(incidents_of(&records, unit).len(), 1, "{records:?}");
}

#[test]
fn a_worker_oom_kill_is_a_unit_incident() {
    let unit = "fastapi-app.service";
    let machine = boot(unit, &guide_unit(&uvicorn(18011), "ok"));
    let (daemon, _config) = machine.watch_with_config(&policy(unit, "restart", 18011, ""));
    machine.systemctl(&["start", unit]);
    wait_serving(18011);
    let (_, workers) = main_and_workers(&machine, unit);
    // The workers move into a host cgroup v1 memory cgroup (the machine's systemd has no memory
    // controller on this hybrid host); the one that serves /hog grows until the OOM killer
    // takes it.
    let parent = tests::own_memcg_v1_path()
        .expect("the cgroup v1 memory controller is mounted on the project's machines");
    let memcg = format!(
        "{}/detector-worker-oom-{}",
        parent.trim_end_matches('/'),
        std::process::id()
    );
    let dir = std::path::PathBuf::from(format!("/sys/fs/cgroup/memory{memcg}"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    std::fs::write(
        dir.join("memory.limit_in_bytes"),
        (400u64 << 20).to_string(),
    )
    .expect("limit");
    for worker in &workers {
        std::fs::write(dir.join("cgroup.procs"), worker.to_string()).expect("move a worker");
    }
    let (status, _) = get(18011, "/hog").expect("GET /hog");
    assert_eq!(status, 200);
    let incident = incident_for(&daemon, unit);
    let (records, _) = daemon.stop();
    let _ = std::fs::remove_dir(&dir);
    assert_eq!(
        (
            incident["role"].as_str(),
            incident["cause"].as_str(),
            incident["action"].as_str()
        ),
        (Some("worker"), Some("oom_kill"), Some("watched")),
        "{incident}"
    );
    assert_eq!(steps(&incident), ["detected", "health_ok"], "{incident}");
    assert_eq!(incidents_of(&records, unit).len(), 1, "{records:?}");
}

#[test]
fn the_main_killed_is_exactly_one_incident_ending_healthy() {
    let unit = "fastapi-app.service";
    let machine = boot(unit, &guide_unit(&uvicorn(18012), "ok"));
    let (daemon, _config) = machine.watch_with_config(&policy(unit, "restart", 18012, ""));
    machine.systemctl(&["start", unit]);
    wait_serving(18012);
    let (main, workers) = main_and_workers(&machine, unit);
    kill(main, "KILL");
    let record = daemon.record_for(main);
    assert_eq!(record["role"], "main", "{record}");
    let incident = incident_for(&daemon, unit);
    assert_eq!(
        (
            incident["role"].as_str(),
            incident["pid"].as_u64(),
            incident["cause"].as_str(),
            incident["action"].as_str(),
        ),
        (
            Some("main"),
            Some(u64::from(main)),
            Some("signal"),
            Some("watched")
        ),
        "{incident}"
    );
    assert_eq!(steps(&incident).last(), Some(&"health_ok"), "{incident}");
    // The workers systemd stopped with it are part of it.
    let pids: Vec<u64> = incident["pids"]
        .as_array()
        .map(|p| p.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    for worker in &workers {
        assert!(pids.contains(&u64::from(*worker)), "{worker} in {incident}");
    }
    // Nothing more comes of it.
    thread::sleep(Duration::from_secs(3));
    let (records, _) = daemon.stop();
    assert_eq!(incidents_of(&records, unit).len(), 1, "{records:?}");
    for worker in &workers {
        assert_eq!(
            records
                .iter()
                .find(|r| r["kind"] == "exit" && r["pid"] == *worker)
                .map(|r| r["role"].clone()),
            Some(Value::from("worker")),
            "{worker}: an orphaned worker is still a worker"
        );
    }
}

#[test]
fn every_worker_hung_is_caught_by_liveness_and_restarted() {
    let unit = "fastapi-app.service";
    let machine = boot(unit, &guide_unit(&uvicorn(18013), "ok"));
    let (daemon, _config) = machine.watch_with_config(&policy(
        unit,
        "restart",
        18013,
        "liveness = { every = \"1s\", failures = 3 }\n",
    ));
    machine.systemctl(&["start", unit]);
    wait_serving(18013);
    // Every worker blocks its event loop; the restarted run must not hang again.
    let _ = get(18013, "/hang");
    thread::sleep(Duration::from_millis(500));
    let _ = machine.run(&["rm", "-f", "/tmp/demo-hang"]);
    let incident = incident_for(&daemon, unit);
    assert_eq!(
        (
            incident["role"].as_str(),
            incident["cause"].as_str(),
            incident["action"].as_str()
        ),
        (Some("unit"), Some("unhealthy"), Some("restarted")),
        "{incident}"
    );
    assert_eq!(
        steps(&incident),
        [
            "detected",
            "killed",
            "restart_requested",
            "unit_active",
            "health_ok"
        ],
        "{incident}"
    );
    let detail = incident["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("3 health checks in a row failed"),
        "{incident}"
    );
    let (records, _) = daemon.stop();
    assert_eq!(incidents_of(&records, unit).len(), 1, "{records:?}");
}

#[test]
fn workers_failing_at_import_give_a_bounded_number_of_incidents() {
    let unit = "fastapi-app.service";
    let machine = boot(unit, &guide_unit(&uvicorn(18014), "import"));
    let (daemon, _config) = machine.watch_with_config(&policy(
        unit,
        "expedite",
        18014,
        "crash_loop = { max_restarts = 2, window = \"5m\", backoff = \"1s\" }\n",
    ));
    machine.systemctl(&["start", "--no-block", unit]);
    daemon.wait_for_count("three incidents", 3, |r| {
        r["kind"] == "incident" && r["unit"] == unit
    });
    // The supervisor keeps respawning; no more incidents come of it.
    thread::sleep(Duration::from_secs(8));
    let (records, _) = daemon.stop();
    let incidents = incidents_of(&records, unit);
    assert_eq!(incidents.len(), 3, "{incidents:?}");
    let actions: Vec<&str> = incidents
        .iter()
        .map(|i| i["action"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        actions,
        ["restarted", "restarted", "gave_up"],
        "{incidents:?}"
    );
    for incident in &incidents {
        assert_eq!(
            (incident["role"].as_str(), incident["cause"].as_str()),
            (Some("worker"), Some("missing_dependency")),
            "{incident}"
        );
        assert!(
            journal_has(
                incident,
                "ModuleNotFoundError: No module named 'fastapi_settings_plugin'"
            ),
            "{incident}"
        );
        assert!(steps(incident).contains(&"respawn_loop"), "{incident}");
    }
    // Still one exit record per death: every death an incident counted (the import failures,
    // and the SIGTERMs of the runs detector stopped) has its record.
    let deaths = records
        .iter()
        .filter(|r| r["kind"] == "exit" && r["unit"] == unit)
        .count();
    let failed = records
        .iter()
        .filter(|r| r["kind"] == "exit" && r["unit"] == unit && r["exit_code"] == 1)
        .count();
    let counted: u64 = incidents.iter().filter_map(|i| i["deaths"].as_u64()).sum();
    assert!(
        failed >= 9 && u64::try_from(deaths).unwrap_or(0) >= counted,
        "{deaths} exit records, {counted} deaths in incidents"
    );
}

#[test]
fn gunicorns_arbiter_giving_up_is_one_incident_per_run() {
    let unit = "fastapi-app.service";
    let machine = boot(unit, &guide_unit(&gunicorn(18015), "import"));
    let (daemon, _config) = machine.watch_with_config(&policy(unit, "report", 18015, ""));
    machine.systemctl(&["start", "--no-block", unit]);
    let incident = incident_for(&daemon, unit);
    // The arbiter's own exit ("Worker failed to boot": 3, or 1 when, as seen under load, it
    // raises while halting) took over its worker's death, and its worker's cause.
    assert_eq!(
        (incident["role"].as_str(), incident["cause"].as_str()),
        (Some("main"), Some("missing_dependency")),
        "{incident}"
    );
    assert!(incident["deaths"].as_u64() >= Some(2), "{incident}");
    let detail = incident["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("Python module 'fastapi_settings_plugin' is not installed"),
        "{incident}"
    );
    assert!(
        journal_has(&incident, "Worker failed to boot"),
        "{incident}"
    );
    assert!(
        journal_has(&incident, "Main process exited, code=exited, status="),
        "{incident}"
    );
    let first_run = incident["invocation_id"].clone();
    let (records, _) = daemon.stop();
    let of_first_run = incidents_of(&records, unit)
        .into_iter()
        .filter(|i| i["invocation_id"] == first_run)
        .count();
    assert_eq!(of_first_run, 1, "{records:?}");
}
