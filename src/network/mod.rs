//! Pod networking, Kata's tc-redirect model.
//!
//! containerd's CRI creates the pod's network namespace and runs CNI in it before the
//! sandbox container exists, so the pod's veth and its addresses are there when the
//! sandbox starts. For each interface with an address, [`PodNetwork::setup`] creates a tap
//! device beside it (same MTU), adds an ingress qdisc to both and a u32 match-all filter
//! whose mirred action redirects every packet to the other one's egress. QEMU gets the
//! tap's file descriptor and gives the guest a virtio-net NIC with the veth's MAC; the
//! agent then gives that NIC the veth's addresses, MTU, routes and permanent neighbours
//! ([`GuestNetwork`]). The pod's network namespace belongs to containerd: teardown only
//! removes the taps and filters.
//!
//! `setns(2)` moves only the calling thread, and a netlink socket belongs to the namespace
//! it was opened in: all the work happens on a thread of its own that entered the pod's
//! namespace, never on a tokio worker.

mod parked;
pub mod tap;

pub use parked::ParkedTap;

use std::fmt;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use nix::sched::CloneFlags;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::packet_route::tc::TcHandle;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::hypervisor::NetDevice;

/// `ETH_P_ALL`, as tc wants it: in network byte order.
const ETH_P_ALL_BE: u16 = 0x0003_u16.to_be();
/// The parent handle of an ingress qdisc's filters (`ffff:`).
const INGRESS_PARENT: u32 = 0xffff_0000;

/// Why pod networking could not be set up or torn down.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The pod's network namespace could not be opened or entered.
    #[error("entering the pod network namespace {path:?}: {source}")]
    Netns {
        /// The namespace path from the spec.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The worker thread could not be run.
    #[error("the pod network thread failed: {0}")]
    Thread(String),
    /// A tap device could not be created.
    #[error("creating tap device {name}: {source}")]
    Tap {
        /// The tap's name.
        name: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A netlink request failed.
    #[error("{what}: {source}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: rtnetlink::Error,
    },
    /// The namespace has no interface with an address.
    #[error("the pod network namespace {0:?} has no interface with an IP address (did CNI run?)")]
    NoInterface(PathBuf),
    /// A VM booted ahead (the VM cache) has one NIC; the pod has another number of
    /// interfaces.
    #[error("the pod network namespace {path:?} has {found} interfaces with an address; a VM from the cache has one NIC")]
    NotOneInterface {
        /// The namespace.
        path: PathBuf,
        /// How many interfaces it has.
        found: usize,
    },
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Netlink { what, source }
}

/// An IP address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix_len: u8,
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// A NIC as the guest must configure it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// The pod-side name (e.g. `eth0`); the guest NIC gets it.
    pub name: String,
    /// The veth's MAC, `aa:bb:cc:dd:ee:ff`: the guest NIC has it too.
    pub mac: String,
    /// The veth's MTU.
    pub mtu: u32,
    /// The veth's addresses (IPv6 link-local ones left out: the guest makes its own).
    pub addresses: Vec<IpNet>,
    /// The MAC the guest NIC has when that is not `mac` (a VM booted ahead of its pod, by
    /// the VM cache): the guest finds the NIC by it and gives it `mac`.
    pub device_mac: Option<String>,
}

/// A route of the pod's main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination; `None` for a default route.
    pub destination: Option<IpNet>,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// The interface name.
    pub device: String,
    /// Preferred source address.
    pub source: Option<IpAddr>,
    /// RT_SCOPE_* value.
    pub scope: u8,
}

/// A permanent neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbor {
    /// The IP address.
    pub address: IpAddr,
    /// Its MAC.
    pub mac: String,
    /// The interface name.
    pub device: String,
}

/// What the guest must configure: the pod's interfaces, routes and neighbours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestNetwork {
    /// The interfaces.
    pub interfaces: Vec<Interface>,
    /// The routes, in the order to add them (directly connected ones first).
    pub routes: Vec<Route>,
    /// Permanent neighbours.
    pub neighbors: Vec<Neighbor>,
}

/// One veth ↔ tap pair.
#[derive(Debug)]
struct Pair {
    veth_index: u32,
    tap_name: String,
    tap: OwnedFd,
    mac: String,
}

/// A pod's network as the VM sees it: taps redirected to the pod's interfaces.
#[derive(Debug)]
pub struct PodNetwork {
    netns: PathBuf,
    pairs: Vec<Pair>,
    guest: GuestNetwork,
}

/// Runs `work` on a fresh thread that entered the network namespace at `netns`, inside a
/// current-thread tokio runtime of that thread.
async fn in_netns<T, F, Fut>(netns: &Path, work: F) -> Result<T, NetworkError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, NetworkError>>,
{
    let path = netns.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("lazyvm-netns".into())
        .spawn(move || {
            let result = (|| {
                let ns_err = |source| NetworkError::Netns {
                    path: path.clone(),
                    source,
                };
                let file = File::open(&path).map_err(ns_err)?;
                nix::sched::setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|e| ns_err(e.into()))?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| NetworkError::Thread(e.to_string()))?;
                rt.block_on(async {
                    let (conn, handle, _) = rtnetlink::new_connection()
                        .map_err(|e| NetworkError::Thread(format!("netlink socket: {e}")))?;
                    let conn = tokio::spawn(conn);
                    let r = work(handle).await;
                    conn.abort();
                    r
                })
            })();
            let _ = tx.send(result);
        })
        .map_err(|e| NetworkError::Thread(e.to_string()))?;
    rx.await
        .map_err(|_| NetworkError::Thread("the thread ended without an answer".into()))?
}

/// The name of the tap beside the pod's `i`-th interface.
fn tap_name(i: usize) -> String {
    format!("tap{i}_lazyvm")
}

fn mac_string(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn is_link_local(addr: &IpAddr) -> bool {
    match addr {
        IpAddr::V4(_) => false,
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A pod interface found by [`scan`].
struct Link {
    index: u32,
    iface: Interface,
}

/// Every link of the namespace.
async fn list_links(handle: &Handle) -> Result<Vec<LinkMessage>, NetworkError> {
    handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl("listing links"))
}

/// Lists the interfaces with an address (lo and our own taps left out).
async fn scan_links(handle: &Handle) -> Result<Vec<Link>, NetworkError> {
    let links = list_links(handle).await?;
    let mut out = Vec::new();
    for link in links {
        let mut name = String::new();
        let mut mac = Vec::new();
        let mut mtu = 0;
        for a in &link.attributes {
            match a {
                LinkAttribute::IfName(n) => name = n.clone(),
                LinkAttribute::Address(m) => mac = m.clone(),
                LinkAttribute::Mtu(m) => mtu = *m,
                _ => {}
            }
        }
        if link.header.flags.contains(LinkFlags::Loopback)
            || name.ends_with("_lazyvm")
            || mac.len() != 6
        {
            continue;
        }
        let addrs: Vec<_> = handle
            .address()
            .get()
            .set_link_index_filter(link.header.index)
            .execute()
            .try_collect()
            .await
            .map_err(nl(format!("listing the addresses of {name}")))?;
        let addresses: Vec<IpNet> = addrs
            .iter()
            .filter(|m| m.header.index == link.header.index)
            .filter_map(|m| {
                let addr = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })?;
                Some(IpNet {
                    addr,
                    prefix_len: m.header.prefix_len,
                })
            })
            .filter(|n| !is_link_local(&n.addr))
            .collect();
        if addresses.is_empty() {
            continue;
        }
        out.push(Link {
            index: link.header.index,
            iface: Interface {
                name,
                mac: mac_string(&mac),
                mtu,
                addresses,
                device_mac: None,
            },
        });
    }
    Ok(out)
}

/// Converts a route of the main table into a guest [`Route`], or `None` for routes the
/// guest makes itself or that leave through another interface.
fn guest_route(msg: &RouteMessage, links: &[Link]) -> Option<Route> {
    let h: &RouteHeader = &msg.header;
    if h.table != RouteHeader::RT_TABLE_MAIN
        || h.kind != RouteType::Unicast
        || h.protocol == RouteProtocol::Kernel
    {
        return None;
    }
    let mut destination = None;
    let mut gateway = None;
    let mut source = None;
    let mut oif = None;
    for a in &msg.attributes {
        match a {
            RouteAttribute::Destination(d) => destination = route_ip(d),
            RouteAttribute::Gateway(g) => gateway = route_ip(g),
            RouteAttribute::PrefSource(s) => source = route_ip(s),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let device = links
        .iter()
        .find(|l| Some(l.index) == oif)?
        .iface
        .name
        .clone();
    let destination = match destination {
        Some(addr) if h.destination_prefix_length > 0 || !addr.is_unspecified() => Some(IpNet {
            addr,
            prefix_len: h.destination_prefix_length,
        }),
        _ => None,
    };
    if destination.is_some_and(|d| is_link_local(&d.addr)) {
        return None;
    }
    Some(Route {
        destination,
        gateway,
        device,
        source,
        scope: u8::from(h.scope),
    })
}

async fn scan_routes(handle: &Handle, links: &[Link]) -> Result<Vec<Route>, NetworkError> {
    let mut routes = Vec::new();
    for (what, msg) in [
        ("IPv4", RouteMessageBuilder::<Ipv4Addr>::new().build()),
        ("IPv6", RouteMessageBuilder::<Ipv6Addr>::new().build()),
    ] {
        let list: Vec<RouteMessage> = handle
            .route()
            .get(msg)
            .execute()
            .try_collect()
            .await
            .map_err(nl(format!("listing {what} routes")))?;
        routes.extend(list.iter().filter_map(|m| guest_route(m, links)));
    }
    // Directly connected routes first: a gateway must be reachable when its route is added.
    routes.sort_by_key(|r| r.gateway.is_some());
    Ok(routes)
}

async fn scan_neighbors(handle: &Handle, links: &[Link]) -> Result<Vec<Neighbor>, NetworkError> {
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let list: Vec<_> = handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing neighbours"))?;
        for n in list {
            if n.header.state != NeighbourState::Permanent {
                continue;
            }
            let Some(link) = links.iter().find(|l| l.index == n.header.ifindex) else {
                continue;
            };
            let mut address = None;
            let mut mac = None;
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                        address = Some(IpAddr::V4(*v4))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                        address = Some(IpAddr::V6(*v6))
                    }
                    NeighbourAttribute::LinkLayerAddress(m) if m.len() == 6 => {
                        mac = Some(mac_string(m))
                    }
                    _ => {}
                }
            }
            if let (Some(address), Some(mac)) = (address, mac) {
                out.push(Neighbor {
                    address,
                    mac,
                    device: link.iface.name.clone(),
                });
            }
        }
    }
    Ok(out)
}

async fn link_index(handle: &Handle, name: &str) -> Result<u32, NetworkError> {
    let link = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
        .map_err(nl(format!("finding {name}")))?;
    link.map(|l| l.header.index)
        .ok_or_else(|| NetworkError::Netlink {
            what: format!("finding {name}"),
            source: rtnetlink::Error::RequestFailed,
        })
}

/// Adds the ingress qdisc and the redirect filter `from` → `to`.
async fn redirect(handle: &Handle, from: u32, to: u32, what: &str) -> Result<(), NetworkError> {
    handle
        .qdisc()
        .add(from as i32)
        .ingress()
        .execute()
        .await
        .map_err(nl(format!("adding the ingress qdisc of {what}")))?;
    handle
        .traffic_filter(from as i32)
        .add()
        .parent(INGRESS_PARENT)
        .protocol(ETH_P_ALL_BE)
        .redirect(to)
        .map_err(nl(format!("building the redirect filter of {what}")))?
        .execute()
        .await
        .map_err(nl(format!("adding the redirect filter of {what}")))
}

/// Removes the ingress qdisc (and with it the filters) of link `index`; a missing link
/// or qdisc is not an error.
async fn remove_ingress(handle: &Handle, index: u32) -> Result<(), NetworkError> {
    let mut req = handle.qdisc().del(index as i32);
    req.message_mut().header.parent = TcHandle::INGRESS;
    req.message_mut().header.handle = TcHandle::from(INGRESS_PARENT);
    match req.execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e))
            if matches!(
                e.raw_code().abs(),
                nix::libc::ENOENT | nix::libc::ENODEV | nix::libc::EINVAL
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(nl(format!("removing the ingress qdisc of link {index}"))(e)),
    }
}

/// Creates the taps and redirects for `links` (the first tap is `first`, already in the
/// namespace under its name, when given: a VM from the cache); on failure removes what it
/// made.
async fn connect(
    handle: &Handle,
    links: &[Link],
    mut first: Option<OwnedFd>,
) -> Result<Vec<Pair>, NetworkError> {
    let mut pairs: Vec<Pair> = Vec::new();
    let mut veths_done: Vec<u32> = Vec::new();
    let result = async {
        for (i, link) in links.iter().enumerate() {
            let name = tap_name(i);
            let tap = match first.take() {
                Some(tap) => tap,
                None => tap::create(&name)?,
            };
            let tap_index = link_index(handle, &name).await?;
            pairs.push(Pair {
                veth_index: link.index,
                tap_name: name.clone(),
                tap,
                mac: link.iface.mac.clone(),
            });
            handle
                .link()
                .set(
                    LinkUnspec::new_with_index(tap_index)
                        .mtu(link.iface.mtu)
                        .up()
                        .build(),
                )
                .execute()
                .await
                .map_err(nl(format!("setting {name} up with MTU {}", link.iface.mtu)))?;
            redirect(handle, tap_index, link.index, &name).await?;
            veths_done.push(link.index);
            redirect(handle, link.index, tap_index, &link.iface.name).await?;
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => Ok(pairs),
        Err(e) => {
            for index in veths_done {
                let _ = remove_ingress(handle, index).await;
            }
            // Closing a tap's only descriptor deletes it, qdisc and filter included.
            drop(pairs);
            Err(e)
        }
    }
}

impl PodNetwork {
    /// Connects the pod network namespace at `netns` to taps for the VM (see the module
    /// doc). On failure nothing is left in the namespace.
    pub async fn setup(netns: &Path) -> Result<PodNetwork, NetworkError> {
        PodNetwork::connect(netns, None).await
    }

    /// [`PodNetwork::setup`] for a VM booted ahead of its pod (the VM cache): its one NIC
    /// has MAC `device_mac` and its tap, `tap`, was moved into the pod's namespace as the
    /// first tap ([`ParkedTap::move_to`]). The pod must have one interface; the guest is
    /// told to give the NIC the interface's MAC.
    pub async fn adopt(
        netns: &Path,
        tap: OwnedFd,
        device_mac: &str,
    ) -> Result<PodNetwork, NetworkError> {
        let mut net = PodNetwork::connect(netns, Some(tap)).await?;
        for i in &mut net.guest.interfaces {
            i.device_mac = Some(device_mac.to_string());
        }
        Ok(net)
    }

    async fn connect(netns: &Path, tap: Option<OwnedFd>) -> Result<PodNetwork, NetworkError> {
        let path = netns.to_path_buf();
        let (pairs, guest) = in_netns(netns, move |handle| async move {
            let links = scan_links(&handle).await?;
            if links.is_empty() {
                return Err(NetworkError::NoInterface(path));
            }
            if tap.is_some() && links.len() != 1 {
                return Err(NetworkError::NotOneInterface {
                    path,
                    found: links.len(),
                });
            }
            let routes = scan_routes(&handle, &links).await?;
            let neighbors = scan_neighbors(&handle, &links).await?;
            let pairs = connect(&handle, &links, tap).await?;
            let guest = GuestNetwork {
                interfaces: links.into_iter().map(|l| l.iface).collect(),
                routes,
                neighbors,
            };
            Ok((pairs, guest))
        })
        .await?;
        for (p, i) in pairs.iter().zip(&guest.interfaces) {
            log::info!(
                "pod network: {} ({}, MTU {}, {}) <-> {}",
                i.name,
                i.mac,
                i.mtu,
                i.addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
                p.tap_name
            );
        }
        Ok(PodNetwork {
            netns: netns.to_path_buf(),
            pairs,
            guest,
        })
    }

    /// What the guest must configure.
    pub fn guest(&self) -> &GuestNetwork {
        &self.guest
    }

    /// The NICs to give QEMU: each tap's file descriptor with the veth's MAC.
    pub fn nics(&self) -> Vec<NetDevice> {
        self.pairs
            .iter()
            .map(|p| NetDevice {
                fd: p.tap.as_raw_fd(),
                mac: p.mac.clone(),
            })
            .collect()
    }

    /// Removes the redirects and the taps (QEMU must have exited, or the taps live on
    /// until it does). A namespace that is gone already (containerd removed it) leaves
    /// nothing to do.
    pub async fn teardown(self) -> Result<(), NetworkError> {
        let PodNetwork { netns, pairs, .. } = self;
        let veths: Vec<u32> = pairs.iter().map(|p| p.veth_index).collect();
        drop(pairs);
        if !netns.exists() {
            return Ok(());
        }
        let r = in_netns(&netns, move |handle| async move {
            for index in veths {
                remove_ingress(&handle, index).await?;
            }
            Ok(())
        })
        .await;
        match r {
            Err(NetworkError::Netns { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(())
            }
            other => other,
        }
    }
}

/// Lists the taps, ingress qdiscs and filters that lazyvm made in the namespace at
/// `netns`: the names of `*_lazyvm` links plus the indices of links with an ingress
/// qdisc. For tests and diagnostics.
pub async fn leftovers(netns: &Path) -> Result<Vec<String>, NetworkError> {
    in_netns(netns, |handle| async move {
        let mut found = Vec::new();
        let links = list_links(&handle).await?;
        for l in &links {
            for a in &l.attributes {
                if let LinkAttribute::IfName(n) = a {
                    if n.ends_with("_lazyvm") {
                        found.push(format!("link {n}"));
                    }
                }
            }
        }
        let qdiscs: Vec<_> = handle
            .qdisc()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing qdiscs"))?;
        for q in qdiscs {
            if q.header.parent == TcHandle::INGRESS {
                found.push(format!("ingress qdisc on link {}", q.header.index));
            }
        }
        Ok(found)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::route::RouteScope;

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            iface: Interface {
                name: name.into(),
                mac: "02:00:00:00:00:01".into(),
                mtu: 1500,
                addresses: vec![],
                device_mac: None,
            },
        }
    }

    fn route(dest: Option<(IpAddr, u8)>, gw: Option<IpAddr>, oif: u32) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.kind = RouteType::Unicast;
        m.header.protocol = RouteProtocol::Boot;
        if let Some((d, len)) = dest {
            m.header.destination_prefix_length = len;
            m.attributes.push(RouteAttribute::Destination(d.into()));
        }
        if let Some(g) = gw {
            m.attributes.push(RouteAttribute::Gateway(g.into()));
        }
        m.attributes.push(RouteAttribute::Oif(oif));
        m
    }

    #[test]
    fn routes_for_the_guest() {
        let links = [link(3, "eth0")];
        let gw: IpAddr = "10.88.0.1".parse().unwrap();
        let r = guest_route(&route(None, Some(gw), 3), &links).unwrap();
        assert_eq!(r.destination, None);
        assert_eq!(r.gateway, Some(gw));
        assert_eq!(r.device, "eth0");
        let net: IpAddr = "10.99.0.0".parse().unwrap();
        let r = guest_route(&route(Some((net, 16)), None, 3), &links).unwrap();
        assert_eq!(r.destination.unwrap().to_string(), "10.99.0.0/16");
        // Another interface's route, a kernel route, a local-table route: not ours.
        assert!(guest_route(&route(None, Some(gw), 4), &links).is_none());
        let mut k = route(Some((net, 16)), None, 3);
        k.header.protocol = RouteProtocol::Kernel;
        assert!(guest_route(&k, &links).is_none());
        let mut local = route(Some((net, 16)), None, 3);
        local.header.table = 255;
        assert!(guest_route(&local, &links).is_none());
        let mut ll = route(Some(("fe80::".parse().unwrap(), 64)), None, 3);
        ll.header.scope = RouteScope::Link;
        assert!(guest_route(&ll, &links).is_none());
    }

    #[test]
    fn helpers() {
        assert_eq!(mac_string(&[2, 0, 0xab, 1, 2, 3]), "02:00:ab:01:02:03");
        assert!(is_link_local(&"fe80::1".parse().unwrap()));
        assert!(!is_link_local(&"fd00::1".parse().unwrap()));
        assert!(!is_link_local(&"169.254.1.1".parse().unwrap()));
        assert_eq!(tap_name(0), "tap0_lazyvm");
        assert!(tap::valid_ifname(&tap_name(99)));
        assert_eq!(ETH_P_ALL_BE.to_ne_bytes(), [0, 3]);
    }
}
