//! The data socket: a Unix stream socket in the runtime directory, one connection per worker.

use std::{io, os::unix::fs::PermissionsExt, path::Path};

use interprocess::local_socket::{
    GenericFilePath, ListenerOptions, ToFsName,
    tokio::{Listener, Stream},
    traits::tokio::{Listener as _, Stream as _},
};

/// A connected data socket (split it with `interprocess`' `split()` for concurrent use).
pub type DataStream = Stream;

/// Who is on the other end of an accepted connection, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The peer's process id.
    pub pid: Option<i32>,
    /// The peer's effective user id.
    pub uid: Option<u32>,
}

/// The uplink's listening data socket.
#[derive(Debug)]
pub struct DataListener {
    inner: Listener,
}

impl DataListener {
    /// Binds `path`, replacing a stale socket left by a killed predecessor, mode 0660.
    pub fn bind(path: &Path) -> io::Result<Self> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let name = path.to_fs_name::<GenericFilePath>()?;
        let inner = ListenerOptions::new().name(name).create_tokio()?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
        Ok(Self { inner })
    }

    /// Accepts the next connection with its peer's kernel-reported identity.
    pub async fn accept(&self) -> io::Result<(DataStream, PeerIdentity)> {
        use interprocess::local_socket::traits::StreamCommon as _;
        let stream = self.inner.accept().await?;
        let creds = stream.peer_creds()?;
        let identity = PeerIdentity {
            pid: creds.pid(),
            uid: creds.euid(),
        };
        Ok((stream, identity))
    }
}

/// Connects to the uplink's data socket, and refuses the connection unless the process behind
/// it runs as this process's own user: whoever could put another socket in its place (a
/// runtime directory that others can write) must not receive the source's token and records,
/// nor send acknowledgements.
pub async fn connect_data(path: &Path) -> io::Result<DataStream> {
    use interprocess::local_socket::traits::StreamCommon as _;
    let stream = Stream::connect(path.to_fs_name::<GenericFilePath>()?).await?;
    let own = nix::unistd::geteuid().as_raw();
    match stream.peer_creds()?.euid() {
        Some(uid) if uid == own => Ok(stream),
        peer => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the process behind {} runs as uid {}, not as the connector's user (uid {own}): nothing is sent to it; keep the runtime directory the connector's own",
                path.display(),
                peer.map_or_else(|| "unknown".to_owned(), |uid| uid.to_string())
            ),
        )),
    }
}

/// A fresh per-spawn token: 32 bytes from the OS-seeded CSPRNG.
pub fn new_token() -> Vec<u8> {
    rand::random::<[u8; 32]>().to_vec()
}

/// Compares tokens in time independent of where they differ.
pub fn tokens_match(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_themselves() {
        let token = new_token();
        assert!(tokens_match(&token, &token.clone()));
        assert!(!tokens_match(&token, &new_token()));
        assert!(!tokens_match(&token, &token[..31]));
    }

    #[tokio::test]
    async fn accept_reports_the_peer_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.sock");
        let listener = DataListener::bind(&path).unwrap();
        let (_client, accepted) = tokio::join!(connect_data(&path), listener.accept());
        let (_stream, peer) = accepted.unwrap();
        assert_eq!(peer.pid, i32::try_from(std::process::id()).ok());
        assert_eq!(peer.uid, Some(nix::unistd::geteuid().as_raw()));
    }
}
