//! tracefs: where it is, and the field offsets in a tracepoint's `format` file.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub(crate) enum TracefsError {
    #[error(
        "tracefs is not mounted (no {0}/events): mount it with `mount -t tracefs tracefs /sys/kernel/tracing`"
    )]
    NotMounted(String),
    #[error("cannot read tracepoint format {path}: {source}")]
    Format {
        path: String,
        source: std::io::Error,
    },
}

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The tracefs directory with tracepoint events, mounting it at /sys/kernel/tracing if nothing is
/// mounted yet (we run as root, and the kernel programs cannot attach without it).
pub(crate) fn locate() -> Result<PathBuf, TracefsError> {
    let found = || {
        CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|dir| dir.join("events").is_dir())
    };
    if let Some(dir) = found() {
        return Ok(dir);
    }
    let target = Path::new(CANDIDATES[0]);
    match nix::mount::mount(
        Some("tracefs"),
        target,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    ) {
        Ok(()) => tracing::info!(path = %target.display(), "mounted tracefs"),
        Err(e) => tracing::warn!(path = %target.display(), error = %e, "could not mount tracefs"),
    }
    found().ok_or_else(|| TracefsError::NotMounted(CANDIDATES[0].to_owned()))
}

/// A field of a tracepoint record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Field {
    pub offset: u32,
    pub size: u32,
}

/// Reads `events/<category>/<name>/format` under `tracefs`.
pub(crate) fn format(
    tracefs: &Path,
    category: &str,
    name: &str,
) -> Result<HashMap<String, Field>, TracefsError> {
    let path = tracefs
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let text = std::fs::read_to_string(&path).map_err(|source| TracefsError::Format {
        path: path.display().to_string(),
        source,
    })?;
    Ok(parse_format(&text))
}

/// Sets each `(field, size, slot)` to the field's offset in `event`'s record when the field
/// exists with that size (the size the kernel program reads); returns one line per field that
/// does not, naming the problem.
pub(crate) fn place_fields(
    event: &str,
    format: &HashMap<String, Field>,
    wanted: &mut [(&str, u32, &mut u32)],
) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, size, slot) in wanted.iter_mut() {
        match format.get(*name) {
            Some(f) if f.size == *size => **slot = f.offset,
            Some(f) => problems.push(format!(
                "{event} field `{name}` has size {}, expected {size}",
                f.size
            )),
            None => problems.push(format!("{event} has no `{name}` field on this kernel")),
        }
    }
    problems
}

/// Parses the `field:TYPE NAME; offset:N; size:N; signed:N;` lines of a format file. Lines it
/// does not understand are skipped: the caller checks for the fields it needs.
#[must_use]
pub(crate) fn parse_format(text: &str) -> HashMap<String, Field> {
    let mut fields = HashMap::new();
    for line in text.lines() {
        let mut decl = None;
        let (mut offset, mut size) = (None, None);
        for part in line.trim().split(';') {
            let part = part.trim();
            if let Some(d) = part.strip_prefix("field:") {
                decl = Some(d);
            } else if let Some(o) = part.strip_prefix("offset:") {
                offset = o.parse().ok();
            } else if let Some(s) = part.strip_prefix("size:") {
                size = s.parse().ok();
            }
        }
        let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else {
            continue;
        };
        // The name is the last word of the declaration, without an array suffix.
        let Some(name) = decl.split_whitespace().last() else {
            continue;
        };
        let name = name.split('[').next().unwrap_or(name);
        fields.insert(name.to_owned(), Field { offset, size });
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARK_VICTIM: &str = "name: mark_victim\nID: 609\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;\n\
\tfield:__data_loc char[] comm;\toffset:12;\tsize:4;\tsigned:0;\n\
\tfield:unsigned long total_vm;\toffset:16;\tsize:8;\tsigned:0;\n\
\tfield:char comm2[16];\toffset:20;\tsize:16;\tsigned:0;\n\
\tfield:short oom_score_adj;\toffset:64;\tsize:2;\tsigned:1;\n\
\nprint fmt: \"pid=%d\", REC->pid\n";

    #[test]
    fn parses_fields_of_all_shapes() {
        let fields = parse_format(MARK_VICTIM);
        let cases = [
            ("pid", 8, 4),
            ("comm", 12, 4),
            ("total_vm", 16, 8),
            ("comm2", 20, 16),
            ("oom_score_adj", 64, 2),
        ];
        for (name, offset, size) in cases {
            assert_eq!(fields.get(name), Some(&Field { offset, size }), "{name}");
        }
        assert!(!fields.contains_key("anon_rss"));
    }

    #[test]
    fn places_fields_and_names_problems() {
        let fields = parse_format(MARK_VICTIM);
        let (mut pid, mut vm, mut adj, mut rss) = (0, 0, 0, 0);
        let problems = place_fields(
            "oom:mark_victim",
            &fields,
            &mut [
                ("pid", 4, &mut pid),
                ("total_vm", 8, &mut vm),
                ("oom_score_adj", 4, &mut adj),
                ("anon_rss", 8, &mut rss),
            ],
        );
        assert_eq!((pid, vm, adj, rss), (8, 16, 0, 0));
        assert_eq!(
            problems,
            [
                "oom:mark_victim field `oom_score_adj` has size 2, expected 4",
                "oom:mark_victim has no `anon_rss` field on this kernel"
            ]
        );
    }

    #[test]
    fn garbage_gives_no_fields() {
        for text in [
            "",
            "field:",
            "field:int x; offset:zz; size:4;",
            "\u{0}\u{1}",
        ] {
            assert!(parse_format(text).is_empty(), "{text:?}");
        }
    }
}
