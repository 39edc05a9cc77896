//! systemd units from cgroup paths, by the layout systemd gives its cgroup tree
//! (<https://systemd.io/CGROUP_DELEGATION/>; `cg_path_get_unit()` and `cg_path_get_user_unit()`
//! in systemd's src/basic/cgroup-util.c):
//!
//! - slices nest (`system.slice/app.slice`); the first non-slice unit below them owns the process
//!   (`system.slice/app.service`), and anything deeper belongs to it (delegated sub-cgroups);
//! - a process directly in a slice belongs to the slice;
//! - below `user@UID.service` a user's own manager repeats the same layout for user units;
//! - a cgroup directory whose name could clash with a kernel file is escaped with a leading `_`.

/// The units a cgroup path belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Units {
    /// The system manager's unit: `app.service`, `session-3.scope`, `user@1000.service`, ...
    pub unit: String,
    /// The unit of a user's manager (`user@UID.service`) the process is in, if any.
    pub user_unit: Option<String>,
}

const UNIT_SUFFIXES: [&str; 10] = [
    ".service",
    ".scope",
    ".slice",
    ".socket",
    ".mount",
    ".swap",
    ".device",
    ".automount",
    ".timer",
    ".path",
];

/// `app@1.service` → `(app@1.service, .service)`; `_cgroup.procs.service` →
/// `cgroup.procs.service`; a component that is not a unit name → None.
fn unit_name(component: &str) -> Option<(&str, &'static str)> {
    let name = component.strip_prefix('_').unwrap_or(component);
    let suffix = UNIT_SUFFIXES.iter().find(|s| name.ends_with(*s))?;
    let prefix = &name[..name.len() - suffix.len()];
    // A template instance needs both a template and an instance name (`app@.service` is a
    // template, never a running unit).
    let valid = !prefix.is_empty() && !prefix.starts_with('@') && !prefix.ends_with('@');
    valid.then_some((name, suffix))
}

/// The unit a run of path components belongs to: the first non-slice unit, or the innermost
/// slice when the process sits in a slice itself. Returns the unit and the components below it.
fn owner<'a>(components: &[&'a str]) -> Option<(&'a str, usize)> {
    let mut slice = None;
    for (i, component) in components.iter().enumerate() {
        let (name, suffix) = unit_name(component)?;
        if suffix == ".slice" {
            slice = Some((name, i + 1));
        } else {
            return Some((name, i + 1));
        }
    }
    slice
}

/// The cgroup a systemd manager manages, from the cgroup of its PID 1: PID 1 sits in
/// `init.scope` right below it. `0::/init.scope` → `/` on a host; `0::/payload/init.scope` →
/// `/payload` for a systemd-nspawn machine seen from the host.
#[must_use]
pub(crate) fn manager_root(proc_pid_cgroup: &str) -> Option<String> {
    let path = proc_pid_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?;
    let parent = path.trim_end_matches('/').strip_suffix("/init.scope")?;
    Some(if parent.is_empty() {
        "/".to_owned()
    } else {
        parent.to_owned()
    })
}

/// The units of a cgroup2 path (relative to the hierarchy root) under the manager that manages
/// `root` (see [`manager_root`]). None for the manager's root cgroup, for paths outside its
/// tree, and for paths outside systemd's layout.
#[must_use]
pub(crate) fn units(root: &str, path: &str) -> Option<Units> {
    let path = if root == "/" {
        path
    } else {
        let rest = path.strip_prefix(root.trim_end_matches('/'))?;
        if !rest.is_empty() && !rest.starts_with('/') {
            return None;
        }
        rest
    };
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let (unit, below) = owner(&components)?;
    let user_unit = unit
        .strip_prefix("user@")
        .and_then(|rest| rest.strip_suffix(".service"))
        .filter(|uid| uid.parse::<u32>().is_ok())
        .and_then(|_| owner(&components[below..]))
        .map(|(name, _)| name.to_owned());
    Some(Units {
        unit: unit.to_owned(),
        user_unit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (cgroup path, expected (unit, user unit)).
    type Case = (&'static str, Option<(&'static str, Option<&'static str>)>);

    #[test]
    fn manager_roots() {
        for (cgroup, want) in [
            ("0::/init.scope\n", Some("/")),
            ("4:memory:/x\n0::/payload/init.scope\n", Some("/payload")),
            ("0::/system.slice/app.service\n", None),
            ("1:name=systemd:/init.scope\n", None),
        ] {
            assert_eq!(manager_root(cgroup).as_deref(), want, "{cgroup:?}");
        }
    }

    #[test]
    fn units_of_a_machine_seen_from_the_host() {
        let got = |path| units("/payload", path).map(|u| u.unit);
        assert_eq!(
            got("/payload/system.slice/demo.service").as_deref(),
            Some("demo.service")
        );
        assert_eq!(got("/payload"), None);
        assert_eq!(got("/payloadx/system.slice/demo.service"), None);
        assert_eq!(
            got("/system.slice/demo.service"),
            None,
            "the host's own units are not the machine's"
        );
    }

    #[test]
    fn systemd_layouts() {
        let cases: [Case; 13] = [
            (
                "/system.slice/fastapi-app.service",
                Some(("fastapi-app.service", None)),
            ),
            (
                "/system.slice/system-app.slice/app@1.service",
                Some(("app@1.service", None)),
            ),
            (
                "/system.slice/docker.service/payload/inner",
                Some(("docker.service", None)),
            ),
            (
                "/user.slice/user-1000.slice/session-3.scope",
                Some(("session-3.scope", None)),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service",
                Some(("user@1000.service", Some("foo.service"))),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/init.scope",
                Some(("user@1000.service", Some("init.scope"))),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service",
                Some(("user@1000.service", None)),
            ),
            ("/init.scope", Some(("init.scope", None))),
            ("/machine.slice", Some(("machine.slice", None))),
            (
                "/system.slice/_cgroup.procs.service",
                Some(("cgroup.procs.service", None)),
            ),
            ("/", None),
            ("/detector-cg-42", None),
            ("/system.slice/app@.service", None),
        ];
        for (path, want) in cases {
            let got = units("/", path);
            let got = got
                .as_ref()
                .map(|u| (u.unit.as_str(), u.user_unit.as_deref()));
            assert_eq!(got, want, "{path}");
        }
    }
}
