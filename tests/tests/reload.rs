//! SIGHUP reloads the configuration: a good file is in force, a bad one is logged with its file
//! and line and changes nothing. Needs root; run with `cargo xtask test`.

#![expect(
    unused_crate_dependencies,
    reason = "each target of the tests package uses a part of its dependencies"
)]

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tests::Daemon;

#[test]
fn sighup_reloads_and_a_bad_file_keeps_the_old_configuration() {
    let file = std::env::temp_dir().join(format!("detector-reload-{}.toml", std::process::id()));
    std::fs::write(&file, "[[unit]]\nname = \"a.service\"\n").expect("write");
    let daemon = Daemon::start_with(&["--config", file.to_str().expect("utf-8")]);
    let hup = || kill(Pid::from_raw(daemon.pid() as i32), Signal::SIGHUP).expect("SIGHUP");

    std::fs::write(
        &file,
        "[[unit]]\nname = \"a.service\"\nrestart = \"sometimes\"\n",
    )
    .expect("write");
    hup();
    let refused = daemon.log_line("the configuration in force is kept");
    assert!(
        refused.contains(&format!("{}:3:", file.display())),
        "names the file and line: {refused}"
    );

    std::fs::write(
        &file,
        "[[unit]]\nname = \"a.service\"\n\n[[unit]]\nname = \"b.service\"\n",
    )
    .expect("write");
    hup();
    let reloaded = daemon.log_line("configuration reloaded");
    assert!(reloaded.contains("units=2"), "{reloaded}");
    let (_, stderr) = daemon.stop();
    let _ = std::fs::remove_file(&file);
    assert!(stderr.iter().any(|l| l.contains("detector stopped")));
}
