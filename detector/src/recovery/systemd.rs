//! The watched systemd over its D-Bus API (zbus): unit state, restarts, `reset-failed`. Waiting
//! for a unit to change state is in [`super::settle`].
//! The bus socket is looked up under `--root` (`ROOT/run/dbus/system_bus_socket`), so a daemon
//! on the host can act on a systemd-nspawn machine's units.
//!
//! Interfaces: <https://www.freedesktop.org/software/systemd/man/latest/org.freedesktop.systemd1.html>.

use std::{path::Path, time::Duration};

use zbus::{OwnedObjectPath, proxy::CacheProperties};

use crate::unit::root;

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::Result<()>;
    /// Without a subscriber, systemd does not send its units' PropertiesChanged signals.
    fn subscribe(&self) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
pub(super) trait Unit {
    #[zbus(property)]
    fn load_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn sub_state(&self) -> zbus::Result<String>;
    #[zbus(property, name = "InvocationID")]
    fn invocation_id(&self) -> zbus::Result<Vec<u8>>;
    /// The unit's pending job (id 0 when none).
    #[zbus(property)]
    fn job(&self) -> zbus::Result<(u32, OwnedObjectPath)>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1"
)]
pub(super) trait Service {
    #[zbus(property)]
    fn restart(&self) -> zbus::Result<String>;
    #[zbus(property, name = "RestartUSec")]
    fn restart_usec(&self) -> zbus::Result<u64>;
    #[zbus(property, name = "NRestarts")]
    fn n_restarts(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn result(&self) -> zbus::Result<String>;
    /// `EnvironmentFile=`: each path, and whether it may be missing (`-` prefix).
    #[zbus(property)]
    fn environment_files(&self) -> zbus::Result<Vec<(String, bool)>>;
}

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("cannot reach systemd's bus at {socket}: {source}")]
    Connect { socket: String, source: zbus::Error },
    #[error("systemd's bus at {socket} did not answer within {timeout:?}")]
    Timeout { socket: String, timeout: Duration },
    #[error("systemd could not {what} {unit}: {source}")]
    Unit {
        what: &'static str,
        unit: String,
        source: zbus::Error,
    },
}

/// What systemd says of a unit now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitState {
    /// `loaded`, `not-found`, `bad-setting`, ...
    pub load_state: String,
    /// `active`, `activating`, `failed`, `inactive`, ...
    pub active_state: String,
    /// `running`, `auto-restart`, `dead`, ...
    pub sub_state: String,
    pub invocation_id: Option<String>,
    /// For services: `Restart=` (`no`, `on-failure`, `always`, ...).
    pub restart: Option<String>,
    /// For services: `RestartSec=`.
    pub restart_sec: Option<Duration>,
    /// For services: restarts systemd did on its own.
    pub n_restarts: Option<u32>,
    /// For services: how the last run ended (`success`, `exit-code`, `signal`, `start-limit-hit`, ...).
    pub result: Option<String>,
}

/// Turns a bus error about `unit` into an [`ActionError`] saying what systemd could not do.
pub(super) fn unit_error(
    unit: &str,
    what: &'static str,
) -> impl FnOnce(zbus::Error) -> ActionError {
    let unit = unit.to_owned();
    move |source| ActionError::Unit { what, unit, source }
}

/// A connection to the watched systemd.
pub struct Systemd {
    pub(super) connection: zbus::Connection,
    /// Built once: a restart is one round trip.
    manager: ManagerProxy<'static>,
    /// Units' object paths, asked once (`LoadUnit`): a unit's path never changes.
    paths: std::sync::Mutex<std::collections::HashMap<String, OwnedObjectPath>>,
}

/// Most unit object paths kept (one per unit acted on or watched).
const MAX_PATHS: usize = 4096;
/// How long connecting may take: a bus that hangs is as good as gone.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long any one call to systemd may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `RestartSec=` the waits take (a week): `infinity` is `u64::MAX` µs.
const RESTART_SEC_MAX: Duration = Duration::from_hours(168);
pub(super) fn hex(bytes: &[u8]) -> Option<String> {
    use std::fmt::Write as _;
    (!bytes.is_empty()).then(|| {
        bytes
            .iter()
            .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
                let _ = write!(out, "{b:02x}");
                out
            })
    })
}

impl Systemd {
    /// How many units' object paths are kept (at most [`MAX_PATHS`]).
    #[must_use]
    pub(crate) fn cached_paths(&self) -> usize {
        self.paths
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Connects to the system bus of the systemd whose files are at `root`.
    pub async fn connect(root: &Path) -> Result<Self, ActionError> {
        let socket = root
            .join("run/dbus/system_bus_socket")
            .display()
            .to_string();
        // Resolved inside the machine: a symlink it planted must not lead to the host's bus.
        let (_held, inside) = root::pinned(root, "/run/dbus/system_bus_socket").map_err(|e| {
            ActionError::Connect {
                socket: socket.clone(),
                source: zbus::Error::InputOutput(std::sync::Arc::new(e)),
            }
        })?;
        // A systemd that stops answering must not hold a recovery forever.
        let build = zbus::connection::Builder::address(format!("unix:path={inside}").as_str())
            .method_timeout(CALL_TIMEOUT)
            .build();
        let connect = async {
            let connection = build.await?;
            // Properties are read fresh each time: the cache would wait on signals.
            let manager = ManagerProxy::builder(&connection)
                .cache_properties(CacheProperties::No)
                .build()
                .await?;
            Ok::<_, zbus::Error>(Self {
                connection,
                manager,
                paths: std::sync::Mutex::default(),
            })
        };
        let systemd = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(systemd)) => systemd,
            Ok(Err(source)) => return Err(ActionError::Connect { socket, source }),
            Err(_) => {
                return Err(ActionError::Timeout {
                    socket,
                    timeout: CONNECT_TIMEOUT,
                });
            }
        };
        // Without it, waiting on a unit falls back to reading its state now and then.
        if let Err(e) = systemd.manager.subscribe().await {
            tracing::warn!(socket, error = %e, "cannot subscribe to systemd's signals; unit states will be polled");
        }
        Ok(systemd)
    }

    /// The state of `unit` (loading it if systemd has not yet).
    pub async fn unit(&self, unit: &str) -> Result<UnitState, ActionError> {
        let err = |what| unit_error(unit, what);
        let path = self.path(unit).await?;
        let proxy: UnitProxy<'static> = self.proxy(unit, path.clone()).await?;
        let mut state = UnitState {
            load_state: proxy.load_state().await.map_err(err("read the state of"))?,
            active_state: proxy
                .active_state()
                .await
                .map_err(err("read the state of"))?,
            sub_state: proxy.sub_state().await.map_err(err("read the state of"))?,
            invocation_id: proxy.invocation_id().await.ok().as_deref().and_then(hex),
            restart: None,
            restart_sec: None,
            n_restarts: None,
            result: None,
        };
        if unit.ends_with(".service") && state.load_state == "loaded" {
            let service: ServiceProxy<'static> = self.proxy(unit, path).await?;
            state.restart = service.restart().await.ok();
            // `RestartSec=infinity` is u64::MAX µs: the waits built on it must not overflow.
            state.restart_sec = service
                .restart_usec()
                .await
                .ok()
                .map(|us| Duration::from_micros(us).min(RESTART_SEC_MAX));
            state.n_restarts = service.n_restarts().await.ok();
            state.result = service.result().await.ok();
        }
        Ok(state)
    }

    /// Clears a failed unit's state, and with it systemd's start-rate limit counter
    /// (`systemctl reset-failed`).
    pub async fn reset_failed(&self, unit: &str) -> Result<(), ActionError> {
        self.manager
            .reset_failed_unit(unit)
            .await
            .map_err(unit_error(unit, "reset the failed state of"))
    }

    /// A proxy of type `P` for `unit`'s object at `path`, reading properties fresh each time
    /// (a cache would wait on signals).
    pub(super) async fn proxy<P>(&self, unit: &str, path: OwnedObjectPath) -> Result<P, ActionError>
    where
        P: From<zbus::Proxy<'static>> + zbus::proxy::Defaults,
    {
        zbus::proxy::Builder::<P>::new(&self.connection)
            .path(path)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(unit_error(unit, "address"))
    }

    /// The object path of `unit`, loading the unit if systemd has not yet.
    pub(super) async fn path(&self, unit: &str) -> Result<OwnedObjectPath, ActionError> {
        let known = self
            .paths
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(unit)
            .cloned();
        if let Some(path) = known {
            return Ok(path);
        }
        let path = self
            .manager
            .load_unit(unit)
            .await
            .map_err(unit_error(unit, "load"))?;
        let mut paths = self
            .paths
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Paths are cheap to ask again: past the bound the cache starts over.
        if paths.len() >= MAX_PATHS {
            paths.clear();
        }
        paths.insert(unit.to_owned(), path.clone());
        Ok(path)
    }

    /// The unit's `EnvironmentFile=` entries: (path, may be missing).
    pub(crate) async fn environment_files(
        &self,
        unit: &str,
    ) -> Result<Vec<(String, bool)>, ActionError> {
        let path = self.path(unit).await?;
        let service: ServiceProxy<'static> = self.proxy(unit, path).await?;
        service
            .environment_files()
            .await
            .map_err(unit_error(unit, "read the environment files of"))
    }

    /// Sends `signal` to every process of `unit` (`systemctl kill --kill-whom=all`).
    pub(crate) async fn kill(&self, unit: &str, signal: i32) -> Result<(), ActionError> {
        self.manager
            .kill_unit(unit, "all", signal)
            .await
            .map_err(unit_error(unit, "signal"))
    }

    /// Asks systemd to restart `unit` now (`RestartUnit(unit, "replace")`): a pending automatic
    /// restart's wait is replaced by this job.
    pub async fn restart(&self, unit: &str) -> Result<(), ActionError> {
        self.manager
            .restart_unit(unit, "replace")
            .await
            .map_err(unit_error(unit, "restart"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn invocation_ids_are_hex() {
        assert_eq!(super::hex(&[0x0f, 0xa0, 0x01]).as_deref(), Some("0fa001"));
        assert_eq!(super::hex(&[]), None);
    }

    #[tokio::test]
    async fn a_missing_bus_is_named() {
        let err = super::Systemd::connect(std::path::Path::new("/nonexistent-root"))
            .await
            .err()
            .expect("no bus there");
        assert!(
            err.to_string().starts_with(
                "cannot reach systemd's bus at /nonexistent-root/run/dbus/system_bus_socket: "
            ),
            "{err}"
        );
    }
}
