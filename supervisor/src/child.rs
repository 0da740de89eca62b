//! One supervising task per child process: spawn it (hardened, see `iot_connector_ipc::os`),
//! hand it its configuration slice, watch its heartbeats, and restart it by the policy when it
//! exits, hangs or is told to.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use iot_connector_config::Loaded;
use iot_connector_ipc::{ExitStatus, FrameReader, FrameWriter, expect, handshake, new_token, os};
use iot_connector_proto::{ChildReport, Message, Role, SourceGrant, Start, UplinkSettings, now_us};
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    net::unix::{OwnedReadHalf, OwnedWriteHalf},
    process::{Child, Command},
    sync::{mpsc, oneshot},
};

use crate::{
    board::{Board, Phase, UPLINK},
    policy::RestartPolicy,
};

/// A child silent for this long is killed and restarted.
pub const WATCHDOG: Duration = Duration::from_secs(10);
/// How long a child may take from exec to `Ready`.
const STARTUP: Duration = Duration::from_secs(30);
/// How long a stopped child gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What an operator, a reload or a shutdown asks of a supervising task.
#[derive(Debug)]
pub enum ChildCommand {
    /// Stop the process and stay stopped.
    Stop,
    /// Start a stopped (or config-waiting) process.
    Start,
    /// Restart the process now.
    Restart,
    /// The configuration changed: restart with the new one.
    Replace(Arc<Loaded>),
    /// Stop the process (within `deadline`) and end the task; reply when done.
    Shutdown(Duration, oneshot::Sender<()>),
}

/// What every supervising task shares.
#[derive(Debug)]
pub struct Shared {
    /// The process table.
    pub board: Board,
    /// Where the child binaries are.
    pub bin_dir: PathBuf,
    /// Environment passed to children (an allow-list; everything else is cleared).
    pub env: Vec<(String, String)>,
    /// Every worker's current grant, so that a restarted uplink gets them all at once.
    pub grants: Mutex<BTreeMap<String, SourceGrant>>,
    /// New grants for the running uplink.
    pub grant_tx: mpsc::UnboundedSender<SourceGrant>,
}

impl Shared {
    fn grant(&self, grant: SourceGrant) {
        self.grants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(grant.source.clone(), grant.clone());
        let _ = self.grant_tx.send(grant);
    }

    fn current_grants(&self) -> Vec<SourceGrant> {
        let grants = self
            .grants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        grants.values().cloned().collect()
    }

    /// Forgets a removed source's grant.
    pub fn revoke(&self, source: &str) {
        self.grants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(source);
    }
}

/// Which process a task supervises.
#[derive(Debug, Clone)]
pub enum Kind {
    /// The uplink.
    Uplink,
    /// The worker of the named source.
    Worker(String),
}

impl Kind {
    fn name(&self) -> &str {
        match self {
            Self::Uplink => UPLINK,
            Self::Worker(name) => name,
        }
    }
}

fn binary(kind: &Kind, loaded: &Loaded) -> String {
    match kind {
        Kind::Uplink => "iot-connector-uplink".into(),
        Kind::Worker(name) => loaded
            .source(name)
            .map_or("iot-connector-unknown", |s| s.protocol().binary())
            .into(),
    }
}

enum Mode {
    Run,
    Stopped,
    WaitingForConfigChange,
}

/// How one run of a process ended.
enum Ended {
    /// It exited (or was killed by the watchdog): why.
    Exited(Option<ExitStatus>, String),
    /// A command ended it.
    Commanded(ChildCommand),
}

/// Supervises one process until told to shut down.
pub async fn supervise(
    kind: Kind,
    mut loaded: Arc<Loaded>,
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<ChildCommand>,
    mut grants: Option<mpsc::UnboundedReceiver<SourceGrant>>,
) {
    let name = kind.name().to_owned();
    let mut policy = RestartPolicy::default();
    let mut mode = Mode::Run;
    // Why the next process starts, for the status table.
    let mut start = Start::First;
    loop {
        let idle_phase = match mode {
            Mode::Run => None,
            Mode::Stopped => Some(Phase::Stopped),
            Mode::WaitingForConfigChange => Some(Phase::WaitingForConfigChange),
        };
        if let Some(phase) = idle_phase {
            shared.board.update(&name, |e| {
                e.phase = phase;
                e.pid = None;
            });
            match commands.recv().await {
                Some(ChildCommand::Start | ChildCommand::Restart) => {
                    mode = Mode::Run;
                    start = Start::ByOperator;
                }
                Some(ChildCommand::Replace(new)) => {
                    loaded = new;
                    mode = Mode::Run;
                    start = Start::ConfigChanged;
                }
                Some(ChildCommand::Stop) => mode = Mode::Stopped,
                Some(ChildCommand::Shutdown(_, done)) => {
                    let _ = done.send(());
                    return;
                }
                None => return,
            }
            policy.reset();
            continue;
        }
        let started = Instant::now();
        let ended = run_once(
            &kind,
            &loaded,
            &shared,
            &start,
            &mut commands,
            grants.as_mut(),
        )
        .await;
        let restarting = |e: &mut crate::board::Entry, why: String| {
            e.restarts += 1;
            e.last_exit = Some(why);
            e.pid = None;
            e.report = None;
        };
        match ended {
            Ended::Commanded(ChildCommand::Stop) => {
                tracing::info!(source = %name, "Stopped by the operator.");
                mode = Mode::Stopped;
            }
            Ended::Commanded(ChildCommand::Start | ChildCommand::Restart) => {
                tracing::info!(source = %name, "Restarted by the operator.");
                shared
                    .board
                    .update(&name, |e| restarting(e, "restarted by the operator".into()));
                policy.reset();
                start = Start::ByOperator;
            }
            Ended::Commanded(ChildCommand::Replace(new)) => {
                tracing::info!(source = %name, "Restarting with the changed configuration.");
                shared
                    .board
                    .update(&name, |e| restarting(e, "configuration changed".into()));
                loaded = new;
                policy.reset();
                start = Start::ConfigChanged;
            }
            Ended::Commanded(ChildCommand::Shutdown(_, done)) => {
                let _ = done.send(());
                return;
            }
            Ended::Exited(Some(ExitStatus::Config), why) => {
                tracing::error!(source = %name, reason = %why,
                    "Exited with a configuration error; not restarted until the configuration changes.");
                shared.board.update(&name, |e| restarting(e, why));
                mode = Mode::WaitingForConfigChange;
            }
            Ended::Exited(_, why) => {
                let now = Instant::now();
                let delay = policy.crashed(started, now);
                let failed = policy.failed(now);
                tracing::warn!(source = %name, reason = %why, restart_in_ms = delay.as_millis(), failed,
                    "Process ended; restarting.");
                start = Start::AfterCrash {
                    why: why.clone(),
                    at_us: now_us(),
                };
                shared.board.update(&name, |e| {
                    restarting(e, why);
                    e.phase = if failed {
                        Phase::Failed
                    } else {
                        Phase::Starting
                    };
                });
                // Wait out the backoff, but let an operator or a shutdown cut it short.
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    command = commands.recv() => match command {
                        Some(ChildCommand::Stop) => mode = Mode::Stopped,
                        Some(ChildCommand::Replace(new)) => {
                            loaded = new;
                            policy.reset();
                            start = Start::ConfigChanged;
                        }
                        Some(ChildCommand::Start | ChildCommand::Restart) => {
                            policy.reset();
                            start = Start::ByOperator;
                        }
                        Some(ChildCommand::Shutdown(_, done)) => { let _ = done.send(()); return; }
                        None => return,
                    },
                }
            }
        }
    }
}

async fn run_once(
    kind: &Kind,
    loaded: &Arc<Loaded>,
    shared: &Arc<Shared>,
    start: &Start,
    commands: &mut mpsc::UnboundedReceiver<ChildCommand>,
    grants: Option<&mut mpsc::UnboundedReceiver<SourceGrant>>,
) -> Ended {
    let name = kind.name().to_owned();
    let configure = match kind {
        Kind::Uplink => Message::ConfigureUplink(Box::new(UplinkSettings {
            start: start.clone(),
            ..loaded.uplink_settings(shared.current_grants())
        })),
        Kind::Worker(source_name) => {
            let Some(source) = loaded.source(source_name) else {
                return Ended::Exited(
                    Some(ExitStatus::Config),
                    "source not in the configuration".into(),
                );
            };
            let token = new_token();
            shared.grant(SourceGrant {
                source: source_name.clone(),
                table: source.table(),
                token: token.clone(),
                start: start.clone(),
            });
            Message::ConfigureWorker(loaded.worker_settings(source, token))
        }
    };
    let path = shared.bin_dir.join(binary(kind, loaded));
    let mut command = Command::new(&path);
    command
        .env_clear()
        .envs(shared.env.iter().map(|(k, v)| (k, v)))
        .env(iot_connector_ipc::SOURCE_ENV, &name);
    command.stdin(std::process::Stdio::null());
    let (mut child, control) = match os::spawn_with_control(&mut command) {
        Ok(spawned) => spawned,
        Err(e) => return Ended::Exited(None, format!("cannot start {}: {e}", path.display())),
    };
    let pid = child.id();
    shared.board.update(&name, |e| {
        e.pid = pid;
        e.phase = Phase::Starting;
    });
    let (rx, tx) = control.into_split();
    let (mut reader, mut writer) = (FrameReader::new(rx), FrameWriter::new(tx));
    let role = match kind {
        Kind::Uplink => Role::Uplink,
        Kind::Worker(_) => Role::Worker,
    };
    let startup = async {
        handshake(&mut reader, &mut writer, Role::Supervisor, role).await?;
        writer.send(&configure).await?;
        reader.expect(expect::READY).await
    };
    match tokio::time::timeout(STARTUP, startup).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return Ended::Exited(reap(&mut child).await, format!("start-up failed: {e}"));
        }
        Err(_) => {
            let _ = child.kill().await;
            return Ended::Exited(
                None,
                format!("not ready within {}s; killed", STARTUP.as_secs()),
            );
        }
    }
    tracing::info!(source = %name, pid, "Process ready.");
    shared.board.update(&name, |e| e.phase = Phase::Running);
    monitor(&name, &mut child, reader, writer, shared, commands, grants).await
}

/// Watches a ready child until it exits, goes silent or a command arrives.
async fn monitor(
    name: &str,
    child: &mut Child,
    reader: FrameReader<OwnedReadHalf>,
    mut writer: FrameWriter<OwnedWriteHalf>,
    shared: &Arc<Shared>,
    commands: &mut mpsc::UnboundedReceiver<ChildCommand>,
    mut grants: Option<&mut mpsc::UnboundedReceiver<SourceGrant>>,
) -> Ended {
    let (report_tx, mut reports) = mpsc::unbounded_channel();
    let reading = tokio::spawn(read_reports(reader, report_tx));
    let ended = loop {
        let grant = async {
            match grants.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = child.wait() => {
                let code = status.ok().and_then(|s| s.code());
                break Ended::Exited(code.and_then(ExitStatus::from_code), describe_exit(code));
            }
            report = tokio::time::timeout(WATCHDOG, reports.recv()) => match report {
                Ok(Some(report)) => shared.board.update(name, |e| {
                    e.report = Some(report);
                    e.heartbeat_at = Some(Instant::now());
                }),
                // The control channel closed: the process is on its way out.
                Ok(None) => {
                    let code = tokio::time::timeout(STOP_GRACE, child.wait()).await.ok().and_then(|s| s.ok()).and_then(|s| s.code());
                    let _ = child.kill().await;
                    break Ended::Exited(code.and_then(ExitStatus::from_code), describe_exit(code));
                }
                Err(_) => {
                    tracing::error!(source = %name, "No heartbeat for {}s; killing the hung process.", WATCHDOG.as_secs());
                    let _ = child.kill().await;
                    break Ended::Exited(None, format!("watchdog: no heartbeat for {}s", WATCHDOG.as_secs()));
                }
            },
            Some(grant) = grant => {
                if writer.send(&Message::Grant(grant)).await.is_err() {
                    tracing::warn!(source = %name, "Could not pass a grant to the uplink.");
                }
            }
            command = commands.recv() => {
                let grace = match &command {
                    Some(ChildCommand::Shutdown(deadline, _)) => *deadline,
                    _ => STOP_GRACE,
                };
                stop(child, grace).await;
                break match command {
                    Some(command) => Ended::Commanded(command),
                    None => Ended::Exited(None, "supervisor stopping".into()),
                };
            }
        }
    };
    reading.abort();
    ended
}

async fn read_reports(
    mut reader: FrameReader<OwnedReadHalf>,
    reports: mpsc::UnboundedSender<ChildReport>,
) {
    while let Ok(report) = reader.expect(expect::HEARTBEAT).await {
        if reports.send(report).is_err() {
            return;
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`.
async fn stop(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

async fn reap(child: &mut Child) -> Option<ExitStatus> {
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(Ok(status)) => status.code().and_then(ExitStatus::from_code),
        _ => {
            let _ = child.kill().await;
            None
        }
    }
}

fn describe_exit(code: Option<i32>) -> String {
    match code {
        Some(code) => format!("exited with code {code}"),
        None => "killed by a signal".into(),
    }
}
