//! containerd's snapshots gRPC service over [`Snapshots`]: each call runs on a blocking
//! thread (the metadata store and the disk are synchronous) and logs what it did.

use std::collections::HashMap;
use std::sync::Arc;

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::{tonic, Info, Kind as ApiKind, Snapshotter, Usage};

use crate::snapshots::{Snapshot, SnapshotError, Snapshots};
use crate::store::Kind;

/// The service: a shared [`Snapshots`].
#[derive(Clone)]
pub struct Service {
    inner: Arc<Snapshots>,
}

impl Service {
    /// Serves `snapshots`.
    pub fn new(snapshots: Snapshots) -> Service {
        Service {
            inner: Arc::new(snapshots),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        what: String,
        f: impl FnOnce(&Snapshots) -> Result<T, SnapshotError> + Send + 'static,
    ) -> Result<T, SnapshotError> {
        let inner = self.inner.clone();
        let r = tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| SnapshotError::FailedPrecondition(format!("{what}: {e}")))?;
        match &r {
            Ok(_) => log::debug!("{what}: ok"),
            // Expected answers (a nydus layer's ALREADY_EXISTS, Stat's NOT_FOUND) are not
            // failures.
            Err(SnapshotError::AlreadyExists(_) | SnapshotError::NotFound(_)) => {
                log::debug!(
                    "{what}: {}",
                    r.as_ref().err().map(|e| e.to_string()).unwrap_or_default()
                )
            }
            Err(e) => log::warn!("{what}: {e}"),
        }
        r
    }
}

fn info(s: Snapshot) -> Info {
    Info {
        kind: match s.record.kind {
            Kind::View => ApiKind::View,
            Kind::Active => ApiKind::Active,
            Kind::Committed => ApiKind::Committed,
        },
        name: s.name,
        parent: s.record.parent,
        labels: s.record.labels,
        created_at: s.record.created,
        updated_at: s.record.updated,
    }
}

/// The stream List answers with.
pub type InfoStream = futures::stream::Iter<std::vec::IntoIter<Result<Info, SnapshotError>>>;

#[tonic::async_trait]
impl Snapshotter for Service {
    type Error = SnapshotError;
    type InfoStream = InfoStream;

    async fn stat(&self, key: String) -> Result<Info, Self::Error> {
        let what = format!("stat {key}");
        self.run(what, move |s| s.stat(&key)).await.map(info)
    }

    async fn update(
        &self,
        info_in: Info,
        fieldpaths: Option<Vec<String>>,
    ) -> Result<Info, Self::Error> {
        let what = format!("update {}", info_in.name);
        self.run(what, move |s| {
            s.update(&info_in.name, &info_in.labels, fieldpaths.as_deref())
        })
        .await
        .map(info)
    }

    async fn usage(&self, key: String) -> Result<Usage, Self::Error> {
        let what = format!("usage {key}");
        let (size, inodes) = self.run(what, move |s| s.usage(&key)).await?;
        Ok(Usage { inodes, size })
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>, Self::Error> {
        let what = format!("mounts {key}");
        self.run(what, move |s| s.mounts(&key)).await
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Self::Error> {
        let what = format!("prepare {key} (parent {parent:?})");
        self.run(what, move |s| s.prepare(&key, &parent, labels, false))
            .await
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Self::Error> {
        let what = format!("view {key} (parent {parent:?})");
        self.run(what, move |s| s.prepare(&key, &parent, labels, true))
            .await
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), Self::Error> {
        let what = format!("commit {key} as {name}");
        self.run(what, move |s| s.commit(&name, &key, labels)).await
    }

    async fn remove(&self, key: String) -> Result<(), Self::Error> {
        let what = format!("remove {key}");
        self.run(what, move |s| s.remove(&key)).await
    }

    async fn clear(&self) -> Result<(), Self::Error> {
        let n = self.run("cleanup".into(), |s| s.cleanup()).await?;
        log::info!("cleanup removed {n} leftover directories");
        Ok(())
    }

    async fn list(
        &self,
        _snapshotter: String,
        filters: Vec<String>,
    ) -> Result<Self::InfoStream, Self::Error> {
        let what = format!("list {filters:?}");
        let all = self.run(what, move |s| s.list(&filters)).await?;
        let items: Vec<Result<Info, SnapshotError>> =
            all.into_iter().map(|s| Ok(info(s))).collect();
        Ok(futures::stream::iter(items))
    }
}
