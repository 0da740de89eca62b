//! The test-only fault layer: the spool's file with a hook that runs before every fsync, so a
//! test can fail a commit or hold it for as long as it likes, without timing.

use std::{fs::OpenOptions, io, path::Path, sync::Arc};

use redb::{Database, StorageBackend, backends::FileBackend};

/// Runs before every fsync of the spool's file; an error fails that fsync.
pub(crate) type BeforeSync = Arc<dyn Fn() -> io::Result<()> + Send + Sync>;

struct HookedSync {
    file: FileBackend,
    before_sync: BeforeSync,
}

impl std::fmt::Debug for HookedSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookedSync").finish_non_exhaustive()
    }
}

impl StorageBackend for HookedSync {
    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        (self.before_sync)()?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write(offset, data)
    }

    fn close(&self) -> io::Result<()> {
        self.file.close()
    }
}

/// An [`Opener`](crate::spool::Opener) for `Spool::open_with` whose file runs `before_sync`.
pub(crate) fn opener(before_sync: BeforeSync) -> Box<crate::spool::Opener> {
    Box::new(move |path: &Path| {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| redb::DatabaseError::Storage(redb::StorageError::Io(e)))?;
        Database::builder().create_with_backend(HookedSync {
            file: FileBackend::new(file)?,
            before_sync: Arc::clone(&before_sync),
        })
    })
}
