//! The exit-code contract of every connector binary (BSD `sysexits.h` values), so that the
//! supervisor can tell whether a restart can help.

/// Why a connector process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitStatus {
    /// Clean stop.
    Ok = 0,
    /// The command line was wrong (EX_USAGE).
    Usage = 64,
    /// Unknown source or bad operator input (EX_DATAERR).
    DataErr = 65,
    /// The supervisor is not running (EX_UNAVAILABLE).
    Unavailable = 69,
    /// An internal error; restarting may help (EX_SOFTWARE).
    Software = 70,
    /// The OS refused a resource (socket, file); restarting may help (EX_OSERR).
    OsErr = 71,
    /// A peer broke the IPC protocol; restarting may help (EX_PROTOCOL).
    Protocol = 76,
    /// The configuration is invalid: do not restart until it changes (EX_CONFIG).
    Config = 78,
}

impl ExitStatus {
    /// Whether the supervisor should restart a child that exited this way without waiting for a
    /// configuration change.
    pub fn restart_helps(self) -> bool {
        !matches!(self, Self::Ok | Self::Config | Self::Usage)
    }

    /// The numeric exit code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<ExitStatus> for std::process::ExitCode {
    fn from(status: ExitStatus) -> Self {
        Self::from(status.code())
    }
}
