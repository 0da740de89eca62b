//! The control channel: a socketpair end that a child inherits as a numbered descriptor. This is
//! the one module with `unsafe`: adopting that descriptor, the async-signal-safe set-up a child
//! runs between fork and exec (capabilities dropped among it), and handing freed heap back to
//! the kernel.
#![allow(unsafe_code)]

use std::{
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::net::UnixStream as StdUnixStream,
    },
};

use nix::{
    fcntl::{FcntlArg, FdFlag, fcntl},
    sys::{
        prctl,
        resource::{Resource, getrlimit, setrlimit},
        signal::Signal,
        stat::{SFlag, fstat},
    },
};
use tokio::{
    net::UnixStream,
    process::{Child, Command},
};

/// The environment variable naming the child's control descriptor.
pub const CONTROL_FD_ENV: &str = "IOT_CONNECTOR_CONTROL_FD";

/// Open descriptors a child may hold at most.
const MAX_FILES: u64 = 4096;

/// The descriptor number a child finds its control channel on.
const CHILD_CONTROL_FD: RawFd = 3;

/// Adopts the control channel this process was started with (see [`spawn_with_control`]).
pub fn inherited_control() -> io::Result<UnixStream> {
    let fd: RawFd = std::env::var(CONTROL_FD_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|fd| *fd > 2)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{CONTROL_FD_ENV} is not set: connector children are started by `iot-connector run`"),
            )
        })?;
    // SAFETY: fcntl(F_GETFD) is defined for any integer; it fails with EBADF when `fd` is not open.
    if unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } < 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("descriptor {fd} from {CONTROL_FD_ENV} is not open"),
        ));
    }
    // SAFETY: the descriptor is open (checked above) and was dup2'ed onto this number by our parent
    // before exec for us alone; it is adopted once, at start-up, so nothing else owns or closes it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mode = fstat(&owned).map_err(io::Error::from)?.st_mode;
    if mode & SFlag::S_IFMT.bits() != SFlag::S_IFSOCK.bits() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {fd} from {CONTROL_FD_ENV} is not a socket"),
        ));
    }
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
    let stream = StdUnixStream::from(owned);
    stream.set_nonblocking(true)?;
    UnixStream::from_std(stream)
}

/// Spawns `command` in its own process group with a control channel on descriptor 3,
/// `no_new_privs`, no capabilities (see [`drop_capabilities`]), a parent-death signal so that no child outlives its parent, no core dumps (a dump would hold secrets) and a bounded
/// number of descriptors. Every other descriptor of ours is close-on-exec, so the child inherits
/// only stdio and its control channel. Returns the child and the parent's end.
pub fn spawn_with_control(command: &mut Command) -> io::Result<(Child, UnixStream)> {
    let (parent_end, child_end) = StdUnixStream::pair()?;
    let child_fd = child_end.as_raw_fd();
    command
        .env(CONTROL_FD_ENV, CHILD_CONTROL_FD.to_string())
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (dup2, prctl); it allocates nothing and touches no locks.
    unsafe {
        command.pre_exec(move || {
            if nix::libc::dup2(child_fd, CHILD_CONTROL_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            // Its own process group: a Ctrl-C on the supervisor's terminal reaches only the
            // supervisor, which stops the children in order (workers first, then the uplink).
            nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))
                .map_err(io::Error::from)?;
            prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            prctl::set_no_new_privs().map_err(io::Error::from)?;
            drop_capabilities()?;
            setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(io::Error::from)?;
            let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
            setrlimit(
                Resource::RLIMIT_NOFILE,
                MAX_FILES.min(hard),
                MAX_FILES.min(hard),
            )
            .map_err(io::Error::from)?;
            Ok(())
        });
    }
    let child = command.spawn()?;
    drop(child_end);
    parent_end.set_nonblocking(true)?;
    Ok((child, UnixStream::from_std(parent_end)?))
}

/// `securebits`: root gets no capabilities from exec, a set-uid fixup never restores them, no
/// ambient capability can be raised, and all of it is locked (`capabilities(7)`).
const SECUREBITS_NO_ROOT_POWERS: nix::libc::c_ulong = 0b1110_1111;

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets in two 32-bit halves.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: nix::libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Leaves the process, about to exec a child, with no capability it keeps or gains across exec.
/// Ambient capabilities (which would pass exec even to a child of a service user) are cleared
/// always. As root (a container, a hand start), exec would grant the whole bounding set: it is
/// emptied, the securebits forbid root powers from then on, and the inheritable, permitted and
/// effective sets are cleared. Runs between fork and exec: system calls only, no allocation.
fn drop_capabilities() -> io::Result<()> {
    use nix::libc;
    // SAFETY: prctl with integer arguments only.
    let cleared = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if cleared < 0 {
        return Err(io::Error::last_os_error());
    }
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    for capability in 0..64 {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, capability, 0, 0, 0) } < 0 {
            let error = io::Error::last_os_error();
            // EINVAL: past the kernel's last capability.
            if error.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(error);
        }
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_SECUREBITS, SECUREBITS_NO_ROOT_POWERS, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let none = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset reads one header and two data structs of the layout above (version 3),
    // both alive on this stack for the call.
    if unsafe { libc::syscall(libc::SYS_capset, &raw const header, none.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Hands the heap memory that `free` kept back to the kernel. glibc keeps freed blocks below the
/// top of its heap for reuse, so the transient data of a one-off phase stays resident for the
/// process's life: a worker calls this after its start-up (discovering and subscribing 10,000
/// OPC-UA nodes leaves 3.2 MB of such memory, measured). Elsewhere than glibc it does nothing.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists, under the allocator's lock;
    // it takes no pointer from us and is safe to call from any thread at any time.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Files and directories this process and its children create are theirs alone (0600 and
/// 0700), whatever umask started the connector: the spool, the keys and the OPC-UA private key
/// are secrets outside systemd's `UMask=0077` too. Modes that must be wider (the sockets'
/// 0660, the state directory's 0750) are set explicitly where they are made.
pub fn private_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// Raises this process's soft limit of open descriptors to its hard limit (systemd's default
/// soft limit is 1,024, the hard one 524,288), so that a flood of local connections reaches the
/// listeners' own caps long before the kernel's. Returns the soft limit now in force.
pub fn raise_file_limit() -> io::Result<u64> {
    // An unlimited hard limit is above the kernel's `nr_open` (2^20 by default), which
    // setrlimit refuses.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    let target = hard.min(1 << 20);
    if soft >= target {
        return Ok(soft);
    }
    setrlimit(Resource::RLIMIT_NOFILE, target, hard).map_err(io::Error::from)?;
    Ok(target)
}
