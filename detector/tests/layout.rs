//! The tree is the flow: `detector/src` has one folder per stage, and a stage may use an earlier
//! stage, never a later one. This reads every source file and checks each `crate::STAGE` path
//! against that order, so an import that points backwards (or a cycle between stages) fails here
//! with the file and line.

#![expect(
    unused_crate_dependencies,
    reason = "this test reads the sources as text; the package's dependencies are the daemon's"
)]

use std::path::{Path, PathBuf};

/// The stages in the order data flows through them. `config` comes first: every stage may read
/// the operator's configuration, and it uses none of them. `daemon` wires the stages, `cli`
/// starts the daemon.
const ORDER: [&str; 10] = [
    "config", "kernel", "death", "unit", "journal", "incident", "recovery", "sinks", "daemon",
    "cli",
];

fn rank(stage: &str) -> Option<usize> {
    ORDER.iter().position(|s| *s == stage)
}

/// The stage a source file belongs to: its folder, or its own name for a top-level file
/// (`daemon.rs`); None for the crate roots.
fn stage_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let stage = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(stage, "lib" | "main")).then(|| stage.to_owned())
}

/// `(line, used stage)` for every `crate::STAGE` in `text` that is later than `stage`.
fn backward_uses(stage: &str, text: &str) -> Vec<(usize, String)> {
    let own = rank(stage).unwrap_or_else(|| panic!("`{stage}` is not a stage in ORDER"));
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let used: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::{a, b}` names several: check each.
            let names: Vec<String> = if used.is_empty() && rest.starts_with('{') {
                rest[1..]
                    .split([',', '}'])
                    .map(|s| s.trim().split("::").next().unwrap_or("").to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            } else {
                vec![used]
            };
            for name in names {
                if rank(&name).is_some_and(|r| r > own) {
                    found.push((n + 1, name));
                }
            }
        }
    }
    found
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_stage_uses_only_earlier_stages() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut stages_seen = std::collections::BTreeSet::new();
    let mut wrong = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let Some(stage) = stage_of(relative) else {
            continue;
        };
        assert!(
            rank(&stage).is_some(),
            "{} is in `{stage}`, which is not a stage of the flow: add it to ORDER (and to \
             ARCHITECTURE.md) or move the file",
            relative.display()
        );
        stages_seen.insert(stage.clone());
        let text = std::fs::read_to_string(file).expect("source file");
        for (line, used) in backward_uses(&stage, &text) {
            wrong.push(format!(
                "{}:{line}: `{stage}` uses the later stage `{used}`",
                relative.display()
            ));
        }
    }
    assert_eq!(
        stages_seen.len(),
        ORDER.len(),
        "every stage in ORDER has code: {stages_seen:?}"
    );
    assert!(
        wrong.is_empty(),
        "imports against the flow:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_check_sees_backward_uses() {
    let text = "use crate::kernel::clock;\nuse crate::{death::record, sinks::stdout};\n\
                let x = crate::recovery::policy::plan();\n";
    assert_eq!(
        backward_uses("unit", text),
        [(2, "sinks".to_owned()), (3, "recovery".to_owned())]
    );
    assert_eq!(backward_uses("daemon", text), []);
}
