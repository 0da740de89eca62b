//! The spool: the uplink's durable, encrypted, size-bounded store of rows on their way to Zerobus.
//!
//! # Why redb
//! Measured on this workload: sled 0.34's `flush()` is
//! `sync_file_range`, not fsync, so acknowledged records can vanish on power loss; it never gives
//! disk back and writes ~56k rec/s at batch 1000. redb 4 fsyncs every commit (1.1 fdatasync per
//! commit), stays at 1.1x live data, writes ~200k rec/s at batch 1000 and lost nothing in 50
//! kill -9 runs.
//!
//! # Layout (format version 1), one redb file `spool.redb`
//! - `rows/<table>`: `position → sealed row`, one table per bronze table. A position is unique for
//!   the life of the file (one global counter across tables), so positions order rows by arrival
//!   across tables and never repeat.
//! - `sources`: `source name → highest sequence number held durably` (held, dropped by policy, or
//!   forwarded: the number only grows).
//! - `dead_letters`: `position → (table, reason, sealed row)`, rows Zerobus rejected for good.
//! - `meta`: `format_version`, `epoch` (random, drawn when the file is created), `next_position`,
//!   `live_bytes` (sum of the sealed rows in `rows/*`), `unreported_drops` (policy drops not yet
//!   in a status row) and `drops_reported_at_us` (when the last such row was written).
//!
//! A sealed row is AES-256-GCM ciphertext plus tag; its nonce is `epoch (4 bytes) ‖ position
//! (8 bytes)`, unique because positions never repeat within a file and a new file draws a new
//! epoch; the table and the position are the additional data, so a row cannot be moved to another
//! slot unnoticed. Without a key, rows are stored as they are.
//!
//! # Invariants
//! 1. [`Spool::append`] is one redb write transaction with immediate durability: when it returns
//!    `Ok`, every row it accepted and every source's new sequence number are on disk together.
//!    The uplink acknowledges a worker only after that.
//! 2. A source's sequence number only grows; rows with a sequence number at or below it are
//!    re-sends and are not stored again.
//! 3. Rows leave `rows/*` only by [`Spool::remove_through`] (after Zerobus acknowledged them
//!    durably), by [`Spool::dead_letter`] (moved, not lost), or by eviction under `drop_oldest`
//!    (counted in `unreported_drops` in the same transaction, and reported from there).
//! 4. `live_bytes` never exceeds `max_bytes` after a commit, except by status rows, which are
//!    always accepted so that every drop is recorded.
//!
//! Hence no acknowledged record can be lost: it is on disk before its ack, and it is deleted only
//! after Zerobus acknowledged it, or after being counted as a policy drop or a dead letter.
//!
//! # When the spool is full
//! [`Spool::append`] takes its batches in order. Of each batch only the rows above its source's
//! sequence number are new; the others are counted as duplicates. If the new rows' sealed bytes
//! fit under `max_bytes` (or there are none), they are stored. Otherwise the full policy decides:
//! - `drop_oldest`: rows are evicted, lowest position first across the data tables and status
//!   rows only once no data row is left, until the batch fits; then it is stored.
//! - `drop_newest`: the batch's new rows are refused.
//! - `block`: the call stops at this batch. It and every later batch are not committed and not
//!   counted (`committed` < `batches.len()`); the caller retries them, in order, once the
//!   forwarder has freed space.
//!
//! A batch whose new rows alone exceed `max_bytes` can never fit: it is refused under every policy,
//! because waiting would stall every source queued behind it forever and evicting would empty the
//! spool for nothing. A refused batch still advances its source's sequence number, so its worker
//! is acknowledged and moves on. A call that refused or evicted rows adds their number to
//! `unreported_drops` in the same transaction. A call that finds `unreported_drops` above zero
//! and the last report at least [`DROP_REPORT_EVERY`] old writes one status row with that total
//! and sets the counter back to zero, in the same transaction: the first drop after a quiet
//! spell is reported at once, and a spool that stays full writes one status row per interval
//! instead of one per commit (which, during a long outage, would fill the spool with status
//! rows, evicted last). Every drop is in a status row or in the counter at every moment.

use std::{
    collections::HashMap,
    fs,
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{LazyLock, RwLock},
};

use iot_connector_proto::{SpoolPolicy, Table};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

const FORMAT_VERSION: u64 = 1;
/// How often a spool that keeps dropping writes a status row with the drops since the last one.
pub const DROP_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
const UNREPORTED_DROPS: &str = "unreported_drops";
const DROPS_REPORTED_AT: &str = "drops_reported_at_us";
const TAG_LEN: usize = 16;

/// One redb table of rows per [`Table`], named `rows/<key>`, in [`Table::ALL`] order. A table
/// added at the end of [`Table::ALL`] gets its redb table created when an old spool opens.
static ROWS: LazyLock<[TableDefinition<'static, u64, &'static [u8]>; Table::COUNT]> =
    LazyLock::new(|| {
        Table::ALL.map(|table| TableDefinition::new(format!("rows/{}", table.key()).leak()))
    });
const SOURCES: TableDefinition<&str, u64> = TableDefinition::new("sources");
const DEAD_LETTERS: TableDefinition<u64, (u8, &str, &[u8])> = TableDefinition::new("dead_letters");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// A known text sealed under the spool's key at a position no row ever has, so that a wrong key
/// file is told apart from a row damaged on disk.
const KEY_CHECK: TableDefinition<&str, &[u8]> = TableDefinition::new("key_check");
const KEY_CHECK_TEXT: &[u8] = b"iot-connector spool key check";
const KEY_CHECK_POSITION: u64 = u64::MAX;
/// How many rows per table a spool without a key check (written by an earlier release) is
/// tried with the key before it is taken as the wrong one.
const KEY_TRIAL_ROWS: usize = 8;

/// Failures of the spool. All of them stop acknowledgements; none loses acknowledged data.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The database could not be opened or created.
    #[error("cannot open spool {path}: {source}")]
    Open {
        /// The spool file.
        path: PathBuf,
        /// Why.
        #[source]
        source: redb::DatabaseError,
    },
    /// The file was written by another format version.
    #[error(
        "spool {path} has format version {found}, this binary reads {FORMAT_VERSION}: drain it with the release that wrote it, or move it away"
    )]
    Format {
        /// The spool file.
        path: PathBuf,
        /// The version found.
        found: u64,
    },
    /// The key file could not be read or created.
    #[error("spool key {path}: {source}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The key file is not the one the spool was written with, or encryption was turned off
    /// for an encrypted spool.
    #[error("spool {path} {why}")]
    KeyMismatch {
        /// The spool file.
        path: PathBuf,
        /// What does not match and what to do.
        why: &'static str,
    },
    /// A row failed authentication although the key is the spool's: it was damaged on disk or
    /// altered.
    #[error("spool row at position {0} does not decrypt: damaged on disk or altered")]
    Decrypt(u64),
    /// A storage operation failed.
    #[error("spool storage error: {0}")]
    Storage(#[from] redb::Error),
    /// The thread running a spool operation failed.
    #[error("spool operation failed: {0}")]
    Task(String),
    /// The file was closed after an I/O error and has not opened again yet.
    #[error("spool {0} is closed after an I/O error and not open again yet")]
    Closed(PathBuf),
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for SpoolError {
            fn from(e: $t) -> Self {
                Self::Storage(e.into())
            }
        }
    )*};
}
storage_from!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::CompactionError
);

/// The AES-256-GCM key for rows at rest.
#[derive(Debug)]
pub struct SealKey {
    key: LessSafeKey,
}

impl SealKey {
    /// Reads the 32-byte key file, creating it (mode 0600, parent 0700) on first start.
    pub fn load_or_create(path: &Path) -> Result<Self, SpoolError> {
        let err = |source| SpoolError::Key {
            path: path.to_owned(),
            source,
        };
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A bare file name has the parent "": the working directory, not ours to chmod.
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    fs::create_dir_all(parent).map_err(err)?;
                    fs::set_permissions(parent, fs::Permissions::from_mode(0o700)).map_err(err)?;
                }
                let key: [u8; 32] = rand::random();
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(err)?;
                file.write_all(&key)
                    .and_then(|()| file.sync_all())
                    .map_err(err)?;
                key.to_vec()
            }
            Err(e) => return Err(err(e)),
        };
        let invalid = || {
            err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "expected 32 bytes, found {}: restore the right key file",
                    bytes.len()
                ),
            ))
        };
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| invalid())?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
        })
    }

    fn nonce(epoch: u32, position: u64) -> Nonce {
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&epoch.to_be_bytes());
        nonce[4..].copy_from_slice(&position.to_be_bytes());
        Nonce::assume_unique_for_key(nonce)
    }

    fn aad(table: Table, position: u64) -> [u8; 9] {
        let mut aad = [0u8; 9];
        aad[0] = table as u8;
        aad[1..].copy_from_slice(&position.to_be_bytes());
        aad
    }

    fn seal(&self, epoch: u32, table: Table, position: u64, row: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(row.len() + TAG_LEN);
        buf.extend_from_slice(row);
        // Sealing only fails for inputs over ~64 GiB, far above any frame.
        let _ = self.key.seal_in_place_append_tag(
            Self::nonce(epoch, position),
            Aad::from(Self::aad(table, position)),
            &mut buf,
        );
        buf
    }

    fn open(
        &self,
        epoch: u32,
        table: Table,
        position: u64,
        sealed: &[u8],
    ) -> Result<Vec<u8>, SpoolError> {
        let mut buf = sealed.to_vec();
        let len = self
            .key
            .open_in_place(
                Self::nonce(epoch, position),
                Aad::from(Self::aad(table, position)),
                &mut buf,
            )
            .map_err(|_| SpoolError::Decrypt(position))?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// One worker batch on its way into the spool.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The source the connection is bound to.
    pub source: String,
    /// Encoded rows with their sequence numbers, in increasing sequence order.
    pub rows: Vec<(u64, Table, Vec<u8>)>,
}

/// What one [`Spool::append`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    /// How many of the given batches were committed (the rest wait: `block` policy, spool full).
    pub committed: usize,
    /// Rows refused: under `drop_newest` when the spool is full, and under every policy when a
    /// batch's rows alone exceed `max_bytes`.
    pub dropped_newest: u64,
    /// Rows evicted under `drop_oldest`.
    pub evicted_oldest: u64,
    /// Rows that were re-sends of sequence numbers already held.
    pub duplicates: u64,
    /// Rows stored.
    pub stored: u64,
}

/// A row read back for forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spooled {
    /// Its position (the delete and dead-letter handle).
    pub position: u64,
    /// The protobuf row.
    pub row: Vec<u8>,
}

/// A row moved out of the way: Zerobus rejected it for good, or it was damaged on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Where it was.
    pub position: u64,
    /// Its table.
    pub table: Table,
    /// Why it was moved aside: the server's reason, or that it was damaged on disk.
    pub reason: String,
    /// The protobuf row; `None` for a row that no longer decrypts.
    pub row: Option<Vec<u8>>,
}

/// Sizes for metrics and health.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SpoolStats {
    /// Sum of the stored (sealed) rows.
    pub live_bytes: u64,
    /// Rows waiting per table, in [`Table::ALL`] order.
    pub rows: [u64; Table::COUNT],
    /// Rows in the dead-letter store.
    pub dead_letters: u64,
}

/// The spool. Safe to share between the writer and the forwarders.
#[derive(Debug)]
pub struct Spool {
    // Writers and readers take the read side; compaction and reopening, which need the database
    // alone, the write side. `None` between closing after an I/O error and opening again.
    db: RwLock<Option<Database>>,
    dir: PathBuf,
    key: Option<SealKey>,
    epoch: u32,
    max_bytes: u64,
    policy: SpoolPolicy,
    set_aside: Option<SetAside>,
    opener: OpenFile,
    drop_report_every_us: u64,
}

/// The spool's [`Opener`], kept for reopening.
struct OpenFile(Box<Opener>);

impl std::fmt::Debug for OpenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpenFile")
    }
}

/// Opens (or creates) the database file: [`Database::create`], or in tests a storage layer that
/// fails on purpose.
pub(crate) type Opener = dyn Fn(&Path) -> Result<Database, redb::DatabaseError> + Send + Sync;

/// A spool file that did not open at start (truncated, overwritten, not a spool at all) and was
/// moved aside so that the uplink starts with a fresh one instead of crash-looping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    /// Where the damaged file is now.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Why it did not open.
    pub reason: String,
    /// The rows it held when they were last counted (a second or so before it broke), if known.
    pub rows: Option<u64>,
}

impl SetAside {
    /// The status row's and the log's sentence.
    pub fn describe(&self) -> String {
        let rows = self.rows.map_or_else(
            || "an unknown number of rows".to_owned(),
            |rows| format!("{rows} rows when last counted"),
        );
        format!(
            "the spool file did not open ({}) and was moved aside to {} ({} bytes, {rows}): those rows could not be read and are not forwarded; inspect the file, then delete it to clear this",
            self.reason,
            self.path.display(),
            self.bytes
        )
    }
}

/// The file name prefix of a spool moved aside.
const SET_ASIDE_PREFIX: &str = "spool.redb.damaged-";
/// The row count written next to the spool with every heartbeat, for [`SetAside::rows`].
const ROW_COUNT_FILE: &str = "spool.rows";

/// Whether redb could not open the file because of what is in it (rather than permissions or
/// another process holding it).
fn damaged(error: &redb::DatabaseError) -> bool {
    match error {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)) => true,
        redb::DatabaseError::Storage(redb::StorageError::Io(e)) => matches!(
            e.kind(),
            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// The full policy's verdict on one batch.
enum Admission {
    /// Store it, after evicting at least `evict` bytes of the oldest rows.
    Store { evict: u64 },
    /// Count its fresh rows as dropped, acknowledge it.
    Refuse,
    /// Leave it and every later batch uncommitted until space frees up.
    Wait,
}

fn meta(
    table: &impl ReadableTable<&'static str, u64>,
    key: &str,
) -> Result<Option<u64>, SpoolError> {
    Ok(table.get(key)?.map(|v| v.value()))
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, recovering from an unclean stop if needed.
    pub fn open(
        dir: &Path,
        key: Option<SealKey>,
        max_bytes: u64,
        policy: SpoolPolicy,
    ) -> Result<Self, SpoolError> {
        Self::open_with(
            dir,
            key,
            max_bytes,
            policy,
            Box::new(|path| Database::create(path)),
        )
    }

    /// [`Spool::open`] with the database file opened by `opener` (now and on every reopen).
    pub(crate) fn open_with(
        dir: &Path,
        key: Option<SealKey>,
        max_bytes: u64,
        policy: SpoolPolicy,
        opener: Box<Opener>,
    ) -> Result<Self, SpoolError> {
        let path = dir.join("spool.redb");
        let open_err = |source| SpoolError::Open {
            path: path.clone(),
            source,
        };
        let io_err = |e| open_err(redb::DatabaseError::Storage(redb::StorageError::Io(e)));
        fs::create_dir_all(dir).map_err(io_err)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err)?;
        let (db, set_aside) = match opener(&path) {
            Ok(db) => (db, None),
            Err(e) if damaged(&e) => {
                let bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                let rows = fs::read_to_string(dir.join(ROW_COUNT_FILE))
                    .ok()
                    .and_then(|text| text.trim().parse().ok());
                let aside = dir.join(format!(
                    "{SET_ASIDE_PREFIX}{}",
                    iot_connector_proto::now_us() / 1_000_000
                ));
                fs::rename(&path, &aside).map_err(io_err)?;
                let set_aside = SetAside {
                    path: aside,
                    bytes,
                    reason: e.to_string(),
                    rows,
                };
                tracing::error!("{}", set_aside.describe());
                (opener(&path).map_err(open_err)?, Some(set_aside))
            }
            Err(e) => return Err(open_err(e)),
        };
        // A spool made by an earlier release under a wider umask is narrowed too.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(io_err)?;
        let txn = db.begin_write()?;
        let epoch;
        {
            let mut meta_table = txn.open_table(META)?;
            match meta(&meta_table, "format_version")? {
                None => {
                    epoch = rand::random::<u32>();
                    meta_table.insert("format_version", FORMAT_VERSION)?;
                    meta_table.insert("epoch", u64::from(epoch))?;
                    meta_table.insert("next_position", 0)?;
                    meta_table.insert("live_bytes", 0)?;
                }
                Some(FORMAT_VERSION) => {
                    epoch = u32::try_from(meta(&meta_table, "epoch")?.unwrap_or_default())
                        .unwrap_or_default();
                }
                Some(found) => return Err(SpoolError::Format { path, found }),
            }
            for rows in *ROWS {
                txn.open_table(rows)?;
            }
            txn.open_table(SOURCES)?;
            txn.open_table(DEAD_LETTERS)?;
            let mismatch = |why| SpoolError::KeyMismatch {
                path: path.clone(),
                why,
            };
            let mut check = txn.open_table(KEY_CHECK)?;
            let stored = check.get("sealed")?.map(|v| v.value().to_vec());
            match (&key, stored) {
                (Some(key), Some(sealed)) => {
                    if key
                        .open(epoch, Table::Status, KEY_CHECK_POSITION, &sealed)
                        .is_err()
                    {
                        return Err(mismatch(
                            "was written with another key: restore the key file it was written \
                             with, or move the spool away to start an empty one",
                        ));
                    }
                }
                (Some(key), None) => {
                    if !opens_a_row(&txn, key, epoch)? {
                        return Err(mismatch(
                            "holds rows that do not decrypt with this key file: restore the key \
                             file they were written with, or move the spool away to start an \
                             empty one",
                        ));
                    }
                    let sealed = key.seal(epoch, Table::Status, KEY_CHECK_POSITION, KEY_CHECK_TEXT);
                    check.insert("sealed", sealed.as_slice())?;
                }
                (None, Some(_)) => {
                    return Err(mismatch(
                        "is encrypted, but [spool] encrypt is off: turn it on again with the same \
                         key file, or move the spool away to start an empty one",
                    ));
                }
                (None, None) => {}
            }
        }
        txn.commit()?;
        Ok(Self {
            db: RwLock::new(Some(db)),
            dir: dir.to_owned(),
            key,
            epoch,
            max_bytes,
            policy,
            set_aside,
            opener: OpenFile(opener),
            drop_report_every_us: u64::try_from(DROP_REPORT_EVERY.as_micros()).unwrap_or(u64::MAX),
        })
    }

    /// How often a spool that keeps dropping writes a status row with the drops since the last
    /// one ([`DROP_REPORT_EVERY`] unless set): zero reports with every commit that finds drops.
    pub fn report_drops_every(&mut self, every: std::time::Duration) {
        self.drop_report_every_us = u64::try_from(every.as_micros()).unwrap_or(u64::MAX);
    }

    /// Policy drops not yet written in a status row (see the module doc): they will be, with the
    /// next commit at least [`DROP_REPORT_EVERY`] after the last report.
    pub fn unreported_drops(&self) -> Result<u64, SpoolError> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            Ok(meta(&txn.open_table(META)?, UNREPORTED_DROPS)?.unwrap_or_default())
        })
    }

    /// The spool file this start moved aside, if it did.
    pub fn set_aside(&self) -> Option<&SetAside> {
        self.set_aside.as_ref()
    }

    /// Damaged spool files moved aside (by this start or an earlier one) that are still there:
    /// an operator has not dealt with them yet.
    pub fn set_aside_files(&self) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(SET_ASIDE_PREFIX))
            })
            .collect();
        found.sort();
        found
    }

    /// Notes how many rows the spool holds, next to it, so that a file damaged later can say
    /// how many rows it took with it. Best effort: a failure costs only that number.
    pub fn note_row_count(&self, rows: u64) {
        let _ = fs::write(self.dir.join(ROW_COUNT_FILE), format!("{rows}\n"));
    }

    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, SpoolError>,
    ) -> Result<T, SpoolError> {
        let read = || {
            self.db
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let mut db = read();
        if db.is_none() {
            // Closed after an I/O error and not open again yet: try now.
            drop(db);
            if self.reopen().is_err() {
                return Err(SpoolError::Closed(self.dir.join("spool.redb")));
            }
            db = read();
        }
        match &*db {
            Some(db) => f(db),
            None => Err(SpoolError::Closed(self.dir.join("spool.redb"))),
        }
    }

    /// After an I/O error (a full disk, a failed fsync) redb refuses every later transaction
    /// until the file is opened again: closes it and opens it again, at its last durable
    /// commit. Until that succeeds every operation fails with [`SpoolError::Closed`]; call
    /// again later.
    pub fn reopen(&self) -> Result<(), SpoolError> {
        let path = self.dir.join("spool.redb");
        let mut db = self
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The old handle holds the file's lock: it goes first.
        drop(db.take());
        let opened = (self.opener.0)(&path).map_err(|source| SpoolError::Open { path, source })?;
        *db = Some(opened);
        Ok(())
    }

    fn seal(&self, table: Table, position: u64, row: &[u8]) -> Vec<u8> {
        match &self.key {
            Some(key) => key.seal(self.epoch, table, position, row),
            None => row.to_vec(),
        }
    }

    fn unseal(&self, table: Table, position: u64, stored: &[u8]) -> Result<Vec<u8>, SpoolError> {
        match &self.key {
            Some(key) => key.open(self.epoch, table, position, stored),
            None => Ok(stored.to_vec()),
        }
    }

    fn sealed_len(&self, row: &[u8]) -> u64 {
        (row.len() + if self.key.is_some() { TAG_LEN } else { 0 }) as u64
    }

    /// The highest sequence number of `source` held durably.
    pub fn last_seq(&self, source: &str) -> Result<Option<u64>, SpoolError> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            Ok(txn.open_table(SOURCES)?.get(source)?.map(|v| v.value()))
        })
    }

    /// Every source's highest durable sequence number.
    pub fn last_seqs(&self) -> Result<HashMap<String, u64>, SpoolError> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(SOURCES)?;
            let mut seqs = HashMap::new();
            for entry in table.iter()? {
                let (k, v) = entry?;
                seqs.insert(k.value().to_owned(), v.value());
            }
            Ok(seqs)
        })
    }

    /// Stores `batches` in one durable transaction, applying the full policy (see the module
    /// doc). `status_row` builds the status row that records a policy drop (`(dropped, policy)`
    /// in, encoded row out); it is called at most once.
    pub fn append(
        &self,
        batches: &[Incoming],
        status_row: &dyn Fn(u64, SpoolPolicy) -> Vec<u8>,
    ) -> Result<AppendOutcome, SpoolError> {
        self.with_db(|db| {
            let txn = db.begin_write()?;
            let mut outcome = AppendOutcome::default();
            {
                let mut meta_table = txn.open_table(META)?;
                let mut sources = txn.open_table(SOURCES)?;
                let mut rows: Vec<_> = ROWS
                    .iter()
                    .map(|d| txn.open_table(*d))
                    .collect::<Result<_, _>>()?;
                let mut next = meta(&meta_table, "next_position")?.unwrap_or_default();
                let mut live = meta(&meta_table, "live_bytes")?.unwrap_or_default();
                let mut drops = 0u64;
                for batch in batches {
                    let held = sources.get(batch.source.as_str())?.map(|v| v.value());
                    let fresh: Vec<_> = batch
                        .rows
                        .iter()
                        .filter(|(seq, _, _)| held.is_none_or(|h| *seq > h))
                        .collect();
                    let duplicates = (batch.rows.len() - fresh.len()) as u64;
                    let need: u64 = fresh.iter().map(|(_, _, row)| self.sealed_len(row)).sum();
                    match self.admit(live, need) {
                        Admission::Wait => break,
                        Admission::Refuse => {
                            outcome.dropped_newest += fresh.len() as u64;
                            drops += fresh.len() as u64;
                        }
                        Admission::Store { evict } => {
                            if evict > 0 {
                                let (evicted, freed) = evict_oldest(&mut rows, evict)?;
                                outcome.evicted_oldest += evicted;
                                drops += evicted;
                                live = live.saturating_sub(freed);
                            }
                            for (_, table, row) in fresh {
                                let sealed = self.seal(*table, next, row);
                                live += sealed.len() as u64;
                                if let Some(t) = rows.get_mut(table.index()) {
                                    t.insert(next, sealed.as_slice())?;
                                }
                                next += 1;
                                outcome.stored += 1;
                            }
                        }
                    }
                    // Counted only once the batch is committed: a waiting batch comes back.
                    outcome.duplicates += duplicates;
                    if let Some(highest) = batch.rows.iter().map(|(seq, _, _)| *seq).max()
                        && held.is_none_or(|h| highest > h)
                    {
                        sources.insert(batch.source.as_str(), highest)?;
                    }
                    outcome.committed += 1;
                }
                let unreported = meta(&meta_table, UNREPORTED_DROPS)?.unwrap_or_default() + drops;
                let reported_at = meta(&meta_table, DROPS_REPORTED_AT)?.unwrap_or_default();
                let now = u64::try_from(iot_connector_proto::now_us()).unwrap_or_default();
                // A clock stepped back makes a report due rather than holding it for hours.
                let due = now < reported_at || now - reported_at >= self.drop_report_every_us;
                if unreported > 0 && due {
                    let row = status_row(unreported, self.policy);
                    let sealed = self.seal(Table::Status, next, &row);
                    live += sealed.len() as u64;
                    if let Some(t) = rows.get_mut(Table::Status.index()) {
                        t.insert(next, sealed.as_slice())?;
                    }
                    next += 1;
                    meta_table.insert(UNREPORTED_DROPS, 0)?;
                    meta_table.insert(DROPS_REPORTED_AT, now)?;
                } else if drops > 0 {
                    meta_table.insert(UNREPORTED_DROPS, unreported)?;
                }
                meta_table.insert("next_position", next)?;
                meta_table.insert("live_bytes", live)?;
            }
            txn.commit()?;
            Ok(outcome)
        })
    }

    /// What the full policy does with a batch whose fresh rows take `need` sealed bytes while the
    /// spool holds `live`.
    fn admit(&self, live: u64, need: u64) -> Admission {
        if need > self.max_bytes {
            // Nothing evicted or waited for can make room: refuse it now rather than empty the
            // spool for it, or stall every source queued behind it forever.
            return Admission::Refuse;
        }
        // Status rows may hold `live` above `max_bytes`: the excess is owed too.
        let excess = (live + need).saturating_sub(self.max_bytes);
        if need == 0 || excess == 0 {
            return Admission::Store { evict: 0 };
        }
        match self.policy {
            SpoolPolicy::DropOldest => Admission::Store { evict: excess },
            SpoolPolicy::DropNewest => Admission::Refuse,
            SpoolPolicy::Block => Admission::Wait,
        }
    }

    /// Up to `max_rows` rows of `table` after position `after` (from the start when `None`), in
    /// order, stopping once `max_bytes` is reached (always at least one row when there is one).
    pub fn read(
        &self,
        table: Table,
        after: Option<u64>,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Vec<Spooled>, SpoolError> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            let rows = txn.open_table(rows_def(table))?;
            let start = after.map_or(0, |a| a.saturating_add(1));
            let mut out = Vec::new();
            let mut bytes = 0;
            for entry in rows.range(start..)? {
                if out.len() >= max_rows || (bytes >= max_bytes && !out.is_empty()) {
                    break;
                }
                let (k, v) = entry?;
                let row = self.unseal(table, k.value(), v.value())?;
                bytes += row.len();
                out.push(Spooled {
                    position: k.value(),
                    row,
                });
            }
            Ok(out)
        })
    }

    /// Deletes every row of `table` at or below `position`: Zerobus holds them durably.
    pub fn remove_through(&self, table: Table, position: u64) -> Result<u64, SpoolError> {
        self.with_db(|db| {
            let txn = db.begin_write()?;
            let removed;
            {
                let mut rows = txn.open_table(rows_def(table))?;
                let mut meta_table = txn.open_table(META)?;
                let mut freed = 0u64;
                let mut count = 0u64;
                for entry in rows.extract_from_if(..=position, |_, _| true)? {
                    let (_, v) = entry?;
                    freed += v.value().len() as u64;
                    count += 1;
                }
                let live = meta(&meta_table, "live_bytes")?.unwrap_or_default();
                meta_table.insert("live_bytes", live.saturating_sub(freed))?;
                removed = count;
            }
            txn.commit()?;
            Ok(removed)
        })
    }

    /// Moves one row of `table` to the dead-letter store with the server's reason and, in the same
    /// transaction, stores `status_row` (the status table's record of it) when given.
    pub fn dead_letter(
        &self,
        table: Table,
        position: u64,
        reason: &str,
        status_row: Option<&[u8]>,
    ) -> Result<(), SpoolError> {
        self.with_db(|db| {
            let txn = db.begin_write()?;
            {
                let mut rows = txn.open_table(rows_def(table))?;
                let mut dead = txn.open_table(DEAD_LETTERS)?;
                let mut meta_table = txn.open_table(META)?;
                let removed = rows.remove(position)?.map(|v| v.value().to_vec());
                drop(rows);
                if let Some(sealed) = removed {
                    dead.insert(position, (table as u8, reason, sealed.as_slice()))?;
                    let mut live = meta(&meta_table, "live_bytes")?
                        .unwrap_or_default()
                        .saturating_sub(sealed.len() as u64);
                    if let Some(row) = status_row {
                        let next = meta(&meta_table, "next_position")?.unwrap_or_default();
                        let sealed_status = self.seal(Table::Status, next, row);
                        live += sealed_status.len() as u64;
                        txn.open_table(rows_def(Table::Status))?
                            .insert(next, sealed_status.as_slice())?;
                        meta_table.insert("next_position", next + 1)?;
                    }
                    meta_table.insert("live_bytes", live)?;
                }
            }
            txn.commit()?;
            Ok(())
        })
    }

    /// The dead-letter store, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, SpoolError> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            let dead = txn.open_table(DEAD_LETTERS)?;
            let mut out = Vec::new();
            for entry in dead.iter()? {
                let (k, v) = entry?;
                let (table, reason, sealed) = v.value();
                let table = Table::ALL
                    .get(usize::from(table))
                    .copied()
                    .unwrap_or(Table::Status);
                let row = self.unseal(table, k.value(), sealed).ok();
                out.push(DeadLetter {
                    position: k.value(),
                    table,
                    reason: reason.to_owned(),
                    row,
                });
            }
            Ok(out)
        })
    }

    /// Current sizes.
    pub fn stats(&self) -> Result<SpoolStats, SpoolError> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            let mut stats = SpoolStats {
                live_bytes: meta(&txn.open_table(META)?, "live_bytes")?.unwrap_or_default(),
                dead_letters: txn.open_table(DEAD_LETTERS)?.len()?,
                ..SpoolStats::default()
            };
            for (slot, def) in stats.rows.iter_mut().zip(*ROWS) {
                *slot = txn.open_table(def)?.len()?;
            }
            Ok(stats)
        })
    }

    /// Gives disk space back once the spool has drained (redb keeps its high-water mark
    /// otherwise). Waits for in-flight reads and writes; cheap when there is nothing to reclaim.
    pub fn compact(&self) -> Result<bool, SpoolError> {
        let mut db = self
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match db.as_mut() {
            Some(db) => Ok(db.compact()?),
            None => Err(SpoolError::Closed(self.dir.join("spool.redb"))),
        }
    }
}

/// Whether `key` opens one of the first rows of some table, or there are no rows at all.
fn opens_a_row(
    txn: &redb::WriteTransaction,
    key: &SealKey,
    epoch: u32,
) -> Result<bool, SpoolError> {
    let mut any = false;
    for table in Table::ALL {
        let rows = txn.open_table(rows_def(table))?;
        for entry in rows.iter()?.take(KEY_TRIAL_ROWS) {
            let (k, v) = entry?;
            if key.open(epoch, table, k.value(), v.value()).is_ok() {
                return Ok(true);
            }
            any = true;
        }
    }
    Ok(!any)
}

fn rows_def(table: Table) -> TableDefinition<'static, u64, &'static [u8]> {
    #[allow(clippy::indexing_slicing)] // `index()` is below `Table::COUNT` by construction
    ROWS[table.index()]
}

/// Removes the oldest rows across every table until `needed` bytes are freed (or nothing is left).
/// Status rows go last: they are how operators learn what was dropped.
fn evict_oldest(
    rows: &mut [redb::Table<'_, u64, &'static [u8]>],
    needed: u64,
) -> Result<(u64, u64), SpoolError> {
    let (mut evicted, mut freed) = (0u64, 0u64);
    while freed < needed {
        let mut oldest: Option<(usize, u64)> = None;
        for (i, table) in rows
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != Table::Status.index())
        {
            if let Some((k, _)) = table.first()?
                && oldest.is_none_or(|(_, p)| k.value() < p)
            {
                oldest = Some((i, k.value()));
            }
        }
        let i = oldest.map_or(Table::Status.index(), |(i, _)| i);
        let Some(table) = rows.get_mut(i) else { break };
        match table.pop_first()? {
            Some((_, v)) => {
                freed += v.value().len() as u64;
                evicted += 1;
            }
            None => break,
        }
    }
    Ok((evicted, freed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_row(count: u64, policy: SpoolPolicy) -> Vec<u8> {
        format!("{policy:?} dropped {count}").into_bytes()
    }

    /// A batch of `source` starting at `first_seq`, one row per entry.
    fn batch(source: &str, first_seq: u64, rows: &[(Table, Vec<u8>)]) -> Incoming {
        Incoming {
            source: source.to_owned(),
            rows: (first_seq..)
                .zip(rows)
                .map(|(seq, (table, row))| (seq, *table, row.clone()))
                .collect(),
        }
    }

    fn rows(table: Table, count: usize, size: usize) -> Vec<(Table, Vec<u8>)> {
        (b'a'..=b'z')
            .cycle()
            .take(count)
            .map(|fill| (table, vec![fill; size]))
            .collect()
    }

    fn keyed(dir: &Path, key_name: &str, max_bytes: u64, policy: SpoolPolicy) -> Spool {
        let key = SealKey::load_or_create(&dir.join("keys").join(key_name)).unwrap();
        Spool::open(&dir.join("spool"), Some(key), max_bytes, policy).unwrap()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    fn open_with(dir: &Path, key_name: Option<&str>) -> Result<Spool, SpoolError> {
        let key = key_name.map(|name| SealKey::load_or_create(&dir.join("keys").join(name)));
        Spool::open(
            &dir.join("spool"),
            key.transpose()?,
            1 << 20,
            SpoolPolicy::Block,
        )
    }

    /// A spool under `right.key` holding three MQTT rows (positions 0 to 2), closed.
    fn filled_with_right_key() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let spool = open_with(dir.path(), Some("right.key")).unwrap();
        spool
            .append(
                &[batch("broker", 1, &rows(Table::Mqtt, 3, 40))],
                &status_row,
            )
            .unwrap();
        dir
    }

    /// Flips one byte of the stored row of `table` at `position`, as a bad disk block would.
    fn damage(dir: &Path, table: Table, position: u64) {
        let db = Database::create(dir.join("spool/spool.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut rows = txn.open_table(rows_def(table)).unwrap();
            let mut stored = rows.get(position).unwrap().unwrap().value().to_vec();
            stored[0] ^= 0x55;
            rows.insert(position, stored.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }

    #[test]
    fn a_spool_opened_with_another_key_or_without_its_encryption_is_refused_at_open() {
        let dir = filled_with_right_key();

        for (key, says) in [
            (Some("wrong.key"), "was written with another key"),
            (None, "is encrypted, but [spool] encrypt is off"),
        ] {
            match open_with(dir.path(), key) {
                Err(e @ SpoolError::KeyMismatch { .. }) => {
                    assert!(e.to_string().contains(says), "{e}");
                }
                other => panic!("{key:?}: {other:?}"),
            }
        }
        let spool = open_with(dir.path(), Some("right.key")).unwrap();
        assert_eq!(
            spool.read(Table::Mqtt, None, 10, usize::MAX).unwrap().len(),
            3
        );
    }

    #[test]
    fn a_spool_of_an_earlier_release_gets_its_key_check_when_its_rows_open() {
        let dir = filled_with_right_key();
        let forget_check = || {
            let db = Database::create(dir.path().join("spool/spool.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            txn.delete_table(KEY_CHECK).unwrap();
            txn.commit().unwrap();
        };

        forget_check();
        assert!(matches!(
            open_with(dir.path(), Some("wrong.key")),
            Err(SpoolError::KeyMismatch { .. })
        ));
        // One damaged row does not make the right key look wrong.
        damage(dir.path(), Table::Mqtt, 0);
        drop(open_with(dir.path(), Some("right.key")).unwrap());
        // The check written by that open now refuses the wrong key at once.
        assert!(matches!(
            open_with(dir.path(), Some("wrong.key")),
            Err(SpoolError::KeyMismatch { .. })
        ));
    }

    #[test]
    fn a_damaged_row_reports_decrypt_and_can_be_moved_aside() {
        let dir = filled_with_right_key();
        damage(dir.path(), Table::Mqtt, 1);

        let spool = open_with(dir.path(), Some("right.key")).unwrap();
        assert!(matches!(
            spool.read(Table::Mqtt, None, 10, usize::MAX),
            Err(SpoolError::Decrypt(1))
        ));
        spool
            .dead_letter(
                Table::Mqtt,
                1,
                "does not decrypt",
                Some(b"status".as_slice()),
            )
            .unwrap();
        let rows = spool.read(Table::Mqtt, None, 10, usize::MAX).unwrap();
        assert_eq!(rows.iter().map(|r| r.position).collect::<Vec<_>>(), [0, 2]);
        let dead = spool.dead_letters().unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!((dead[0].position, dead[0].row.as_ref()), (1, None));
        // What needs no key still works, so the operator can see what is stuck.
        assert_eq!(spool.stats().unwrap().rows, [0, 2, 0, 1]);
        assert_eq!(spool.last_seq("broker").unwrap(), Some(3));
    }

    #[test]
    fn the_key_file_is_created_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets").join("spool.key");
        SealKey::load_or_create(&path).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("secrets")), 0o700);
        assert_eq!(fs::read(&path).unwrap().len(), 32);
    }

    #[test]
    fn a_key_file_of_the_wrong_length_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.key");
        fs::write(&path, [7u8; 31]).unwrap();
        assert!(matches!(
            SealKey::load_or_create(&path),
            Err(SpoolError::Key { path: p, .. }) if p == path
        ));
    }

    #[test]
    fn rows_are_not_stored_in_clear_text_when_a_key_is_set() {
        let canary = b"CANARY-ROW-7f3a9c-do-not-store-in-clear".repeat(4);
        let write = |dir: &Path, key: Option<SealKey>| {
            let spool = Spool::open(dir, key, 1 << 20, SpoolPolicy::Block).unwrap();
            let rows = [(Table::Opcua, canary.clone())];
            spool
                .append(&[batch("plc", 1, &rows)], &status_row)
                .unwrap();
            spool
                .dead_letter(Table::Opcua, 0, "rejected", None)
                .unwrap();
            spool
                .append(&[batch("plc", 2, &rows)], &status_row)
                .unwrap();
            drop(spool);
            fs::read(dir.join("spool.redb")).unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let key = SealKey::load_or_create(&dir.path().join("spool.key")).unwrap();
        let sealed = write(&dir.path().join("sealed"), Some(key));
        assert!(!contains(&sealed, &canary[..32]));
        // The search itself works: without a key the row is there as it is.
        let plain = write(&dir.path().join("plain"), None);
        assert!(contains(&plain, &canary[..32]));
    }

    #[test]
    fn a_spool_of_another_format_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Spool::open(dir.path(), None, 1 << 20, SpoolPolicy::Block).unwrap());
        let path = dir.path().join("spool.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("format_version", FORMAT_VERSION + 1)
                .unwrap();
            txn.commit().unwrap();
        }
        match Spool::open(dir.path(), None, 1 << 20, SpoolPolicy::Block) {
            Err(SpoolError::Format { path: p, found }) => {
                assert_eq!(p, path);
                assert_eq!(found, FORMAT_VERSION + 1);
            }
            other => panic!("expected a format error, got {other:?}"),
        }
    }

    #[test]
    fn compact_gives_disk_space_back_once_drained() {
        let dir = tempfile::tempdir().unwrap();
        let spool = keyed(dir.path(), "spool.key", 1 << 30, SpoolPolicy::Block);
        let file = dir.path().join("spool").join("spool.redb");
        let size = || fs::metadata(&file).unwrap().len();
        // 20 MB in 10 commits of 500 rows of 4 KiB.
        for i in 0..10 {
            let rows = rows(Table::Modbus, 500, 4096);
            let outcome = spool
                .append(&[batch("plc", i * 500, &rows)], &status_row)
                .unwrap();
            assert_eq!(outcome.stored, 500);
        }
        let full = size();
        assert!(full >= 20 << 20, "file holds {full} bytes");
        assert_eq!(spool.remove_through(Table::Modbus, u64::MAX).unwrap(), 5000);
        assert_eq!(spool.stats().unwrap(), SpoolStats::default());
        spool.compact().unwrap();
        let compacted = size();
        assert!(
            compacted < full / 10,
            "{full} bytes before compaction, {compacted} after"
        );
        // Still a working spool.
        let rows = rows(Table::Modbus, 1, 10);
        spool
            .append(&[batch("plc", 5000, &rows)], &status_row)
            .unwrap();
        assert_eq!(
            spool
                .read(Table::Modbus, None, 10, usize::MAX)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn positions_keep_increasing_across_reopen_after_a_full_drain() {
        let dir = tempfile::tempdir().unwrap();
        let spool = keyed(dir.path(), "spool.key", 1 << 20, SpoolPolicy::Block);
        let epoch = spool.epoch;
        let rows = rows(Table::Opcua, 5, 10);
        spool
            .append(&[batch("plc", 1, &rows)], &status_row)
            .unwrap();
        let before = spool.read(Table::Opcua, None, 10, usize::MAX).unwrap();
        let last = before.last().unwrap().position;
        spool.remove_through(Table::Opcua, last).unwrap();
        assert_eq!(spool.stats().unwrap(), SpoolStats::default());
        drop(spool);

        let spool = keyed(dir.path(), "spool.key", 1 << 20, SpoolPolicy::Block);
        // Same file, same epoch: only fresh positions keep the nonces unique.
        assert_eq!(spool.epoch, epoch);
        spool
            .append(&[batch("plc", 6, &rows)], &status_row)
            .unwrap();
        let after = spool.read(Table::Opcua, None, 10, usize::MAX).unwrap();
        assert_eq!(after.len(), 5);
        assert!(after.iter().all(|s| s.position > last), "{after:?}");

        // A new file draws a new epoch.
        let other = keyed(
            &dir.path().join("other"),
            "spool.key",
            1,
            SpoolPolicy::Block,
        );
        assert_ne!(other.epoch, epoch);
    }

    #[test]
    fn a_batch_larger_than_max_bytes_is_refused_under_every_policy() {
        for policy in [
            SpoolPolicy::DropOldest,
            SpoolPolicy::DropNewest,
            SpoolPolicy::Block,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let spool = Spool::open(dir.path(), None, 1000, policy).unwrap();
            let small = rows(Table::Opcua, 1, 100);
            spool.append(&[batch("a", 1, &small)], &status_row).unwrap();

            let big = rows(Table::Mqtt, 2, 600);
            let outcome = spool
                .append(&[batch("b", 7, &big), batch("a", 2, &small)], &status_row)
                .unwrap();
            assert_eq!(
                outcome,
                AppendOutcome {
                    committed: 2,
                    dropped_newest: 2,
                    stored: 1,
                    ..AppendOutcome::default()
                },
                "{policy:?}"
            );
            // Acknowledged, so the worker moves on instead of stalling every source behind it.
            assert_eq!(spool.last_seq("b").unwrap(), Some(8));
            // Nothing was evicted for a batch that could never fit, and the drop is recorded.
            let stats = spool.stats().unwrap();
            assert_eq!(stats.rows, [2, 0, 0, 1], "{policy:?}");
            let status = spool.read(Table::Status, None, 10, usize::MAX).unwrap();
            assert_eq!(status[0].row, status_row(2, policy));
        }
    }

    #[test]
    fn a_waiting_batch_is_not_counted() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), None, 1000, SpoolPolicy::Block).unwrap();
        let full = rows(Table::Opcua, 3, 300);
        spool.append(&[batch("a", 1, &full)], &status_row).unwrap();

        // Seq 3 is a re-send, seq 4 does not fit: the batch waits and comes back whole.
        let outcome = spool
            .append(
                &[
                    batch("a", 3, &rows(Table::Opcua, 2, 300)),
                    batch("b", 1, &[]),
                ],
                &status_row,
            )
            .unwrap();
        assert_eq!(outcome, AppendOutcome::default());
        assert_eq!(spool.last_seq("a").unwrap(), Some(3));
        assert_eq!(spool.stats().unwrap().rows, [3, 0, 0, 0]);
    }

    #[test]
    fn batches_that_need_no_room_commit_even_over_the_limit() {
        for policy in [SpoolPolicy::DropOldest, SpoolPolicy::Block] {
            let dir = tempfile::tempdir().unwrap();
            let spool = Spool::open(dir.path(), None, 1000, policy).unwrap();
            let stored = rows(Table::Opcua, 3, 300);
            spool
                .append(&[batch("a", 1, &stored)], &status_row)
                .unwrap();
            drop(spool);

            // The operator lowered max_bytes: 900 bytes are held, 500 allowed.
            let spool = Spool::open(dir.path(), None, 500, policy).unwrap();
            let outcome = spool
                .append(
                    &[batch("a", 2, &stored[..2]), batch("b", 1, &[])],
                    &status_row,
                )
                .unwrap();
            assert_eq!(
                outcome,
                AppendOutcome {
                    committed: 2,
                    duplicates: 2,
                    ..AppendOutcome::default()
                },
                "{policy:?}"
            );
            assert_eq!(spool.stats().unwrap().live_bytes, 900, "{policy:?}");
        }
    }

    #[test]
    fn drop_oldest_evicts_data_rows_before_status_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), None, 1000, SpoolPolicy::DropOldest).unwrap();
        // Positions 0 (status), 1 (mqtt), 2 (opcua), 3 (modbus).
        spool
            .append(
                &[
                    batch("w", 1, &rows(Table::Status, 1, 100)),
                    batch("m", 1, &rows(Table::Mqtt, 1, 300)),
                    batch("o", 1, &rows(Table::Opcua, 1, 300)),
                    batch("d", 1, &rows(Table::Modbus, 1, 300)),
                ],
                &status_row,
            )
            .unwrap();
        // Needs 650 of the 1000 bytes: mqtt, opcua and modbus go, oldest first; status stays.
        let outcome = spool
            .append(&[batch("o", 2, &rows(Table::Opcua, 1, 650))], &status_row)
            .unwrap();
        assert_eq!((outcome.evicted_oldest, outcome.stored), (3, 1));
        let status = spool.read(Table::Status, None, 10, usize::MAX).unwrap();
        assert_eq!(status.len(), 2);
        assert_eq!(status[0].position, 0);
        assert_eq!(status[1].row, status_row(3, SpoolPolicy::DropOldest));
        // 900 more bytes: the 650-byte data row goes first, then the oldest status row.
        let outcome = spool
            .append(&[batch("o", 3, &rows(Table::Opcua, 1, 900))], &status_row)
            .unwrap();
        assert_eq!((outcome.evicted_oldest, outcome.stored), (2, 1));
        let status_rows = |spool: &Spool| -> Vec<Vec<u8>> {
            let status = spool.read(Table::Status, None, 10, usize::MAX).unwrap();
            status.into_iter().map(|s| s.row).collect()
        };
        // Reported a moment ago: these two wait in the counter for the next report.
        assert_eq!(
            status_rows(&spool),
            [status_row(3, SpoolPolicy::DropOldest)]
        );
        assert_eq!(spool.unreported_drops().unwrap(), 2);
        assert_eq!(spool.stats().unwrap().rows, [1, 0, 0, 1]);
        // Once the interval has passed, the next commit reports them, drops or not.
        spool.report_drops_every(std::time::Duration::ZERO);
        let outcome = spool
            .append(&[batch("d", 2, &rows(Table::Modbus, 1, 10))], &status_row)
            .unwrap();
        assert_eq!((outcome.evicted_oldest, outcome.stored), (0, 1));
        assert_eq!(
            status_rows(&spool),
            [
                status_row(3, SpoolPolicy::DropOldest),
                status_row(2, SpoolPolicy::DropOldest)
            ]
        );
        assert_eq!(spool.unreported_drops().unwrap(), 0);
    }

    #[test]
    fn drop_newest_still_advances_the_sequence_number() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), None, 1000, SpoolPolicy::DropNewest).unwrap();
        spool
            .append(&[batch("a", 1, &rows(Table::Opcua, 3, 300))], &status_row)
            .unwrap();
        let outcome = spool
            .append(&[batch("a", 4, &rows(Table::Opcua, 2, 300))], &status_row)
            .unwrap();
        assert_eq!(
            outcome,
            AppendOutcome {
                committed: 1,
                dropped_newest: 2,
                ..AppendOutcome::default()
            }
        );
        assert_eq!(spool.last_seq("a").unwrap(), Some(5));
        assert_eq!(spool.stats().unwrap().rows, [3, 0, 0, 1]);
    }
}
