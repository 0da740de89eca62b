//! `iot-connector run`: start the uplink, wait until it is ready, start one worker per enabled
//! source, then serve the operator (control socket, SIGHUP, SIGTERM), the load balancer and the
//! scraper (`/health`, `/metrics`) until told to stop.

use std::{
    collections::BTreeMap,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use iot_connector_config::Loaded;
use iot_connector_ipc::{
    Admission, FrameReader, FrameWriter, HANDSHAKE_TIMEOUT, IpcError, expect, handshake, os,
};
use iot_connector_proto::{Message, OperatorCommand, OperatorReply, Role};
use tokio::{
    net::UnixListener,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};

use crate::{
    MainError,
    board::{Board, Phase, UPLINK},
    child::{ChildCommand, Kind, Shared, supervise},
    http,
    notify::Notifier,
};

/// How long the uplink gets to finish its last commit on shutdown.
const UPLINK_DEADLINE: Duration = Duration::from_secs(10);
/// How long each worker gets to stop on shutdown.
const WORKER_DEADLINE: Duration = Duration::from_secs(5);
/// How long systemd waits for READY at most while the uplink does not start.
const UPLINK_READY_DEADLINE: Duration = Duration::from_secs(30);

/// The running connector.
struct Connector {
    config_path: PathBuf,
    loaded: Arc<Loaded>,
    shared: Arc<Shared>,
    uplink: mpsc::UnboundedSender<ChildCommand>,
    workers: BTreeMap<String, mpsc::UnboundedSender<ChildCommand>>,
    /// Whether the uplink was ready once and the workers were started.
    workers_started: bool,
}

impl Connector {
    /// Starts every enabled source's worker, once the uplink can take their records.
    fn start_workers(&mut self) {
        self.workers_started = true;
        for name in self
            .loaded
            .enabled_sources()
            .map(|s| s.name().to_owned())
            .collect::<Vec<_>>()
        {
            self.start_worker(&name);
        }
    }

    fn start_worker(&mut self, name: &str) {
        let Some(source) = self.loaded.source(name) else {
            return;
        };
        self.shared.board.add(name, source.protocol().key());
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(supervise(
            Kind::Worker(name.to_owned()),
            Arc::clone(&self.loaded),
            Arc::clone(&self.shared),
            rx,
            None,
        ));
        self.workers.insert(name.to_owned(), tx);
    }

    async fn stop_task(tx: &mpsc::UnboundedSender<ChildCommand>, deadline: Duration) {
        let (done, finished) = oneshot::channel();
        if tx.send(ChildCommand::Shutdown(deadline, done)).is_ok() {
            let _ = tokio::time::timeout(deadline + Duration::from_secs(2), finished).await;
        }
    }

    /// Re-reads the file: on any problem nothing changes; otherwise only what changed restarts.
    async fn reload(&mut self) -> OperatorReply {
        let checked = iot_connector_config::load(&self.config_path)
            .and_then(|new| new.restart_needed(&self.loaded).map(|()| new));
        let new = match checked {
            Ok(new) => Arc::new(new),
            Err(errors) => {
                let problems: Vec<String> = errors
                    .problems
                    .iter()
                    .map(|p| format!("{}:{}: {}", p.file.display(), p.line, p.message))
                    .collect();
                for problem in &problems {
                    tracing::error!(problem = %problem, "Reload refused; the running configuration stays.");
                }
                return OperatorReply::Invalid(problems);
            }
        };
        let old = std::mem::replace(&mut self.loaded, Arc::clone(&new));
        // Before the uplink was ready no worker runs yet; they start from `self.loaded` then.
        let wanted: Vec<String> = if self.workers_started {
            new.enabled_sources().map(|s| s.name().to_owned()).collect()
        } else {
            Vec::new()
        };
        let mut changes = Vec::new();
        for name in self.workers.keys().cloned().collect::<Vec<_>>() {
            if !wanted.contains(&name) {
                if let Some(tx) = self.workers.remove(&name) {
                    Self::stop_task(&tx, WORKER_DEADLINE).await;
                }
                self.shared.board.remove(&name);
                self.shared.revoke(&name);
                changes.push(format!("removed {name}"));
            }
        }
        for name in &wanted {
            match self.workers.get(name) {
                None => {
                    self.start_worker(name);
                    changes.push(format!("added {name}"));
                }
                Some(tx) if new.source_changed(&old, name) => {
                    let _ = tx.send(ChildCommand::Replace(Arc::clone(&new)));
                    changes.push(format!("restarted {name}"));
                }
                Some(_) => {}
            }
        }
        if new.uplink_changed(&old) {
            let _ = self.uplink.send(ChildCommand::Replace(Arc::clone(&new)));
            changes.push("restarted uplink".into());
        }
        let summary = if changes.is_empty() {
            "nothing changed".to_owned()
        } else {
            changes.join(", ")
        };
        tracing::info!(changes = %summary, "Configuration reloaded.");
        OperatorReply::Done(summary)
    }

    async fn command(&mut self, command: OperatorCommand) -> OperatorReply {
        let (name, action, verb) = match command {
            OperatorCommand::Status => return OperatorReply::Status(self.shared.board.status()),
            OperatorCommand::Reload => return self.reload().await,
            OperatorCommand::Restart(name) => (name, ChildCommand::Restart, "restarted"),
            OperatorCommand::Stop(name) => (name, ChildCommand::Stop, "stopped"),
            OperatorCommand::Start(name) => (name, ChildCommand::Start, "started"),
        };
        let tx = if name == UPLINK {
            Some(&self.uplink)
        } else {
            self.workers.get(&name)
        };
        match tx {
            Some(tx) if tx.send(action).is_ok() => OperatorReply::Done(format!("{verb} {name}")),
            _ => OperatorReply::UnknownSource(name),
        }
    }

    /// Stops every worker at once, then the uplink, each within its deadline.
    async fn shutdown(&mut self) {
        tracing::info!("Stopping the workers, then the uplink.");
        let mut stopped = Vec::new();
        for tx in std::mem::take(&mut self.workers).into_values() {
            let (done, finished) = oneshot::channel();
            if tx
                .send(ChildCommand::Shutdown(WORKER_DEADLINE, done))
                .is_ok()
            {
                stopped.push(finished);
            }
        }
        let _ = tokio::time::timeout(WORKER_DEADLINE + Duration::from_secs(2), async {
            for finished in stopped {
                let _ = finished.await;
            }
        })
        .await;
        Self::stop_task(&self.uplink, UPLINK_DEADLINE).await;
    }
}

/// The environment children get: an allow-list, plus the log settings from the file.
fn child_env(loaded: &Loaded) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = ["TZ", "LANG", "ZEROBUS_SDK_WARNINGS_ENABLED"]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
        .collect();
    env.push(("RUST_LOG".into(), loaded.config.connector.log_level.clone()));
    let format = match loaded.config.connector.log_format {
        iot_connector_config::LogFormat::Text => "text",
        iot_connector_config::LogFormat::Json => "json",
    };
    env.push((iot_connector_ipc::FORMAT_ENV.into(), format.into()));
    env
}

/// Creates the state or runtime directory when it is missing (0750, with any missing parents),
/// and never changes one that exists: a directory shared with others is refused instead, by the
/// configuration check and again here, after the creation.
fn private_dir(path: &Path) -> Result<(), MainError> {
    let error = |source| MainError::Directory {
        path: path.to_owned(),
        source,
    };
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(path)
    {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(error(e)),
    }
    match iot_connector_config::directory_problem(path) {
        Some(problem) => Err(error(std::io::Error::other(problem))),
        None => Ok(()),
    }
}

/// Runs the connector until SIGTERM or SIGINT.
pub async fn run(config_path: PathBuf, loaded: Loaded) -> Result<(), MainError> {
    // Nothing this process starts can gain privileges: the children are exec'ed with
    // `no_new_privs` and without capabilities too (`os::spawn_with_control`).
    if let Err(e) = nix::sys::prctl::set_no_new_privs() {
        tracing::warn!(error = %e, "Cannot set no_new_privs.");
    }
    if nix::unistd::geteuid().is_root() {
        tracing::warn!(
            "Running as root: the children get no capabilities and no_new_privs, but they keep uid 0 and so every file root owns. Run the connector as its own user (the systemd unit does)."
        );
    }
    match os::raise_file_limit() {
        Ok(files) => tracing::debug!(files, "Open descriptor limit."),
        Err(e) => tracing::warn!(error = %e, "Cannot raise the open descriptor limit."),
    }
    if loaded.config.sources.is_empty() {
        tracing::warn!(config = %config_path.display(), "No [[sources]] are configured: the connector forwards nothing until one is added and the configuration reloaded.");
    }
    os::private_umask();
    private_dir(&loaded.state_dir)?;
    private_dir(&loaded.runtime_dir)?;
    let bin_dir = match &loaded.config.connector.bin_dir {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
            .unwrap_or_default(),
    };
    let board = Board::new(loaded.config.http.degraded_after.0);
    let (grant_tx, grant_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        board: board.clone(),
        bin_dir,
        env: child_env(&loaded),
        grants: Mutex::default(),
        grant_tx,
    });
    let loaded = Arc::new(loaded);
    let control_path = loaded.control_socket();
    let _ = std::fs::remove_file(&control_path);
    let control = UnixListener::bind(&control_path).map_err(|source| MainError::Directory {
        path: control_path.clone(),
        source,
    })?;
    let _ = std::fs::set_permissions(&control_path, std::fs::Permissions::from_mode(0o660));
    let (http_listener, http_address) =
        http::bind(loaded.http_listen())
            .await
            .map_err(|source| MainError::Listen {
                address: loaded.config.http.listen.clone(),
                source,
            })?;
    tokio::spawn(http::serve(http_listener, board.clone()));
    tracing::info!(health = %format!("http://{http_address}/health"), metrics = %format!("http://{http_address}/metrics"), "Serving health and metrics.");

    board.add(UPLINK, UPLINK);
    let (uplink_tx, uplink_rx) = mpsc::unbounded_channel();
    tokio::spawn(supervise(
        Kind::Uplink,
        Arc::clone(&loaded),
        Arc::clone(&shared),
        uplink_rx,
        Some(grant_rx),
    ));
    let mut connector = Connector {
        config_path,
        loaded: Arc::clone(&loaded),
        shared,
        uplink: uplink_tx,
        workers: BTreeMap::new(),
        workers_started: false,
    };
    // Signals and operator commands work from here on, whatever the uplink does.
    let signal_error = |source| MainError::Signal { source };
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(signal_error)?;
    let (command_tx, mut command_rx) = mpsc::unbounded_channel();
    tokio::spawn(serve_control(control, command_tx));

    let notifier = Notifier::from_env();
    let mut watchdog =
        tokio::time::interval(Notifier::watchdog_interval().unwrap_or(Duration::from_secs(3600)));
    let mut status_tick = tokio::time::interval(Duration::from_secs(5));
    // Workers start once the uplink can take their records; systemd hears READY then, or
    // after the uplink's start-up deadline with the reason in STATUS, so that a bad uplink
    // start is visible (`status`, `/health` 503, the log) instead of a start that never ends.
    let mut uplink_ready = tokio::time::interval(Duration::from_millis(20));
    let ready_deadline = tokio::time::Instant::now() + UPLINK_READY_DEADLINE;
    let mut told_ready = false;
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => {
                notifier.send("RELOADING=1");
                let _ = connector.reload().await;
                notifier.send("READY=1");
            }
            Some((command, reply)) = command_rx.recv() => {
                let answer = connector.command(command).await;
                let _ = reply.send(answer);
            }
            _ = uplink_ready.tick(), if !connector.workers_started => {
                let running = board.snapshot().get(UPLINK).is_some_and(|e| e.phase == Phase::Running);
                if running {
                    connector.start_workers();
                    notifier.send("READY=1");
                    told_ready = true;
                } else if !told_ready && tokio::time::Instant::now() >= ready_deadline {
                    let why = board.snapshot().get(UPLINK).and_then(|e| e.last_error()).unwrap_or_else(|| "no reason reported".into());
                    tracing::error!(reason = %why, "The uplink is not ready after {} s; sources wait for it.", UPLINK_READY_DEADLINE.as_secs());
                    notifier.send("READY=1");
                    notifier.send(&format!("STATUS=uplink not ready: {why}"));
                    told_ready = true;
                }
            }
            _ = watchdog.tick() => {
                if uplink_watched(&board) {
                    notifier.send("WATCHDOG=1");
                }
            }
            _ = status_tick.tick() => notifier.send(&status_line(&board)),
        }
    }
    notifier.send("STOPPING=1");
    connector.shutdown().await;
    let _ = std::fs::remove_file(&control_path);
    tracing::info!("Stopped.");
    Ok(())
}

/// Whether systemd's watchdog may be fed: this loop runs (it is the caller) and the uplink
/// heartbeats, or waits on purpose for a configuration change or the operator. A wedged or
/// crash-looping uplink stops the pings, and systemd restarts the connector.
fn uplink_watched(board: &Board) -> bool {
    board.uplink().is_some()
        || board
            .snapshot()
            .get(UPLINK)
            .is_some_and(|e| matches!(e.phase, Phase::WaitingForConfigChange | Phase::Stopped))
}

fn status_line(board: &Board) -> String {
    let status = board.status();
    let connected = status
        .iter()
        .filter(|p| p.name != UPLINK && p.state == iot_connector_proto::SourceState::Connected)
        .count();
    let sources = status.iter().filter(|p| p.name != UPLINK).count();
    let spool = board.uplink().map_or(0, |u| u.spool_bytes);
    format!("STATUS={connected}/{sources} sources connected, spool {spool} bytes")
}

type CommandRequest = (OperatorCommand, oneshot::Sender<OperatorReply>);

/// Operator connections served at once at most; more are closed at once.
const MAX_OPERATOR_CONNECTIONS: usize = 16;
/// How long one operator command may take, from its arrival to the reply.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The operator's control socket: one command per connection. The handshake and the command
/// come in small frames within [`HANDSHAKE_TIMEOUT`]; a failing `accept` pauses the loop.
async fn serve_control(listener: UnixListener, commands: mpsc::UnboundedSender<CommandRequest>) {
    let mut admission = Admission::new("control socket", MAX_OPERATOR_CONNECTIONS);
    loop {
        let ((stream, _), permit) = admission.admit(|| listener.accept()).await;
        let commands = commands.clone();
        tokio::spawn(async move {
            let (rx, tx) = stream.into_split();
            let (mut reader, mut writer) = (FrameReader::unauthenticated(rx), FrameWriter::new(tx));
            let exchange = async {
                let request = async {
                    handshake(&mut reader, &mut writer, Role::Supervisor, Role::Operator).await?;
                    reader.expect(expect::COMMAND).await
                };
                let command = tokio::time::timeout(HANDSHAKE_TIMEOUT, request)
                    .await
                    .map_err(|_| {
                        IpcError::Handshake(format!(
                            "no Hello and command within {HANDSHAKE_TIMEOUT:?}"
                        ))
                    })??;
                let (reply_tx, reply_rx) = oneshot::channel();
                commands
                    .send((command, reply_tx))
                    .map_err(|_| IpcError::Refused("shutting down".into()))?;
                let reply = tokio::time::timeout(COMMAND_TIMEOUT, reply_rx)
                    .await
                    .map_err(|_| IpcError::Refused("timed out".into()))?
                    .map_err(|_| IpcError::Refused("shutting down".into()))?;
                writer.send(&Message::Reply(reply)).await
            };
            if let Err(e) = exchange.await {
                tracing::warn!(error = %e, "Operator command failed.");
            }
            drop(permit);
        });
    }
}
