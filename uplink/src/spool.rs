//! The spool: the uplink's durable, encrypted, size-bounded store of rows on their way to Zerobus.
//!
//! # Why redb
//! Measured on this workload (research/crates-storage.md): sled 0.34's `flush()` is
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
//!   `live_bytes` (sum of the sealed rows in `rows/*`).
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
//!    (counted and reported in a status row written in the same transaction).
//! 4. `live_bytes` never exceeds `max_bytes` after a commit, except by status rows, which are
//!    always accepted so that every drop is recorded.
//!
//! Hence no acknowledged record can be lost: it is on disk before its ack, and it is deleted only
//! after Zerobus acknowledged it, or after being counted as a policy drop or a dead letter.

use std::{
    collections::HashMap,
    fs,
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::RwLock,
};

use iot_connector_proto::{SpoolPolicy, Table};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

const FORMAT_VERSION: u64 = 1;
const TAG_LEN: usize = 16;

const ROWS_OPCUA: TableDefinition<u64, &[u8]> = TableDefinition::new("rows/opcua");
const ROWS_MQTT: TableDefinition<u64, &[u8]> = TableDefinition::new("rows/mqtt");
const ROWS_MODBUS: TableDefinition<u64, &[u8]> = TableDefinition::new("rows/modbus");
const ROWS_STATUS: TableDefinition<u64, &[u8]> = TableDefinition::new("rows/status");
/// In [`Table::ALL`] order.
const ROWS: [TableDefinition<u64, &[u8]>; 4] = [ROWS_OPCUA, ROWS_MQTT, ROWS_MODBUS, ROWS_STATUS];
const SOURCES: TableDefinition<&str, u64> = TableDefinition::new("sources");
const DEAD_LETTERS: TableDefinition<u64, (u8, &str, &[u8])> = TableDefinition::new("dead_letters");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

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
    /// A row failed authentication: wrong key, or the file was tampered with.
    #[error("spool row at position {0} does not decrypt: wrong key file, or the spool was altered")]
    Decrypt(u64),
    /// A storage operation failed.
    #[error("spool storage error: {0}")]
    Storage(#[from] redb::Error),
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
                if let Some(parent) = path.parent() {
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
    /// Rows refused under `drop_newest`.
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

/// A row Zerobus rejected for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Where it was.
    pub position: u64,
    /// Its table.
    pub table: Table,
    /// The server's reason.
    pub reason: String,
    /// The protobuf row.
    pub row: Vec<u8>,
}

/// Sizes for metrics and health.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SpoolStats {
    /// Sum of the stored (sealed) rows.
    pub live_bytes: u64,
    /// Rows waiting per table, in [`Table::ALL`] order.
    pub rows: [u64; 4],
    /// Rows in the dead-letter store.
    pub dead_letters: u64,
}

/// The spool. Safe to share between the writer and the forwarders.
#[derive(Debug)]
pub struct Spool {
    // Writers and readers take the read side; compaction, which needs the database alone, the write side.
    db: RwLock<Database>,
    key: Option<SealKey>,
    epoch: u32,
    max_bytes: u64,
    policy: SpoolPolicy,
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
        let path = dir.join("spool.redb");
        let open_err = |source| SpoolError::Open {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(dir)
            .map_err(|e| open_err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))?;
        let db = Database::create(&path).map_err(open_err)?;
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
            for rows in ROWS {
                txn.open_table(rows)?;
            }
            txn.open_table(SOURCES)?;
            txn.open_table(DEAD_LETTERS)?;
        }
        txn.commit()?;
        Ok(Self {
            db: RwLock::new(db),
            key,
            epoch,
            max_bytes,
            policy,
        })
    }

    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, SpoolError>,
    ) -> Result<T, SpoolError> {
        let db = self
            .db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&db)
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

    /// Stores `batches` in one durable transaction, applying the full policy. `status_row` builds
    /// the status row that records a policy drop (`(dropped, policy)` in, encoded row out).
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
                    outcome.duplicates += (batch.rows.len() - fresh.len()) as u64;
                    let need: u64 = fresh.iter().map(|(_, _, row)| self.sealed_len(row)).sum();
                    let fits = live + need <= self.max_bytes;
                    match (fits, self.policy) {
                        (false, SpoolPolicy::Block) => break,
                        (false, SpoolPolicy::DropNewest) => {
                            outcome.dropped_newest += fresh.len() as u64;
                            drops += fresh.len() as u64;
                        }
                        (fits, policy) => {
                            if !fits && policy == SpoolPolicy::DropOldest {
                                let (evicted, freed) =
                                    evict_oldest(&mut rows, live + need - self.max_bytes)?;
                                outcome.evicted_oldest += evicted;
                                drops += evicted;
                                live -= freed;
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
                    if let Some(last) = batch.rows.last().map(|(seq, _, _)| *seq)
                        && held.is_none_or(|h| last > h)
                    {
                        sources.insert(batch.source.as_str(), last)?;
                    }
                    outcome.committed += 1;
                }
                if drops > 0 {
                    let row = status_row(drops, self.policy);
                    let sealed = self.seal(Table::Status, next, &row);
                    live += sealed.len() as u64;
                    if let Some(t) = rows.get_mut(Table::Status.index()) {
                        t.insert(next, sealed.as_slice())?;
                    }
                    next += 1;
                }
                meta_table.insert("next_position", next)?;
                meta_table.insert("live_bytes", live)?;
            }
            txn.commit()?;
            Ok(outcome)
        })
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

    /// Moves one row of `table` to the dead-letter store with the server's reason.
    pub fn dead_letter(&self, table: Table, position: u64, reason: &str) -> Result<(), SpoolError> {
        self.with_db(|db| {
            let txn = db.begin_write()?;
            {
                let mut rows = txn.open_table(rows_def(table))?;
                let mut dead = txn.open_table(DEAD_LETTERS)?;
                let mut meta_table = txn.open_table(META)?;
                let removed = rows.remove(position)?.map(|v| v.value().to_vec());
                if let Some(sealed) = removed {
                    dead.insert(position, (table as u8, reason, sealed.as_slice()))?;
                    let live = meta(&meta_table, "live_bytes")?.unwrap_or_default();
                    meta_table.insert("live_bytes", live.saturating_sub(sealed.len() as u64))?;
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
                let row = self.unseal(table, k.value(), sealed)?;
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
            for (slot, def) in stats.rows.iter_mut().zip(ROWS) {
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
        Ok(db.compact()?)
    }
}

fn rows_def(table: Table) -> TableDefinition<'static, u64, &'static [u8]> {
    match table {
        Table::Opcua => ROWS_OPCUA,
        Table::Mqtt => ROWS_MQTT,
        Table::Modbus => ROWS_MODBUS,
        Table::Status => ROWS_STATUS,
    }
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
        let Some((i, _)) = oldest.or_else(|| Some((Table::Status.index(), 0))) else {
            break;
        };
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
