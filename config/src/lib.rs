//! The connector's configuration: one TOML file read by the supervisor only. This crate holds its
//! schema (the reference for every key), validates it, resolves `${ENV}` references and secrets,
//! and turns it into the slices each child process receives: the uplink gets [`UplinkSettings`],
//! a worker gets its own source's table and nothing else.
//!
//! Trust: the file, the environment and the files it names are operator input and may be wrong
//! in every way; every problem is reported (all of them, each as `FILE:LINE: message`), none
//! panics. Secrets are kept in [`Secret`], which never prints its value, and never appear in a
//! [`Problem`]. No `unsafe`.
//!
//! Relative paths in the file (`state_dir`, `ca_file`, `file:` secrets, …) are relative to the
//! file's own directory, so the service's working directory does not matter; [`Loaded`] holds
//! them absolute.
#![forbid(unsafe_code)]

mod dirs;
mod expand;
mod load;
mod problems;
mod schema;
mod secret;
pub mod secrets;
mod slices;
mod tree;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use dirs::directory_problem;
pub use iot_connector_proto::{UplinkSettings, WorkerSettings};
pub use problems::{ConfigErrors, Problem};
pub use schema::*;
pub use secret::Secret;
pub use slices::{FromSource, SliceError};

/// A validated config: what `iot-connector run` works from. `Debug` shows no secret.
#[derive(Clone, PartialEq)]
pub struct Loaded {
    /// The file's content: every `${ENV}` expanded, every [`Secret`] resolved to its value,
    /// every path absolute.
    pub config: Config,
    /// The file it came from, as named.
    pub path: PathBuf,
    /// `[connector] state_dir`, else `$STATE_DIRECTORY`, else `./state`; absolute.
    pub state_dir: PathBuf,
    /// `[connector] runtime_dir`, else `$RUNTIME_DIRECTORY`, else `./run`; absolute.
    pub runtime_dir: PathBuf,
    /// `[zerobus] ca_file`'s PEM text, read at load time.
    ca_pem: Option<String>,
    /// `[http] listen`, parsed.
    listen: SocketAddr,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("config", &self.config)
            .field("path", &self.path)
            .field("state_dir", &self.state_dir)
            .field("runtime_dir", &self.runtime_dir)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "…"))
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

/// Reads, validates and resolves the config file; the process environment supplies `${ENV}`
/// values, `$STATE_DIRECTORY`, `$RUNTIME_DIRECTORY` and `$CREDENTIALS_DIRECTORY`.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    load::load(path, &process_env)
}

/// [`load`] from text already read (the file's name is only used in problems and as the base
/// of relative paths).
pub fn parse(path: &Path, text: &str) -> Result<Loaded, ConfigErrors> {
    parse_with_env(path, text, &process_env)
}

/// [`parse`] with another environment than the process's: `env(NAME)` is the value of `NAME`,
/// or `None` when it is unset. Tests use it (`std::env::set_var` is unsafe).
pub fn parse_with_env(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigErrors> {
    load::parse(path, text, env)
}

/// [`load`] with another environment than the process's (see [`parse_with_env`]).
pub fn load_with_env(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigErrors> {
    load::load(path, env)
}

/// The running supervisor's control socket for the file at `path`, read from `[connector]
/// runtime_dir` alone, so that `status`, `restart` and friends work while other parts of the file
/// are invalid (or hold secrets the operator cannot read).
pub fn control_socket_of(path: &Path) -> Result<PathBuf, ConfigErrors> {
    load::runtime_dir(path, &process_env).map(|dir| dir.join(CONTROL_SOCKET))
}

const CONTROL_SOCKET: &str = "control.sock";

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Loaded {
    /// The sources that run (`enabled = true`), in file order.
    pub fn enabled_sources(&self) -> impl Iterator<Item = &Source> {
        self.config.sources.iter().filter(|s| s.enabled())
    }

    /// A source by name, enabled or not.
    pub fn source(&self, name: &str) -> Option<&Source> {
        self.config.sources.iter().find(|s| s.name() == name)
    }

    /// `<runtime_dir>/data.sock`: the uplink listens, workers connect.
    pub fn data_socket(&self) -> PathBuf {
        self.runtime_dir.join("data.sock")
    }

    /// `<runtime_dir>/control.sock`: the operator commands' way to the supervisor.
    pub fn control_socket(&self) -> PathBuf {
        self.runtime_dir.join(CONTROL_SOCKET)
    }

    /// `<state_dir>/spool`.
    pub fn spool_dir(&self) -> PathBuf {
        self.state_dir.join("spool")
    }

    /// `[spool] key_file`, else `<state_dir>/keys/spool.key`; absolute.
    pub fn key_file(&self) -> PathBuf {
        match &self.config.spool.key_file {
            Some(file) => PathBuf::from(file),
            None => self.state_dir.join("keys").join("spool.key"),
        }
    }

    /// `[connector] bin_dir`, absolute, if set (else the children are next to the supervisor).
    pub fn bin_dir(&self) -> Option<PathBuf> {
        self.config.connector.bin_dir.as_ref().map(PathBuf::from)
    }

    /// `[http] listen`.
    pub fn http_listen(&self) -> SocketAddr {
        self.listen
    }

    /// A reload from `running` to `self` would leave these keys' new values unused (the running
    /// supervisor took them at its start: directories, the HTTP listener, logging): one problem
    /// per changed key, at its line in `self`'s file. `Ok` when a reload can apply everything.
    pub fn restart_needed(&self, running: &Loaded) -> Result<(), ConfigErrors> {
        load::restart_needed(running, self)
    }
}

impl Source {
    /// The table the source's data records go to.
    pub fn table(&self) -> iot_connector_proto::Table {
        self.protocol().table()
    }
}
