//! The daemon's command line, run as a user would.

#![expect(
    unused_crate_dependencies,
    reason = "each target of the tests package uses a part of its dependencies"
)]

use std::process::Command;

fn check_config(text: &str) -> (i32, String, String) {
    let file = std::env::temp_dir().join(format!(
        "detector-check-{}-{}.toml",
        std::process::id(),
        text.len()
    ));
    std::fs::write(&file, text).expect("write config");
    let out = Command::new(tests::detector_bin())
        .arg("check-config")
        .arg(&file)
        .output()
        .expect("run detector");
    let _ = std::fs::remove_file(&file);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).replace(&file.display().to_string(), "FILE"),
    )
}

#[test]
fn check_config_accepts_a_good_file_and_names_the_line_of_a_bad_one() {
    let good = "[[unit]]\nname = \"fastapi-app.service\"\nrestart = \"expedite\"\n\n[[rule]]\ncause = \"db\"\npattern = \"refused\"\ndetail = \"db down\"\n";
    let (code, stdout, stderr) = check_config(good);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.ends_with(": ok (1 units, 1 rules)\n"), "{stdout}");

    let bad = "[[unit]]\nname = \"fastapi-app.service\"\nrestart = \"sometimes\"\n";
    let (code, _, stderr) = check_config(bad);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(
            "FILE:3: restart = \"sometimes\": use \"report\", \"restart\" or \"expedite\""
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
