//! A tap made ahead of its pod, for a VM the VM cache boots before any pod exists: the
//! tap sits in a network namespace of its own (nothing else in it, nothing of the host's),
//! under the name the pod's first tap has (`tap0_lazyvm`), and QEMU gives the guest a NIC
//! on it with a MAC of the cache's choosing. When a pod claims the VM, the tap is moved
//! into the pod's namespace ([`ParkedTap::move_to`]) and connected there as a tap of
//! [`super::PodNetwork::setup`] would be. A VM that goes to a sandbox without a network
//! keeps its NIC on the tap's own namespace, which ends (deleting the tap) when the last
//! descriptor of it closes: its NIC then leads nowhere.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use rtnetlink::LinkUnspec;

use super::{in_netns, link_index, nl, tap, tap_name, NetworkError};
use crate::hypervisor::NetDevice;

/// A tap in a network namespace of its own, for a VM booted ahead of its pod.
#[derive(Debug)]
pub struct ParkedTap {
    netns: File,
    tap: OwnedFd,
    mac: String,
}

impl ParkedTap {
    /// Makes a network namespace and the tap in it; the guest NIC on it will have `mac`.
    pub fn new(mac: &str) -> Result<ParkedTap, NetworkError> {
        std::thread::Builder::new()
            .name("lazyvm-parked-tap".into())
            .spawn(|| -> Result<(File, OwnedFd), NetworkError> {
                let here = PathBuf::from("/proc/thread-self/ns/net");
                let ns_err = |source| NetworkError::Netns {
                    path: here.clone(),
                    source,
                };
                // This thread alone enters the new namespace, and ends right after.
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| ns_err(e.into()))?;
                let netns = File::open(&here).map_err(ns_err)?;
                let tap = tap::create(&tap_name(0))?;
                Ok((netns, tap))
            })
            .map_err(|e| NetworkError::Thread(e.to_string()))?
            .join()
            .map_err(|_| NetworkError::Thread("the tap thread panicked".into()))?
            .map(|(netns, tap)| ParkedTap {
                netns,
                tap,
                mac: mac.to_string(),
            })
    }

    /// The NIC to give QEMU.
    pub fn nic(&self) -> NetDevice {
        NetDevice {
            fd: self.tap.as_raw_fd(),
            mac: self.mac.clone(),
        }
    }

    /// The guest NIC's MAC.
    pub fn mac(&self) -> &str {
        &self.mac
    }

    /// Moves the tap into the network namespace `target` (a pod's), under the same name;
    /// returns its descriptor. The tap's own namespace ends with this.
    pub async fn move_to(self, target: BorrowedFd<'_>) -> Result<OwnedFd, NetworkError> {
        let target = target
            .try_clone_to_owned()
            .map_err(|source| NetworkError::Netns {
                path: PathBuf::from("the pod's network namespace"),
                source,
            })?;
        let own = PathBuf::from(format!("/proc/self/fd/{}", self.netns.as_fd().as_raw_fd()));
        in_netns(&own, move |handle| async move {
            let name = tap_name(0);
            let index = link_index(&handle, &name).await?;
            handle
                .link()
                .set(
                    LinkUnspec::new_with_index(index)
                        .setns_by_fd(target.as_raw_fd())
                        .build(),
                )
                .execute()
                .await
                .map_err(nl(format!(
                    "moving {name} into the pod's network namespace"
                )))
        })
        .await?;
        Ok(self.tap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// The links of the network namespace at `path`, by name.
    async fn link_names(path: PathBuf) -> Vec<String> {
        in_netns(&path, |handle| async move {
            use futures::TryStreamExt;
            let links: Vec<_> = handle
                .link()
                .get()
                .execute()
                .try_collect()
                .await
                .map_err(nl("listing"))?;
            Ok(links
                .iter()
                .flat_map(|l| l.attributes.iter())
                .filter_map(|a| match a {
                    rtnetlink::packet_route::link::LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })
                .collect())
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_parked_tap_moves_into_another_namespace() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let parked = ParkedTap::new("02:00:00:00:00:07").unwrap();
        assert_eq!(parked.nic().mac, "02:00:00:00:00:07");
        let own = PathBuf::from(format!("/proc/self/fd/{}", parked.netns.as_raw_fd()));
        assert!(link_names(own).await.contains(&"tap0_lazyvm".to_string()));
        // Nothing of it in ours.
        let ours = PathBuf::from("/proc/self/ns/net");
        let before = link_names(ours.clone()).await;
        assert!(!before.contains(&"tap0_lazyvm".to_string()));

        let target = ParkedTap::new("02:00:00:00:00:08").unwrap();
        let target_path = PathBuf::from(format!("/proc/self/fd/{}", target.netns.as_raw_fd()));
        // The target holds a tap0_lazyvm already: the move is refused by name.
        let taken = ParkedTap::new("02:00:00:00:00:09").unwrap();
        let e = taken.move_to(target.netns.as_fd()).await.unwrap_err();
        assert!(e.to_string().contains("moving tap0_lazyvm"), "{e}");

        // Into an empty namespace it goes, and stays while its descriptor is open.
        let empty = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            File::open("/proc/thread-self/ns/net").unwrap()
        })
        .join()
        .unwrap();
        let empty_path = PathBuf::from(format!("/proc/self/fd/{}", empty.as_raw_fd()));
        let tap = parked.move_to(empty.as_fd()).await.unwrap();
        assert!(link_names(empty_path.clone())
            .await
            .contains(&"tap0_lazyvm".to_string()));
        drop(tap);
        assert!(!link_names(empty_path)
            .await
            .contains(&"tap0_lazyvm".to_string()));
        assert!(link_names(target_path)
            .await
            .contains(&"tap0_lazyvm".to_string()));
        assert_eq!(link_names(ours).await, before);
    }
}
