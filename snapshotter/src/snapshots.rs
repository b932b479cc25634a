//! The snapshotter's operations: containerd's overlayfs snapshotter for ordinary layers,
//! plus the nydus rules (a data layer is committed at once and never fetched; a
//! container above a nydus bootstrap gets a `fuse.nydus-overlayfs` mount).
//!
//! Every change runs inside one metadata write transaction, which also serializes
//! concurrent Prepare, Commit and Remove calls; directories are made and retired inside
//! it (see [`crate::storage`]).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::SystemTime;

use containerd_snapshots::api::types::Mount;

use crate::config::Config;
use crate::filter::{Filter, FilterError};
use crate::nydus::{self, NydusError};
use crate::storage::{self, Storage, StorageError};
use crate::store::{Kind, Record, Store, StoreError};

/// Why an operation failed; each maps to the gRPC code containerd expects.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// No snapshot has this key or name (gRPC NOT_FOUND).
    #[error("snapshot {0:?} does not exist")]
    NotFound(String),
    /// The key or name is taken (gRPC ALREADY_EXISTS); a nydus data layer's Prepare
    /// answers this once it committed the layer under its target name.
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    /// The snapshot is not in a state for this (gRPC FAILED_PRECONDITION).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A request field is wrong (gRPC INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidArgument(String),
    /// A List filter does not parse.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// A nydus image is broken or its labels are.
    #[error(transparent)]
    Nydus(#[from] NydusError),
    /// The metadata store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The disk failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<SnapshotError> for containerd_snapshots::tonic::Status {
    fn from(e: SnapshotError) -> Self {
        use containerd_snapshots::tonic::Status;
        let msg = e.to_string();
        match e {
            SnapshotError::NotFound(_) => Status::not_found(msg),
            SnapshotError::AlreadyExists(_) => Status::already_exists(msg),
            SnapshotError::FailedPrecondition(_) | SnapshotError::Nydus(_) => {
                Status::failed_precondition(msg)
            }
            SnapshotError::InvalidArgument(_) | SnapshotError::Filter(_) => {
                Status::invalid_argument(msg)
            }
            SnapshotError::Store(_) | SnapshotError::Storage(_) => Status::internal(msg),
        }
    }
}

/// One snapshot as List and Stat show it.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Its key (active, view) or name (committed).
    pub name: String,
    /// Its metadata.
    pub record: Record,
}

/// The snapshotter's state: configuration, metadata, directories.
pub struct Snapshots {
    config: Config,
    store: Store,
    storage: Storage,
}

/// A label update's field paths: none means all labels are replaced.
fn apply_update(
    labels: &mut HashMap<String, String>,
    new: &HashMap<String, String>,
    paths: Option<&[String]>,
) -> Result<(), SnapshotError> {
    let paths = match paths {
        None | Some([]) => {
            *labels = new.clone();
            return Ok(());
        }
        Some(p) => p,
    };
    for p in paths {
        if p == "labels" {
            *labels = new.clone();
        } else if let Some(k) = p.strip_prefix("labels.") {
            match new.get(k) {
                Some(v) => labels.insert(k.to_string(), v.clone()),
                None => labels.remove(k),
            };
        } else {
            return Err(SnapshotError::InvalidArgument(format!(
                "cannot update field {p:?} of a snapshot: only labels can change"
            )));
        }
    }
    Ok(())
}

impl Snapshots {
    /// Opens (or creates) the snapshotter's root: `snapshots/`, `metadata.redb`, `cache/`.
    pub fn open(config: Config) -> Result<Snapshots, SnapshotError> {
        let storage = Storage::open(&config.root)?;
        let cache = config.cache_dir();
        std::fs::create_dir_all(&cache).map_err(|source| {
            SnapshotError::FailedPrecondition(format!("creating {}: {source}", cache.display()))
        })?;
        let store = Store::open(&config.root.join("metadata.redb"))?;
        Ok(Snapshots {
            config,
            store,
            storage,
        })
    }

    /// The record of `key`, or NOT_FOUND.
    fn record(&self, key: &str) -> Result<Record, SnapshotError> {
        self.store
            .get(key)?
            .ok_or_else(|| SnapshotError::NotFound(key.to_string()))
    }

    /// Stat: the snapshot `key`.
    pub fn stat(&self, key: &str) -> Result<Snapshot, SnapshotError> {
        Ok(Snapshot {
            name: key.to_string(),
            record: self.record(key)?,
        })
    }

    /// Prepare (`readonly` false) or View (`readonly` true): a new snapshot `key` on top
    /// of the committed `parent` (or empty), and its mounts. A nydus data layer is
    /// committed under its target name instead, answered with ALREADY_EXISTS so that
    /// containerd skips fetching it.
    pub fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
        readonly: bool,
    ) -> Result<Vec<Mount>, SnapshotError> {
        if key.is_empty() {
            return Err(SnapshotError::InvalidArgument(
                "a snapshot key is required".into(),
            ));
        }
        if !readonly {
            if let Some(target) = nydus::data_layer_target(&labels) {
                let target = target.to_string();
                self.create(&target, parent, labels, Kind::Committed)?;
                log::info!("nydus data layer committed as {target} without fetching it");
                return Err(SnapshotError::AlreadyExists(target));
            }
        }
        let kind = if readonly { Kind::View } else { Kind::Active };
        let record = self.create(key, parent, labels, kind)?;
        // A snapshot whose mounts cannot be made (a broken nydus image) is not kept.
        self.mounts_of(key, &record).inspect_err(|_| {
            if let Err(e) = self.remove(key) {
                log::warn!("removing snapshot {key:?} after its failed Prepare: {e}");
            }
        })
    }

    /// Creates snapshot `name` (its directory and its record, together).
    fn create(
        &self,
        name: &str,
        parent: &str,
        labels: HashMap<String, String>,
        kind: Kind,
    ) -> Result<Record, SnapshotError> {
        let mut published = None;
        let result = self.store.write(|tx| {
            if tx.get(name)?.is_some() {
                return Err(SnapshotError::AlreadyExists(name.to_string()));
            }
            if !parent.is_empty() {
                match tx.get(parent)? {
                    None => return Err(SnapshotError::NotFound(parent.to_string())),
                    Some(p) if p.kind != Kind::Committed => {
                        return Err(SnapshotError::FailedPrecondition(format!(
                            "parent {parent:?} is not committed"
                        )))
                    }
                    Some(_) => {}
                }
            }
            let id = tx.next_id()?;
            let dir = self.storage.create()?;
            let now = SystemTime::now();
            let record = Record {
                id,
                kind,
                parent: parent.to_string(),
                labels,
                created: now,
                updated: now,
                usage: (kind == Kind::Committed).then_some((0, 0)),
            };
            tx.put(name, &record)?;
            self.storage.publish(dir, id)?;
            published = Some(id);
            Ok(record)
        });
        if let (Err(_), Some(id)) = (&result, published) {
            self.storage.unpublish(id);
        }
        result
    }

    /// Mounts: the mounts of snapshot `key`.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        let record = self.record(key)?;
        self.mounts_of(key, &record)
    }

    /// The snapshot's parents, nearest first.
    fn parents(&self, record: &Record) -> Result<Vec<(String, Record)>, SnapshotError> {
        let mut chain = Vec::new();
        let mut next = record.parent.clone();
        while !next.is_empty() {
            let r = self.store.get(&next)?.ok_or_else(|| {
                SnapshotError::FailedPrecondition(format!("parent {next:?} is missing"))
            })?;
            let p = r.parent.clone();
            chain.push((next, r));
            next = p;
        }
        Ok(chain)
    }

    fn mounts_of(&self, key: &str, record: &Record) -> Result<Vec<Mount>, SnapshotError> {
        let parents = self.parents(record)?;
        let lowers: Vec<String> = parents
            .iter()
            .map(|(_, r)| self.storage.fs(r.id).display().to_string())
            .collect();
        let fs = self.storage.fs(record.id).display().to_string();
        let work = self.storage.work(record.id).display().to_string();
        if record.kind == Kind::Active {
            if let Some((layer, boot)) = parents
                .iter()
                .find(|(_, r)| nydus::is_bootstrap_layer(&r.labels))
            {
                return self.nydus_mount(key, record, layer, boot, &lowers);
            }
        }
        let m = |ty: &str, source: &str, options: Vec<String>| Mount {
            r#type: ty.to_string(),
            source: source.to_string(),
            target: String::new(),
            options,
        };
        let access = if record.kind == Kind::Active {
            "rw"
        } else {
            "ro"
        };
        Ok(vec![match (record.kind, lowers.as_slice()) {
            (_, []) => m("bind", &fs, vec![access.into(), "rbind".into()]),
            (Kind::View | Kind::Committed, [one]) => {
                m("bind", one, vec!["ro".into(), "rbind".into()])
            }
            (Kind::View | Kind::Committed, many) => m(
                "overlay",
                "overlay",
                vec![format!("lowerdir={}", many.join(":"))],
            ),
            (Kind::Active, many) => m(
                "overlay",
                "overlay",
                vec![
                    format!("workdir={work}"),
                    format!("upperdir={fs}"),
                    format!("lowerdir={}", many.join(":")),
                ],
            ),
        }])
    }

    /// The `fuse.nydus-overlayfs` mount of a container above nydus bootstrap `layer`.
    fn nydus_mount(
        &self,
        key: &str,
        record: &Record,
        layer: &str,
        boot: &Record,
        lowers: &[String],
    ) -> Result<Vec<Mount>, SnapshotError> {
        let image = boot
            .labels
            .get(nydus::IMAGE_REF_LABEL)
            .ok_or_else(|| NydusError::NoImageRef(layer.to_string()))?;
        let bootstrap = self.storage.fs(boot.id).join(nydus::BOOTSTRAP_PATH);
        if !bootstrap.is_file() {
            return Err(NydusError::NoBootstrap {
                layer: layer.to_string(),
                image: image.clone(),
            }
            .into());
        }
        let fs_version = nydus::fs_version(layer, &boot.labels)?;
        let location = nydus::parse_image_ref(image)?;
        let registry = self.config.registry(&location.host);
        let config = nydus::nydusd_config(&location, &registry, &self.config.cache_dir());
        let snapshotdir: PathBuf = self.storage.dir(record.id);
        log::debug!(
            "nydus mount for {key}: image {image}, bootstrap {}",
            bootstrap.display()
        );
        Ok(vec![Mount {
            r#type: nydus::MOUNT_TYPE.to_string(),
            source: "overlay".to_string(),
            target: String::new(),
            options: vec![
                format!("workdir={}", self.storage.work(record.id).display()),
                format!("upperdir={}", self.storage.fs(record.id).display()),
                format!("lowerdir={}", lowers.join(":")),
                nydus::extraoption(&bootstrap, &config, &snapshotdir, fs_version),
            ],
        }])
    }

    /// Commit: the active snapshot `key` becomes the committed `name` (same directory),
    /// with the labels given at Prepare and here.
    pub fn commit(
        &self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), SnapshotError> {
        self.store.write(|tx| {
            let mut record = tx
                .get(key)?
                .ok_or_else(|| SnapshotError::NotFound(key.to_string()))?;
            if record.kind != Kind::Active {
                return Err(SnapshotError::FailedPrecondition(format!(
                    "snapshot {key:?} is not active: only an active snapshot can be committed"
                )));
            }
            if tx.get(name)?.is_some() {
                return Err(SnapshotError::AlreadyExists(name.to_string()));
            }
            record.usage = Some(storage::usage(&self.storage.fs(record.id))?);
            record.kind = Kind::Committed;
            record.labels.extend(labels);
            let now = SystemTime::now();
            record.created = now;
            record.updated = now;
            tx.remove(key)?;
            tx.put(name, &record)?;
            Ok(())
        })
    }

    /// Remove: snapshot `key` and its directory; refused while it has children.
    pub fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        let mut retired = None;
        let result = self.store.write(|tx| {
            let record = tx
                .get(key)?
                .ok_or_else(|| SnapshotError::NotFound(key.to_string()))?;
            if let Some((child, _)) = tx.all()?.into_iter().find(|(_, r)| r.parent == key) {
                return Err(SnapshotError::FailedPrecondition(format!(
                    "snapshot {key:?} has a child ({child:?}): remove it first"
                )));
            }
            tx.remove(key)?;
            retired = Some((self.storage.retire(record.id)?, record.id));
            Ok(())
        });
        match (result, retired) {
            (Ok(()), Some((dir, _))) => {
                // The metadata is gone; a failure here leaves an orphan for Cleanup.
                if let Err(e) = self.storage.delete_retired(&dir) {
                    log::warn!("{e} (Cleanup will retry)");
                }
                Ok(())
            }
            (Err(e), Some((dir, id))) => {
                self.storage.unretire(&dir, id);
                Err(e)
            }
            (r, None) => r,
        }
    }

    /// Update: a snapshot's labels (the only thing that can change).
    pub fn update(
        &self,
        key: &str,
        labels: &HashMap<String, String>,
        paths: Option<&[String]>,
    ) -> Result<Snapshot, SnapshotError> {
        self.store.write(|tx| {
            let mut record = tx
                .get(key)?
                .ok_or_else(|| SnapshotError::NotFound(key.to_string()))?;
            apply_update(&mut record.labels, labels, paths)?;
            record.updated = SystemTime::now();
            tx.put(key, &record)?;
            Ok(Snapshot {
                name: key.to_string(),
                record,
            })
        })
    }

    /// Usage: (bytes, inodes) of snapshot `key` (measured now unless committed).
    pub fn usage(&self, key: &str) -> Result<(i64, i64), SnapshotError> {
        let record = self.record(key)?;
        match record.usage {
            Some(u) if record.kind == Kind::Committed => Ok(u),
            _ => Ok(storage::usage(&self.storage.fs(record.id))?),
        }
    }

    /// List (Walk): every snapshot matching `filters`.
    pub fn list(&self, filters: &[String]) -> Result<Vec<Snapshot>, SnapshotError> {
        let filter = Filter::parse(filters)?;
        Ok(self
            .store
            .all()?
            .into_iter()
            .filter(|(name, r)| filter.matches(name, r))
            .map(|(name, record)| Snapshot { name, record })
            .collect())
    }

    /// Cleanup: deletes every directory no snapshot owns (crash and removal leftovers).
    pub fn cleanup(&self) -> Result<usize, SnapshotError> {
        self.store.write(|tx| {
            let known: HashSet<u64> = tx.all()?.into_iter().map(|(_, r)| r.id).collect();
            let removed = self.storage.remove_orphans(&known)?;
            for p in &removed {
                log::info!("cleanup: removed {}", p.display());
            }
            Ok(removed.len())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nydus::{
        BLOB_LABEL, BOOTSTRAP_LABEL, FS_VERSION_LABEL, IMAGE_REF_LABEL, TARGET_REF_LABEL,
    };

    fn open(root: &std::path::Path) -> Snapshots {
        let mut config = Config {
            root: root.to_path_buf(),
            ..Default::default()
        };
        config.registries.insert(
            "127.0.0.1:5000".into(),
            crate::config::Registry {
                plain_http: true,
                ..Default::default()
            },
        );
        Snapshots::open(config).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn option<'a>(m: &'a Mount, key: &str) -> &'a str {
        m.options
            .iter()
            .find_map(|o| o.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} in {:?}", m.options))
    }

    #[test]
    fn overlay_semantics() {
        let root = tempfile::tempdir().unwrap();
        let s = open(root.path());
        assert!(matches!(s.stat("nope"), Err(SnapshotError::NotFound(_))));
        let m = s.prepare("k1", "", HashMap::new(), false).unwrap();
        assert_eq!(m[0].r#type, "bind");
        assert_eq!(m[0].options, ["rw", "rbind"]);
        std::fs::write(PathBuf::from(&m[0].source).join("a"), "1").unwrap();
        assert!(matches!(
            s.prepare("k1", "", HashMap::new(), false),
            Err(SnapshotError::AlreadyExists(_))
        ));
        assert!(matches!(
            s.prepare("k2", "k1", HashMap::new(), false),
            Err(SnapshotError::FailedPrecondition(_))
        ));
        s.commit("l1", "k1", labels(&[("x", "y")])).unwrap();
        assert!(matches!(s.stat("k1"), Err(SnapshotError::NotFound(_))));
        let l1 = s.stat("l1").unwrap();
        assert_eq!(l1.record.kind, Kind::Committed);
        assert!(s.usage("l1").unwrap().0 > 0);

        let m = s.prepare("k2", "l1", HashMap::new(), false).unwrap();
        assert_eq!(m[0].r#type, "overlay");
        assert!(option(&m[0], "lowerdir=").ends_with("/fs"));
        s.commit("l2", "k2", HashMap::new()).unwrap();
        let v = s.prepare("v", "l2", HashMap::new(), true).unwrap();
        assert_eq!(v[0].r#type, "overlay");
        assert_eq!(option(&v[0], "lowerdir=").split(':').count(), 2);
        assert!(!v[0].options.iter().any(|o| o.starts_with("upperdir=")));
        assert!(matches!(
            s.commit("v2", "v", HashMap::new()),
            Err(SnapshotError::FailedPrecondition(_))
        ));

        // Children first.
        assert!(matches!(
            s.remove("l2"),
            Err(SnapshotError::FailedPrecondition(_))
        ));
        s.remove("v").unwrap();
        s.remove("l2").unwrap();
        s.remove("l1").unwrap();
        assert!(s.list(&[]).unwrap().is_empty());
        let left: Vec<_> = std::fs::read_dir(root.path().join("snapshots"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn update_list_and_survive_a_reopen() {
        let root = tempfile::tempdir().unwrap();
        {
            let s = open(root.path());
            s.prepare("k", "", labels(&[("a", "1"), ("b", "2")]), false)
                .unwrap();
            let u = s
                .update(
                    "k",
                    &labels(&[("a", "9")]),
                    Some(&["labels.a".into(), "labels.b".into()]),
                )
                .unwrap();
            assert_eq!(u.record.labels, labels(&[("a", "9")]));
            assert!(s
                .update("k", &HashMap::new(), Some(&["parent".into()]))
                .is_err());
            s.commit("c", "k", HashMap::new()).unwrap();
        }
        let s = open(root.path());
        let all = s.list(&["labels.a==9".into()]).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].name, "c");
        assert!(s.list(&["kind==active".into()]).unwrap().is_empty());
        assert!(s.list(&["bogus==1".into()]).is_err());
    }

    #[test]
    fn nydus_layers() {
        let root = tempfile::tempdir().unwrap();
        let s = open(root.path());
        let image = "127.0.0.1:5000/lazyvm/app:v1";
        // The data layer: committed under its chain id, answered ALREADY_EXISTS.
        let blob = labels(&[
            (BLOB_LABEL, "true"),
            (TARGET_REF_LABEL, "sha256:chain1"),
            (IMAGE_REF_LABEL, image),
        ]);
        let e = s.prepare("extract-1 sha256:chain1", "", blob.clone(), false);
        assert!(matches!(e, Err(SnapshotError::AlreadyExists(ref t)) if t == "sha256:chain1"));
        assert_eq!(
            s.stat("sha256:chain1").unwrap().record.kind,
            Kind::Committed
        );
        assert!(matches!(
            s.stat("extract-1 sha256:chain1"),
            Err(SnapshotError::NotFound(_))
        ));
        // Again (a second pull): the same answer, nothing new.
        let e = s.prepare("extract-2 sha256:chain1", "", blob, false);
        assert!(matches!(e, Err(SnapshotError::AlreadyExists(_))));
        assert_eq!(s.list(&[]).unwrap().len(), 1);

        // The bootstrap layer: unpacked like any layer.
        let boot = labels(&[
            (BOOTSTRAP_LABEL, "true"),
            (FS_VERSION_LABEL, "6"),
            (TARGET_REF_LABEL, "sha256:chain2"),
            (IMAGE_REF_LABEL, image),
        ]);
        let m = s
            .prepare("extract-3 sha256:chain2", "sha256:chain1", boot, false)
            .unwrap();
        assert_eq!(m[0].r#type, "overlay");
        let upper = PathBuf::from(option(&m[0], "upperdir="));

        // A container on a bootstrap layer without its bootstrap file: a clear error.
        s.commit("sha256:broken", "extract-3 sha256:chain2", HashMap::new())
            .unwrap();
        let e = s
            .prepare("c0", "sha256:broken", HashMap::new(), false)
            .unwrap_err();
        assert!(e.to_string().contains("image/image.boot"), "{e}");
        assert!(
            matches!(s.stat("c0"), Err(SnapshotError::NotFound(_))),
            "a failed Prepare keeps nothing"
        );

        std::fs::create_dir_all(upper.join("image")).unwrap();
        std::fs::write(upper.join("image/image.boot"), "boot").unwrap();
        let m = s
            .prepare("c1", "sha256:broken", HashMap::new(), false)
            .unwrap();
        assert_eq!(m[0].r#type, "fuse.nydus-overlayfs");
        assert_eq!(m[0].source, "overlay");
        let extra = option(&m[0], "extraoption=");
        let json: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::STANDARD, extra).unwrap(),
        )
        .unwrap();
        assert_eq!(
            json["source"],
            upper.join("image/image.boot").display().to_string()
        );
        assert_eq!(json["fs_version"], "v6");
        let snapdir = PathBuf::from(json["snapshotdir"].as_str().unwrap());
        assert_eq!(
            snapdir.join("fs").display().to_string(),
            option(&m[0], "upperdir=")
        );
        assert!(snapdir.join("work").is_dir());
        let config: serde_json::Value =
            serde_json::from_str(json["config"].as_str().unwrap()).unwrap();
        assert_eq!(config["device"]["backend"]["config"]["scheme"], "http");
        assert_eq!(config["device"]["backend"]["config"]["repo"], "lazyvm/app");
        // A view of the same image is a plain read-only overlay.
        let v = s
            .prepare("v1", "sha256:broken", HashMap::new(), true)
            .unwrap();
        assert_eq!(v[0].r#type, "overlay");
    }

    #[test]
    fn concurrent_prepare_commit_and_remove_are_safe() {
        let root = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(open(root.path()));
        s.prepare("base-k", "", HashMap::new(), false).unwrap();
        s.commit("base", "base-k", HashMap::new()).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..20 {
                        let key = format!("k{t}-{i}");
                        let m = s.prepare(&key, "base", HashMap::new(), false).unwrap();
                        std::fs::write(PathBuf::from(option(&m[0], "upperdir=")).join("f"), "x")
                            .unwrap();
                        s.commit(&format!("c{t}-{i}"), &key, HashMap::new())
                            .unwrap();
                        // The same target from two threads: exactly one wins.
                        let _ = s.prepare("shared", "base", HashMap::new(), false);
                        if i % 2 == 0 {
                            s.remove(&format!("c{t}-{i}")).unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let all = s.list(&[]).unwrap();
        // base, shared, and the 80 odd commits.
        assert_eq!(all.len(), 82);
        let ids: HashSet<u64> = all.iter().map(|x| x.record.id).collect();
        assert_eq!(ids.len(), all.len(), "ids are unique");
        assert_eq!(s.cleanup().unwrap(), 0, "no stray directories");
        let dirs = std::fs::read_dir(root.path().join("snapshots"))
            .unwrap()
            .count();
        assert_eq!(dirs, all.len());
    }

    #[test]
    fn cleanup_removes_orphans_only() {
        let root = tempfile::tempdir().unwrap();
        let s = open(root.path());
        s.prepare("k", "", HashMap::new(), false).unwrap();
        std::fs::create_dir_all(root.path().join("snapshots/rm-77/fs")).unwrap();
        std::fs::create_dir_all(root.path().join("snapshots/new-1-1/fs")).unwrap();
        assert_eq!(s.cleanup().unwrap(), 2);
        assert!(s.mounts("k").is_ok());
        assert_eq!(
            std::fs::read_dir(root.path().join("snapshots"))
                .unwrap()
                .count(),
            1
        );
    }
}
