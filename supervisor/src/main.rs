//! `iot-connector`: the supervisor and the operator's command line.
//!
//! `run` supervises the uplink and one worker per source; it reads the configuration and spawns,
//! restarts and observes processes, and never parses field or cloud data. The other commands talk
//! to a running supervisor through its control socket, or work on files (`check`, `secret`).
//!
//! Trust: the configuration file and the operator are trusted; the children are not (their
//! reports only feed status, health and metrics). No `unsafe`.
#![forbid(unsafe_code)]

mod board;
mod child;
mod health;
mod http;
mod metrics;
mod notify;
mod policy;
mod run;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use iot_connector_ipc::ExitStatus;
use iot_connector_proto::{OperatorCommand, OperatorReply};

/// The DMZ IoT Connector: OPC-UA, MQTT and Modbus into Databricks through Zerobus.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the connector in the foreground (systemd Type=notify).
    Run {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate the configuration: every problem as FILE:LINE: message.
    Check {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// One line (or a JSON object) per process.
    Status {
        /// The configuration file (it names the control socket).
        #[arg(long)]
        config: PathBuf,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Restart one source's worker.
    Restart {
        /// The source name.
        source: String,
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Stop one source's worker.
    Stop {
        /// The source name.
        source: String,
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Start a stopped source's worker.
    Start {
        /// The source name.
        source: String,
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Re-read the configuration (as SIGHUP); restarts only what changed.
    Reload {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// The embedded demo: a simulated plant and a local Zerobus emulator, with the real
    /// connector running on them.
    Demo,
    /// Manage sealed secrets.
    Secret {
        #[command(subcommand)]
        command: SecretCommand,
    },
}

#[derive(Debug, Subcommand)]
enum SecretCommand {
    /// Create the connector's key file (32 random bytes, mode 0600).
    Keygen {
        /// The key file to create.
        #[arg(long)]
        key_file: PathBuf,
    },
    /// Seal a secret read from standard input into an `enc:` value for the configuration.
    Seal {
        /// The key file.
        #[arg(long)]
        key_file: PathBuf,
    },
}

/// Why a command failed; each maps to an exit code of the shared contract.
#[derive(Debug, thiserror::Error)]
pub enum MainError {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(#[from] iot_connector_config::ConfigErrors),
    /// A directory or socket could not be set up.
    #[error("cannot prepare {path}: {source}")]
    Directory {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP listener could not bind.
    #[error("cannot listen on {address} ([http] listen): {source}")]
    Listen {
        /// The configured address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {source}")]
    Signal {
        /// Why.
        source: std::io::Error,
    },
    /// No supervisor answers on the control socket.
    #[error("no connector is running with this configuration ({socket}): {source}")]
    NotRunning {
        /// The control socket.
        socket: PathBuf,
        /// Why.
        source: iot_connector_ipc::IpcError,
    },
    /// The control socket is there, but this user may not use it.
    #[error(
        "cannot reach the connector's control socket {socket}: permission denied; run the command as the connector's user (sudo -u iot-connector …) or as a member of its group"
    )]
    NoAccess {
        /// The control socket.
        socket: PathBuf,
    },
    /// The named source does not exist.
    #[error("unknown source {0:?}: `iot-connector status` lists the sources")]
    UnknownSource(String),
    /// The new configuration was refused.
    #[error("{}", .0.join("\n"))]
    Refused(Vec<String>),
    /// A secret command failed.
    #[error("{0}")]
    Secret(#[from] iot_connector_config::secrets::SecretError),
    /// Reading standard input failed.
    #[error("cannot read the secret from standard input: {0}")]
    Stdin(std::io::Error),
    /// The demo binary could not be started.
    #[error(
        "cannot start the demo {path}: {source}; build the workspace first (cargo build --workspace)"
    )]
    Demo {
        /// The demo binary.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl MainError {
    fn exit_status(&self) -> ExitStatus {
        match self {
            Self::Config(_) | Self::Refused(_) => ExitStatus::Config,
            Self::NotRunning { .. } | Self::NoAccess { .. } => ExitStatus::Unavailable,
            Self::UnknownSource(_) => ExitStatus::DataErr,
            Self::Secret(_) | Self::Stdin(_) => ExitStatus::DataErr,
            Self::Directory { .. }
            | Self::Listen { .. }
            | Self::Signal { .. }
            | Self::Runtime(_)
            | Self::Demo { .. } => ExitStatus::OsErr,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli.command) {
        Ok(()) => ExitStatus::Ok.into(),
        Err(e) => {
            // Configuration problems print as they are: every line is `FILE:LINE: message`.
            match &e {
                MainError::Config(_) | MainError::Refused(_) => eprintln!("{e}"),
                _ => eprintln!("iot-connector: {e}"),
            }
            e.exit_status().into()
        }
    }
}

fn init_logging(loaded: &iot_connector_config::Loaded) {
    let filter = tracing_subscriber::EnvFilter::try_new(&loaded.config.connector.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal)
        .with_writer(std::io::stdout);
    match loaded.config.connector.log_format {
        iot_connector_config::LogFormat::Json => builder.json().init(),
        iot_connector_config::LogFormat::Text => builder.init(),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, MainError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(MainError::Runtime)
}

#[allow(clippy::print_stdout)] // the operator's command line prints its answers
fn execute(command: Command) -> Result<(), MainError> {
    match command {
        Command::Run { config } => {
            let loaded = iot_connector_config::load(&config)?;
            init_logging(&loaded);
            runtime()?.block_on(run::run(config, loaded))
        }
        Command::Check { config } => {
            let loaded = iot_connector_config::load(&config)?;
            let sources = loaded.enabled_sources().count();
            println!("{}: valid, {sources} enabled sources", config.display());
            Ok(())
        }
        Command::Status { config, json } => match operator(&config, OperatorCommand::Status)? {
            OperatorReply::Status(processes) => {
                for p in &processes {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({
                                "name": p.name, "protocol": p.protocol, "state": p.state_word(), "pid": p.pid,
                                "restarts": p.restarts, "records_read": p.records_read, "last_error": p.last_error,
                            })
                        );
                    } else {
                        println!(
                            "{:<24} {:<8} {:<26} pid={:<8} restarts={:<4} records_read={:<10} {}",
                            p.name,
                            p.protocol,
                            p.state_word(),
                            p.pid.map_or("-".into(), |p| p.to_string()),
                            p.restarts,
                            p.records_read,
                            p.last_error.as_deref().unwrap_or(""),
                        );
                    }
                }
                Ok(())
            }
            other => answer(other),
        },
        Command::Restart { source, config } => {
            answer(operator(&config, OperatorCommand::Restart(source))?)
        }
        Command::Stop { source, config } => {
            answer(operator(&config, OperatorCommand::Stop(source))?)
        }
        Command::Start { source, config } => {
            answer(operator(&config, OperatorCommand::Start(source))?)
        }
        Command::Reload { config } => {
            // Validate here first, so the operator sees every problem with its line.
            iot_connector_config::load(&config)?;
            answer(operator(&config, OperatorCommand::Reload)?)
        }
        Command::Demo => {
            // The simulators live in their own binary, so none of their code is in this one.
            use std::os::unix::process::CommandExt;
            let demo = std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|dir| dir.join("iot-connector-sim-demo")))
                .unwrap_or_default();
            let error = std::process::Command::new(&demo).exec();
            Err(MainError::Demo {
                path: demo,
                source: error,
            })
        }
        Command::Secret {
            command: SecretCommand::Keygen { key_file },
        } => {
            iot_connector_config::secrets::keygen(&key_file)?;
            println!("created {}", key_file.display());
            Ok(())
        }
        Command::Secret {
            command: SecretCommand::Seal { key_file },
        } => {
            let mut value = String::new();
            std::io::stdin()
                .read_line(&mut value)
                .map_err(MainError::Stdin)?;
            let sealed = iot_connector_config::secrets::seal(
                &key_file,
                value.trim_end_matches(['\r', '\n']),
            )?;
            println!("{sealed}");
            Ok(())
        }
    }
}

#[allow(clippy::print_stdout)]
fn answer(reply: OperatorReply) -> Result<(), MainError> {
    match reply {
        OperatorReply::Done(what) => {
            println!("{what}");
            Ok(())
        }
        OperatorReply::UnknownSource(name) => Err(MainError::UnknownSource(name)),
        OperatorReply::Invalid(problems) => Err(MainError::Refused(problems)),
        OperatorReply::Status(_) => Ok(()),
    }
}

fn operator(
    config: &std::path::Path,
    command: OperatorCommand,
) -> Result<OperatorReply, MainError> {
    let socket = iot_connector_config::control_socket_of(config)?;
    runtime()?
        .block_on(iot_connector_ipc::send_command(&socket, command))
        .map_err(|source| match &source {
            iot_connector_ipc::IpcError::Io(e)
                if e.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                MainError::NoAccess { socket }
            }
            _ => MainError::NotRunning { socket, source },
        })
}
