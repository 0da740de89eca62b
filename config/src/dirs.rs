//! The state and runtime directories hold the spool, the keys and the sockets: nobody but the
//! connector's own user may be able to change them, or to swap them for something else.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Kernel file systems: nothing of the connector belongs there.
const KERNEL_TREES: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Why `path` must not be the connector's state or runtime directory, or `None` when it may be.
/// A directory that does not exist yet is fine: `run` creates it (mode 0750) and checks again.
/// Rules: a directory, on no kernel file system, owned by the user the connector runs as, not
/// writable by its group or others, and below no directory that others can rename it in (a
/// world-writable parent without the sticky bit).
pub fn directory_problem(path: &Path) -> Option<String> {
    let meta = match fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return ancestors_problem(path),
        Err(e) => return Some(format!("{} cannot be inspected: {e}", path.display())),
        Ok(meta) => meta,
    };
    let real = fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    if KERNEL_TREES.iter().any(|tree| real.starts_with(tree)) {
        return Some(format!(
            "{} is on a kernel file system: use a directory of the connector's own, e.g. /var/lib/iot-connector or /run/iot-connector",
            real.display()
        ));
    }
    if !meta.is_dir() {
        return Some(format!(
            "{} is not a directory: use a directory of the connector's own (it is created when missing)",
            real.display()
        ));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Some(format!(
            "{} belongs to uid {}, not to the user the connector runs as (uid {euid}): its owner could replace the sockets or read the spool; use a directory of the connector's own (it is created when missing) or `chown` it",
            real.display(),
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Some(format!(
            "{} can be written by its group or by others (mode {mode:04o}): use a directory of the connector's own, or `chmod 0750` it",
            real.display()
        ));
    }
    if mode & 0o700 != 0o700 {
        return Some(format!(
            "{} cannot be read, written and entered by its owner (mode {mode:04o}): `chmod 0750` it",
            real.display()
        ));
    }
    ancestors_problem(&real)
}

/// A parent that others may write without the sticky bit lets them rename the directory away
/// and put their own in its place.
fn ancestors_problem(path: &Path) -> Option<String> {
    let mut parent: Option<PathBuf> = path.parent().map(Path::to_owned);
    while let Some(dir) = parent {
        if let Ok(meta) = fs::metadata(&dir) {
            let mode = meta.permissions().mode();
            if mode & 0o002 != 0 && mode & 0o1000 == 0 {
                return Some(format!(
                    "{} lies in {}, which everybody may write without the sticky bit (mode {:04o}): anyone could swap it; use a directory elsewhere",
                    path.display(),
                    dir.display(),
                    mode & 0o7777
                ));
            }
        }
        parent = dir.parent().map(Path::to_owned);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_mode(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs::create_dir(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_private_directory_or_a_missing_one_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            directory_problem(&with_mode(dir.path(), "state", 0o750)),
            None
        );
        assert_eq!(directory_problem(&dir.path().join("not-yet/run")), None);
    }

    #[test]
    fn shared_kernel_and_plain_file_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let shared = with_mode(dir.path(), "shared", 0o1777);
        let problem = directory_problem(&shared).unwrap();
        assert!(
            problem.contains("written by its group or by others (mode 1777)"),
            "{problem}"
        );
        let file = dir.path().join("file");
        fs::write(&file, "").unwrap();
        assert!(
            directory_problem(&file)
                .unwrap()
                .contains("is not a directory")
        );
        for kernel in ["/proc/self/fd", "/sys", "/dev/shm"] {
            let problem = directory_problem(Path::new(kernel)).unwrap();
            assert!(
                problem.contains("kernel file system"),
                "{kernel}: {problem}"
            );
        }
        let open = with_mode(dir.path(), "open", 0o777);
        let problem = directory_problem(&open.join("state")).unwrap();
        assert!(problem.contains("without the sticky bit"), "{problem}");
    }

    #[test]
    fn a_directory_of_another_user_is_refused() {
        // /tmp belongs to root and everybody writes it: refused for either reason.
        let problem = directory_problem(Path::new("/tmp")).unwrap();
        assert!(
            problem.contains("belongs to uid 0") || problem.contains("(mode 1777)"),
            "{problem}"
        );
        if nix::unistd::geteuid().is_root() {
            let dir = tempfile::tempdir().unwrap();
            let theirs = with_mode(dir.path(), "theirs", 0o750);
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let problem = directory_problem(&theirs).unwrap();
            assert!(problem.contains("belongs to uid 65534"), "{problem}");
        }
    }
}
