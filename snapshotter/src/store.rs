//! The snapshots' metadata: one crash-safe redb database (`<root>/metadata.redb`).
//!
//! Every change is one ACID transaction: a crash leaves the metadata as it was before
//! the change or after it, never between. Directories on disk follow the metadata (see
//! [`crate::storage`]): a directory no record names is an orphan that Cleanup removes.

use std::collections::HashMap;
use std::path::Path;
use std::time::SystemTime;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// Records by snapshot key (active and view snapshots) or name (committed ones): one
/// namespace, as containerd's own metadata has it.
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
/// Counters: `next_id`.
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// What the store failed at.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or created.
    #[error("opening the metadata database {path}: {source}")]
    Open {
        /// The database file.
        path: String,
        /// redb's error.
        source: redb::DatabaseError,
    },
    /// A transaction failed.
    #[error("metadata transaction: {0}")]
    Transaction(#[from] redb::TransactionError),
    /// A table could not be opened.
    #[error("metadata table: {0}")]
    Table(#[from] redb::TableError),
    /// Reading or writing a record failed.
    #[error("metadata storage: {0}")]
    Storage(#[from] redb::StorageError),
    /// The commit failed (nothing was changed).
    #[error("metadata commit: {0}")]
    Commit(#[from] redb::CommitError),
    /// A record could not be decoded.
    #[error("the metadata record of {key:?} is corrupt: {source}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// The decoding error.
        source: serde_json::Error,
    },
}

/// The kind of a snapshot, as containerd names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Read-only, uncommittable.
    View,
    /// Writable, to be committed.
    Active,
    /// Immutable, a parent for others.
    Committed,
}

/// One snapshot's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Its directory's name under `snapshots/`.
    pub id: u64,
    /// Its kind.
    pub kind: Kind,
    /// Its parent's name (committed), or empty.
    pub parent: String,
    /// containerd's labels.
    pub labels: HashMap<String, String>,
    /// When it was created (committed: when it was committed).
    pub created: SystemTime,
    /// When it was last changed.
    pub updated: SystemTime,
    /// Disk usage (bytes, inodes) measured when it was committed.
    #[serde(default)]
    pub usage: Option<(i64, i64)>,
}

/// The metadata database.
pub struct Store {
    db: Database,
}

/// A write transaction: all its changes land together when the closure given to
/// [`Store::write`] returns `Ok`, none when it returns `Err`.
pub struct Tx<'a> {
    snapshots: redb::Table<'a, &'static str, &'static [u8]>,
    counters: redb::Table<'a, &'static str, u64>,
}

fn decode(key: &str, bytes: &[u8]) -> Result<Record, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        key: key.to_string(),
        source,
    })
}

fn encode(record: &Record) -> Vec<u8> {
    // A struct of strings, numbers and maps of strings always serializes.
    serde_json::to_vec(record).unwrap_or_default()
}

impl Tx<'_> {
    /// The record of `key`.
    pub fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        match self.snapshots.get(key)? {
            Some(v) => decode(key, v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Inserts or replaces the record of `key`.
    pub fn put(&mut self, key: &str, record: &Record) -> Result<(), StoreError> {
        self.snapshots.insert(key, encode(record).as_slice())?;
        Ok(())
    }

    /// Removes the record of `key`.
    pub fn remove(&mut self, key: &str) -> Result<(), StoreError> {
        self.snapshots.remove(key)?;
        Ok(())
    }

    /// Every record, by key.
    pub fn all(&self) -> Result<Vec<(String, Record)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.snapshots.iter()? {
            let (k, v) = entry?;
            out.push((k.value().to_string(), decode(k.value(), v.value())?));
        }
        Ok(out)
    }

    /// A new snapshot id, never handed out before.
    pub fn next_id(&mut self) -> Result<u64, StoreError> {
        let id = self
            .counters
            .get("next_id")?
            .map(|v| v.value())
            .unwrap_or(1);
        self.counters.insert("next_id", id + 1)?;
        Ok(id)
    }
}

impl Store {
    /// Opens `path`, creating it when missing.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        // Create the tables so that readers find them.
        let txn = db.begin_write()?;
        txn.open_table(SNAPSHOTS)?;
        txn.open_table(COUNTERS)?;
        txn.commit()?;
        Ok(Store { db })
    }

    /// The record of `key`.
    pub fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        match table.get(key)? {
            Some(v) => decode(key, v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Every record, by key.
    pub fn all(&self) -> Result<Vec<(String, Record)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.push((k.value().to_string(), decode(k.value(), v.value())?));
        }
        Ok(out)
    }

    /// Runs `f` in one write transaction, committed when `f` returns `Ok`, dropped (no
    /// change) when it returns `Err`.
    pub fn write<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let txn = self.db.begin_write().map_err(StoreError::from)?;
        let value = {
            let mut tx = Tx {
                snapshots: txn.open_table(SNAPSHOTS).map_err(StoreError::from)?,
                counters: txn.open_table(COUNTERS).map_err(StoreError::from)?,
            };
            f(&mut tx)?
        };
        txn.commit().map_err(StoreError::from)?;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64) -> Record {
        Record {
            id,
            kind: Kind::Active,
            parent: String::new(),
            labels: HashMap::from([("a".into(), "b".into())]),
            created: SystemTime::now(),
            updated: SystemTime::now(),
            usage: None,
        }
    }

    #[test]
    fn a_failed_transaction_changes_nothing_and_a_reopen_keeps_what_was_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.redb");
        let store = Store::open(&path).unwrap();
        store
            .write(|tx| {
                let id = tx.next_id()?;
                tx.put("k1", &record(id))
            })
            .unwrap();
        let r: Result<(), StoreError> = store.write(|tx| {
            let id = tx.next_id()?;
            tx.put("k2", &record(id))?;
            tx.remove("k1")?;
            Err(StoreError::Corrupt {
                key: "x".into(),
                source: serde_json::from_str::<u8>("x").unwrap_err(),
            })
        });
        assert!(r.is_err());
        assert!(store.get("k2").unwrap().is_none());
        assert_eq!(store.get("k1").unwrap().unwrap().id, 1);
        drop(store);
        let store = Store::open(&path).unwrap();
        let all = store.all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, "k1");
        assert_eq!(all[0].1.labels["a"], "b");
        // The dropped transaction's id is not handed out again only if it was committed:
        // ids stay unique either way.
        let id = store.write(|tx| tx.next_id()).unwrap();
        assert_eq!(id, 2);
    }
}
