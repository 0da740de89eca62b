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
    /// Every status of the contract.
    pub const ALL: [ExitStatus; 8] = [
        Self::Ok,
        Self::Usage,
        Self::DataErr,
        Self::Unavailable,
        Self::Software,
        Self::OsErr,
        Self::Protocol,
        Self::Config,
    ];

    /// The status a process ended with, from its exit code; `None` for a code outside the
    /// contract.
    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|s| i32::from(s.code()) == code)
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reads_back_from_its_code_and_others_are_outside_the_contract() {
        for status in ExitStatus::ALL {
            assert_eq!(
                ExitStatus::from_code(i32::from(status.code())),
                Some(status)
            );
        }
        assert_eq!(ExitStatus::from_code(1), None);
        assert_eq!(ExitStatus::from_code(-1), None);
    }
}
