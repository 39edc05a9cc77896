//! Health checks from the watched machine's network namespace, on real systemd in a machine
//! booted with `--private-network`: its `127.0.0.1` is its own loopback, which the host cannot
//! reach. Needs root; run with `cargo xtask test`.

#![expect(
    unused_crate_dependencies,
    reason = "each target of the tests package uses a part of its dependencies"
)]

use std::net::{Ipv4Addr, TcpStream};

use tests::{
    incidents::{check_recovery, demo, incident_for},
    machine::Machine,
};

/// Free on the host (this suite's range, 18600-18649): only the machine listens on it.
const PORT: u16 = 18600;

/// A unit that segfaults once, then serves on the machine's own loopback: restarted, and its
/// health check, made from the machine's network namespace, passes. From the host's namespace,
/// where the daemon runs, the same URL is refused.
#[test]
fn a_machine_with_its_own_network_is_checked_from_inside() {
    let unit = demo(
        "segv",
        PORT,
        "Environment=DEMO_FAIL_ONCE=/run/netns.failed\n",
    );
    let machine =
        Machine::boot_demo_with_args(&[("demo-netns.service", &unit)], &["--private-network"]);
    // A deadline within the harness's wait, so that a check made from the wrong namespace
    // shows as `health_failed` rather than as no incident at all.
    let (daemon, _config) = machine.watch_with_config(&format!(
        "[[unit]]\nname = \"demo-netns.service\"\nrestart = \"expedite\"\nhealth = {{ url = \
         \"http://127.0.0.1:{PORT}/health\", interval = \"50ms\", deadline = \"8s\" }}\n"
    ));
    machine.systemctl(&["start", "--no-block", "demo-netns.service"]);
    let incident = incident_for(&daemon, "demo-netns.service");
    // From the host's namespace this ends `health_failed` ("Connection refused").
    check_recovery(
        &incident,
        "restarted",
        &["detected", "restart_requested", "unit_active", "health_ok"],
    );
    let said = daemon.log_line("health checks connect from the watched systemd's network");
    assert!(
        said.contains(&format!("pid={}", machine.leader())),
        "{said}"
    );
    // The service answers inside the machine, and not from the host: a check made from the
    // daemon's own namespace would have ended `health_failed` ("Connection refused").
    machine.wait_healthy(&format!("http://127.0.0.1:{PORT}/health"));
    let from_host = TcpStream::connect((Ipv4Addr::LOCALHOST, PORT));
    assert!(
        from_host
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        "the host reaches the machine's port {PORT}: this test would pass from the host's \
         network namespace too ({from_host:?})"
    );
    let (records, _) = daemon.stop();
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "exit" && r["unit"] == "demo-netns.service"),
        "no death record of the unit"
    );
}
