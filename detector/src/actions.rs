//! Actions on the watched systemd, over its D-Bus API (zbus): unit state, and restarts.
//! The bus socket is looked up under `--root` (`ROOT/run/dbus/system_bus_socket`), so a daemon
//! on the host can act on a systemd-nspawn machine's units.
//!
//! Interfaces: <https://www.freedesktop.org/software/systemd/man/latest/org.freedesktop.systemd1.html>.

use std::{path::Path, time::Duration};

use zbus::OwnedObjectPath;

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    #[zbus(property)]
    fn load_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn sub_state(&self) -> zbus::Result<String>;
    #[zbus(property, name = "InvocationID")]
    fn invocation_id(&self) -> zbus::Result<Vec<u8>>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1"
)]
trait Service {
    #[zbus(property)]
    fn restart(&self) -> zbus::Result<String>;
    #[zbus(property, name = "RestartUSec")]
    fn restart_usec(&self) -> zbus::Result<u64>;
    #[zbus(property, name = "NRestarts")]
    fn n_restarts(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn result(&self) -> zbus::Result<String>;
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
fn unit_error(unit: &str, what: &'static str) -> impl FnOnce(zbus::Error) -> ActionError {
    let unit = unit.to_owned();
    move |source| ActionError::Unit { what, unit, source }
}

/// A connection to the watched systemd.
pub struct Systemd {
    connection: zbus::Connection,
}

/// How long connecting may take: a bus that hangs is as good as gone.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn hex(bytes: &[u8]) -> Option<String> {
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
    /// Connects to the system bus of the systemd whose files are at `root`.
    pub async fn connect(root: &Path) -> Result<Self, ActionError> {
        let socket = root
            .join("run/dbus/system_bus_socket")
            .display()
            .to_string();
        let build =
            zbus::connection::Builder::address(format!("unix:path={socket}").as_str()).build();
        match tokio::time::timeout(CONNECT_TIMEOUT, build).await {
            Ok(Ok(connection)) => Ok(Self { connection }),
            Ok(Err(source)) => Err(ActionError::Connect { socket, source }),
            Err(_) => Err(ActionError::Timeout {
                socket,
                timeout: CONNECT_TIMEOUT,
            }),
        }
    }

    /// The manager's proxy, for acting on `unit`.
    async fn manager(&self, unit: &str) -> Result<ManagerProxy<'_>, ActionError> {
        ManagerProxy::new(&self.connection)
            .await
            .map_err(unit_error(unit, "reach the manager for"))
    }

    /// The state of `unit` (loading it if systemd has not yet).
    pub async fn unit(&self, unit: &str) -> Result<UnitState, ActionError> {
        let err = |what| unit_error(unit, what);
        let manager = self.manager(unit).await?;
        let path = manager.load_unit(unit).await.map_err(err("load"))?;
        let proxy = UnitProxy::builder(&self.connection)
            .path(path.clone())
            .build()
            .await
            .map_err(err("address"))?;
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
            let service = ServiceProxy::builder(&self.connection)
                .path(path)
                .build()
                .await
                .map_err(err("address"))?;
            state.restart = service.restart().await.ok();
            state.restart_sec = service.restart_usec().await.ok().map(Duration::from_micros);
            state.n_restarts = service.n_restarts().await.ok();
            state.result = service.result().await.ok();
        }
        Ok(state)
    }

    /// Asks systemd to restart `unit` now (`RestartUnit(unit, "replace")`): a pending automatic
    /// restart's wait is replaced by this job.
    pub async fn restart(&self, unit: &str) -> Result<(), ActionError> {
        self.manager(unit)
            .await?
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
