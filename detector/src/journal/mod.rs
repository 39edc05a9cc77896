//! Stage 4, the journal's account of a death: for each death in a service, the journal thread
//! waits (within a bound) for PID 1's own account of it, takes the failed run's last lines, and
//! classifies the cause.
//!
//! The dying process's last lines reach journald after its death, through its stdout stream. So
//! we wait for PID 1's "Main process exited" (`MESSAGE_ID=98e322203f7a4ed290d09fe03c09fe15`, with
//! `UNIT=` and `INVOCATION_ID=`), logged after PID 1 reaped the process. It tells three things at
//! once: the death failed the unit (it was the main process, not a worker), which run of the unit
//! it was, and that the process's own output is in. Then we take that run's last lines, as
//! `journalctl -u UNIT _SYSTEMD_INVOCATION_ID=...` would show them ([`reader`]), and the cause
//! from the death and those lines ([`causes`], rules as data in `rules.toml`).
//!
//! - In: [`Request`]s: a unit and an [`ExitRecord`], with a channel for the answer.
//! - Out: an [`Account`] per request: main process or not, the run, its lines, the cause, and for
//!   `port_in_use` the port's holder.
//! - Must not know: incidents, policies, D-Bus, sinks. It runs on one thread of its own
//!   ([`spawn`]): sd-journal handles are not thread-safe, and waiting must not hold up the ring
//!   buffer.

pub(crate) mod causes;
pub(crate) mod exit_status;
mod pool;
mod reader;

use std::{path::PathBuf, sync::Arc, time::Duration};

use systemd::journal::Journal;
use tokio::sync::oneshot;

pub(crate) use self::pool::{Readers, spawn};
use crate::{
    config::{Live, rules::Rule},
    death::record::ExitRecord,
    kernel::clock::Clock,
    unit::{names, ports},
};

/// A death sooner than this after its unit started is a startup failure, unless the unit's
/// policy says otherwise.
const STARTUP_GRACE: Duration = Duration::from_secs(10);

/// How the journal thread works.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub root: PathBuf,
    /// How many lines an incident carries, for units the configuration does not set it for.
    pub lines: usize,
    /// How long to wait for PID 1's account of a death.
    pub wait: Duration,
    /// Unit policies and the operator's cause rules, as reloaded.
    pub config: Arc<Live>,
    /// The cgroup the watched systemd manages, for naming the unit that holds a port.
    pub manager_root: String,
    /// A process in the watched systemd's network namespace, for finding who holds a port.
    pub netns_pid: i32,
}

/// The journal thread's answer for one death.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    /// PID 1 said the death was its unit's main process: the unit failed. False also when PID 1
    /// said nothing within the wait.
    pub main_process: bool,
    /// The run (PID 1's `INVOCATION_ID`, else the one read from the cgroup at the death).
    pub invocation_id: Option<String>,
    /// The run's last lines, oldest first.
    pub lines: Vec<String>,
    /// The cause and its detail (see [`causes`]).
    pub cause: causes::Cause,
    /// For `port_in_use`: the process (and unit) listening on the port.
    pub port_holder: Option<ports::Holder>,
    /// Why there are no lines, when the journal could not be read.
    pub unread: Option<String>,
}

/// What the journal thread is asked, and where its answer goes.
pub(crate) enum Request {
    /// A death in a service.
    Death {
        unit: String,
        record: Box<ExitRecord>,
        answer: oneshot::Sender<Account>,
    },
    /// A run systemd failed with no death to explain it (a start it could not make).
    Run {
        unit: String,
        invocation: Option<String>,
        answer: oneshot::Sender<Account>,
    },
}

/// What the journal thread keeps between deaths.
struct Reader {
    options: Options,
    /// The operator's rules, then the built-in ones.
    rules: Vec<Rule>,
    /// The configuration's version the rules were built from.
    rules_version: u64,
    journal: Option<Journal>,
    last_error: String,
}

/// The operator's rules from `config`, then the built-in ones.
fn rules(config: &Live) -> (Vec<Rule>, u64) {
    let version = config.version();
    let mut rules = config.get().rules.clone();
    rules.extend(causes::builtin());
    (rules, version)
}

impl Reader {
    /// The rules of the configuration in force, built again after a reload.
    fn refresh_rules(&mut self) {
        if self.options.config.version() != self.rules_version {
            (self.rules, self.rules_version) = rules(&self.options.config);
        }
    }

    /// What the journal says about a run of `unit` that systemd failed without a death: its
    /// lines, and the cause they (or systemd's `Result=`) tell.
    fn run(&mut self, unit: &str, invocation: Option<String>) -> Account {
        self.ensure_open();
        self.refresh_rules();
        let n = self
            .options
            .config
            .get()
            .policy(unit)
            .map_or(self.options.lines, |p| p.journal_lines);
        let mut unread = None;
        let lines = match self
            .journal
            .as_mut()
            .map(|j| reader::collect_run(j, unit, invocation.as_deref(), n))
        {
            Some(Ok(lines)) => lines,
            Some(Err(e)) => {
                tracing::warn!(unit, error = %e, "reading the journal failed; reopening it next time");
                self.journal = None;
                unread = Some(format!("not read: reading the journal failed: {e}"));
                Vec::new()
            }
            None => {
                unread = Some(format!("not read: {}", self.last_error));
                Vec::new()
            }
        };
        let cause = causes::classify_run(&lines, &self.rules);
        Account {
            main_process: true,
            invocation_id: invocation,
            lines,
            cause,
            port_holder: None,
            unread,
        }
    }

    /// Opens the journal if it is not open; an error is logged once.
    fn ensure_open(&mut self) {
        if self.journal.is_none() {
            match reader::open(&self.options.root) {
                Ok(j) => self.journal = Some(j),
                Err(e) if e != self.last_error => {
                    tracing::warn!("{e}; incidents go out without journal lines");
                    self.last_error = e;
                }
                Err(_) => {}
            }
        }
    }

    /// What the journal says about `record`'s death in `unit`.
    fn account(&mut self, unit: &str, record: &ExitRecord) -> Account {
        self.ensure_open();
        self.refresh_rules();
        let config = self.options.config.get();
        let policy = config.policy(unit);
        let n = policy.map_or(self.options.lines, |p| p.journal_lines);
        let startup_grace = policy.map_or(STARTUP_GRACE, |p| p.startup_grace);
        // Without a journal we cannot tell the main process: every death in a service counts.
        let unread = || reader::Collected {
            main_process: true,
            invocation_id: record.invocation_id.clone(),
            started_us: None,
            lines: Vec::new(),
        };
        let clock = Clock::now();
        let mut unread_because = None;
        let collected = match self.journal.as_mut().map(|j| {
            if record.role == Some("worker") {
                reader::collect_worker(j, unit, record, n)
            } else {
                reader::collect(j, unit, record, clock, self.options.wait, n)
            }
        }) {
            Some(Ok(collected)) => collected,
            Some(Err(e)) => {
                tracing::warn!(unit, error = %e, "reading the journal failed; reopening it for the next death");
                self.journal = None;
                unread_because = Some(format!("not read: reading the journal failed: {e}"));
                unread()
            }
            None => {
                unread_because = Some(format!("not read: {}", self.last_error));
                unread()
            }
        };
        let main_process = collected.main_process;
        if !main_process {
            tracing::debug!(
                unit,
                pid = record.pid,
                "PID 1 did not report it as the unit's main process"
            );
        }
        let died_us = clock.realtime_us(record.ktime_ns);
        let uptime = collected
            .started_us
            .map(|s| Duration::from_micros(died_us.saturating_sub(s)));
        let cause = causes::classify(
            record,
            &collected.lines,
            &self.rules,
            causes::Context {
                uptime,
                startup_grace,
            },
        );
        let reader::Collected {
            main_process: _,
            invocation_id,
            started_us: _,
            lines,
        } = collected;
        let mut account = Account {
            main_process,
            invocation_id,
            lines,
            cause,
            port_holder: None,
            unread: unread_because,
        };
        if account.cause.0 == "port_in_use" {
            self.name_port_holder(
                &mut account,
                policy
                    .and_then(|p| p.health.as_ref())
                    .and_then(|h| h.url.port_or_known_default()),
            );
        }
        account
    }

    /// Names the process and unit holding the port a `port_in_use` failure wanted: the port from
    /// the run's lines, else from the unit's health check URL.
    ///
    /// The lines are the service's own words, and a hostile service could name any port to have
    /// another unit blamed: a port only its log names is said to be "claimed by its log"; one the
    /// unit's configured health check also uses is confirmed.
    fn name_port_holder(&self, account: &mut Account, health_port: Option<u16>) {
        let logged = ports::port_in_lines(&account.lines);
        let Some(port) = logged.or(health_port) else {
            return;
        };
        let claimed = if logged.is_some() && logged != health_port {
            " (claimed by its log)"
        } else {
            ""
        };
        let Some(mut holder) = ports::holders(self.options.netns_pid, port)
            .into_iter()
            .next()
        else {
            return;
        };
        holder.unit = holder
            .cgroup
            .as_deref()
            .and_then(|c| names::units(&self.options.manager_root, c))
            .map(|u| u.user_unit.unwrap_or(u.unit));
        let unit = holder
            .unit
            .as_deref()
            .map_or_else(String::new, |u| format!(" of {u}"));
        let detail = &mut account.cause.1;
        *detail = format!(
            "{detail}: port {port}{claimed} is held by {} (pid {}){unit}",
            holder.comm, holder.pid
        );
        account.port_holder = Some(holder);
    }
}
