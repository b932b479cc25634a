//! The pod's network in the VM (the UpdateNetwork RPC), over rtnetlink in the agent's own
//! network namespace, which is the VM's and the one containers share.
//!
//! [`NetworkConfig::parse`] checks the whole request first; [`NetworkConfig::apply`] then
//! lists the links, resolves every MAC address and device name (still touching nothing),
//! and only then changes the system:
//! 1. `lo` is brought up (the kernel gives it 127.0.0.1/8, and ::1 when it has IPv6);
//! 2. each interface, found by its MAC address, is set down, renamed, gets its MTU and
//!    addresses (IPv6 ones without duplicate address detection: the pod's IPAM owns
//!    them) and is set up;
//! 3. the routes are added in order, then the permanent neighbours.
//!
//! Nothing is replaced: an address, route or neighbour that exists already is an error
//! (EEXIST, which the service reports as ALREADY_EXISTS).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use futures_util::TryStreamExt;
use lazyvm_proto::agent::UpdateNetworkRequest;
use rtnetlink::packet_route::address::AddressHeaderFlags;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// RT_SCOPE_LINK.
pub const SCOPE_LINK: u8 = 253;
/// RT_SCOPE_UNIVERSE.
pub const SCOPE_UNIVERSE: u8 = 0;
/// Largest MTU the agent accepts (ETH_MAX_MTU); the smallest is IPv4's 68.
const MAX_MTU: u32 = 65535;
const MIN_MTU: u32 = 68;
/// IFNAMSIZ - 1.
const MAX_IFNAME: usize = 15;

/// Errors of network configuration.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A field of the request is invalid (nothing was changed).
    #[error("invalid {what}: {msg}")]
    Invalid {
        /// Which field (`interfaces[0].mac`, `routes[1].destination`, ...).
        what: String,
        /// Why.
        msg: String,
    },
    /// No link has an interface's MAC address (nothing was changed).
    #[error("no network interface has MAC address {mac} (interfaces seen: {seen})")]
    MacNotFound {
        /// The MAC asked for.
        mac: String,
        /// The links seen, `name=mac`.
        seen: String,
    },
    /// A route or neighbour names a device that will not exist (nothing was changed).
    #[error("{what}: no network interface named {device} (interfaces: {seen})")]
    DeviceNotFound {
        /// Which route or neighbour.
        what: String,
        /// The device name.
        device: String,
        /// The names the links will have.
        seen: String,
    },
    /// The request cannot be carried out as asked (nothing was changed).
    #[error("{0}")]
    Conflict(String),
    /// Opening the netlink socket failed.
    #[error("opening a netlink socket: {0}")]
    Socket(std::io::Error),
    /// A netlink request failed.
    #[error("{what}: {}", describe(.source))]
    Netlink {
        /// What was being done (names the interface, route or neighbour).
        what: String,
        /// The netlink error.
        source: rtnetlink::Error,
    },
}

impl NetworkError {
    /// Whether the kernel refused because the thing exists already (EEXIST).
    pub fn already_exists(&self) -> bool {
        match self {
            NetworkError::Netlink {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => m.raw_code().abs() == libc::EEXIST,
            _ => false,
        }
    }
}

/// The kernel's error text for a netlink error (`File exists (os error 17)`), rtnetlink's
/// own text otherwise.
fn describe(e: &rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
        other => other.to_string(),
    }
}

fn invalid(what: impl Into<String>, msg: impl Into<String>) -> NetworkError {
    NetworkError::Invalid {
        what: what.into(),
        msg: msg.into(),
    }
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Parses `aa:bb:cc:dd:ee:ff` (hex digits in either case).
    pub fn parse(s: &str) -> Result<Mac, String> {
        let bad =
            || format!("{s:?} is not a MAC address (want six hex octets like aa:bb:cc:dd:ee:ff)");
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in out.iter_mut() {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// An IP address with a prefix length valid for its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
    pub prefix_len: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

fn max_prefix(addr: &IpAddr) -> u32 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn family(addr: &IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// Parses a textual IPv4 or IPv6 address.
pub fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not an IPv4 or IPv6 address"))
}

/// Checks a prefix length against the address family.
pub fn check_prefix(addr: IpAddr, prefix_len: u32) -> Result<Cidr, String> {
    let max = max_prefix(&addr);
    if prefix_len > max {
        return Err(format!(
            "prefix length {prefix_len} of {addr} is out of range 0..={max} for {}",
            family(&addr)
        ));
    }
    Ok(Cidr {
        addr,
        prefix_len: prefix_len as u8,
    })
}

/// Parses a destination in CIDR form (`10.88.0.0/16`, `fd00::/64`); the address must have
/// no bits set past the prefix.
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (a, l) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not in CIDR form (address/prefix length)"))?;
    let addr = parse_ip(a)?;
    if l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()) || l.len() > 3 {
        return Err(format!("{s:?}: prefix length {l:?} is not a number"));
    }
    let len: u32 = l
        .parse()
        .map_err(|_| format!("{s:?}: prefix length {l:?} is not a number"))?;
    let cidr = check_prefix(addr, len)?;
    let net = network_of(cidr);
    if net.addr != addr {
        return Err(format!(
            "{s:?} has bits set past its prefix length (the network is {net})"
        ));
    }
    Ok(cidr)
}

/// The network address of `c` (host bits cleared).
fn network_of(c: Cidr) -> Cidr {
    let addr = match c.addr {
        IpAddr::V4(a) => {
            let mask = if c.prefix_len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(c.prefix_len))
            };
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = if c.prefix_len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(c.prefix_len))
            };
            IpAddr::V6((u128::from(a) & mask).into())
        }
    };
    Cidr { addr, ..c }
}

/// Checks a Linux interface name: 1 to 15 bytes, not `.` or `..`, no `/`, `:`, whitespace
/// or control characters.
pub fn check_ifname(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_IFNAME {
        return Err(format!(
            "interface name {s:?} must have 1 to {MAX_IFNAME} bytes"
        ));
    }
    if s == "."
        || s == ".."
        || s.chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "interface name {s:?} is not valid (no '/', ':', spaces, '.' or '..')"
        ));
    }
    Ok(())
}

/// One interface to configure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    /// The MAC it ends up with; how it is found unless `device_mac` is set.
    pub mac: Mac,
    /// The MAC it has now, when that is not `mac` (a VM from the cache): how it is found.
    pub device_mac: Option<Mac>,
    /// Its new name; empty keeps the current one.
    pub name: String,
    /// Its MTU; 0 keeps the current one.
    pub mtu: u32,
    /// Addresses to add, in order.
    pub addresses: Vec<Cidr>,
}

impl InterfaceConfig {
    /// The MAC it is found by.
    pub fn lookup(&self) -> Mac {
        self.device_mac.unwrap_or(self.mac)
    }
}

/// One route to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// IPv6 (else IPv4).
    pub ipv6: bool,
    /// None: the default route.
    pub destination: Option<Cidr>,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Output device; empty lets the kernel pick it from the gateway.
    pub device: String,
    /// Preferred source address.
    pub source: Option<IpAddr>,
    /// RT_SCOPE_* (already derived when the request left it 0).
    pub scope: u8,
}

impl fmt::Display for RouteConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.destination {
            Some(d) => write!(f, "{d}")?,
            None => write!(f, "default ({})", if self.ipv6 { "IPv6" } else { "IPv4" })?,
        }
        if let Some(g) = &self.gateway {
            write!(f, " via {g}")?;
        }
        if !self.device.is_empty() {
            write!(f, " dev {}", self.device)?;
        }
        if let Some(s) = &self.source {
            write!(f, " src {s}")?;
        }
        write!(f, " scope {}", self.scope)
    }
}

/// One permanent neighbour to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighborConfig {
    /// Its IP address.
    pub address: IpAddr,
    /// Its link-layer address.
    pub mac: Mac,
    /// The device it is reached on.
    pub device: String,
}

/// A checked UpdateNetwork request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Interfaces, in request order.
    pub interfaces: Vec<InterfaceConfig>,
    /// Routes, in request order.
    pub routes: Vec<RouteConfig>,
    /// Permanent neighbours, in request order.
    pub neighbors: Vec<NeighborConfig>,
}

/// A link of the VM as rtnetlink lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Current name.
    pub name: String,
    /// Its MAC address, for links that have an Ethernet one.
    pub mac: Option<Mac>,
}

/// What [`NetworkConfig::plan`] resolved: the link of each interface (in request order)
/// and the index of each route's and neighbour's device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Index of `lo`.
    pub lo: u32,
    /// For each interface: its link's index and current name.
    pub interfaces: Vec<(u32, String)>,
    /// For each route: its output device's index (None: no device given).
    pub routes: Vec<Option<u32>>,
    /// For each neighbour: its device's index.
    pub neighbors: Vec<u32>,
}

impl NetworkConfig {
    /// Checks every field of the request (see the module doc); touches nothing.
    pub fn parse(req: &UpdateNetworkRequest) -> Result<NetworkConfig, NetworkError> {
        let mut cfg = NetworkConfig::default();
        for (i, itf) in req.interfaces.iter().enumerate() {
            let w = |f: &str| format!("interfaces[{i}].{f}");
            let mac = Mac::parse(&itf.mac).map_err(|m| invalid(w("mac"), m))?;
            if cfg.interfaces.iter().any(|o| o.mac == mac) {
                return Err(invalid(w("mac"), format!("{mac} is listed twice")));
            }
            let device_mac = match itf.device_mac.as_str() {
                "" => None,
                d => Some(Mac::parse(d).map_err(|m| invalid(w("device_mac"), m))?),
            };
            if let Some(d) = device_mac {
                if cfg.interfaces.iter().any(|o| o.lookup() == d) {
                    return Err(invalid(w("device_mac"), format!("{d} is listed twice")));
                }
            }
            if !itf.name.is_empty() {
                check_ifname(&itf.name).map_err(|m| invalid(w("name"), m))?;
                if cfg.interfaces.iter().any(|o| o.name == itf.name) {
                    return Err(invalid(w("name"), format!("{} is listed twice", itf.name)));
                }
            }
            if itf.mtu != 0 && !(MIN_MTU..=MAX_MTU).contains(&itf.mtu) {
                return Err(invalid(
                    w("mtu"),
                    format!(
                        "{} is out of range {MIN_MTU}..={MAX_MTU} (0 keeps the MTU)",
                        itf.mtu
                    ),
                ));
            }
            let mut addresses = Vec::new();
            for (j, a) in itf.addresses.iter().enumerate() {
                let w = || format!("interfaces[{i}].addresses[{j}]");
                let addr = parse_ip(&a.address).map_err(|m| invalid(w(), m))?;
                if addr.is_unspecified() || addr.is_multicast() {
                    return Err(invalid(
                        w(),
                        format!("{addr} cannot be an interface address"),
                    ));
                }
                addresses.push(check_prefix(addr, a.prefix_len).map_err(|m| invalid(w(), m))?);
            }
            cfg.interfaces.push(InterfaceConfig {
                mac,
                device_mac,
                name: itf.name.clone(),
                mtu: itf.mtu,
                addresses,
            });
        }
        for (i, r) in req.routes.iter().enumerate() {
            cfg.routes.push(parse_route(i, r)?);
        }
        for (i, n) in req.neighbors.iter().enumerate() {
            let w = |f: &str| format!("neighbors[{i}].{f}");
            let address = parse_ip(&n.address).map_err(|m| invalid(w("address"), m))?;
            if address.is_unspecified() || address.is_multicast() {
                return Err(invalid(
                    w("address"),
                    format!("{address} cannot be a neighbour"),
                ));
            }
            let mac = Mac::parse(&n.mac).map_err(|m| invalid(w("mac"), m))?;
            check_ifname(&n.device).map_err(|m| invalid(w("device"), m))?;
            cfg.neighbors.push(NeighborConfig {
                address,
                mac,
                device: n.device.clone(),
            });
        }
        Ok(cfg)
    }

    /// Resolves the request against the VM's links: each interface's link by MAC, each
    /// device name by the names the links will have after the renames. Touches nothing.
    pub fn plan(&self, links: &[Link]) -> Result<Plan, NetworkError> {
        let lo = links
            .iter()
            .find(|l| l.name == "lo")
            .map(|l| l.index)
            .ok_or_else(|| NetworkError::Conflict("the VM has no lo interface".to_owned()))?;
        let mut names: HashMap<u32, String> =
            links.iter().map(|l| (l.index, l.name.clone())).collect();
        let mut interfaces = Vec::new();
        for itf in &self.interfaces {
            let found: Vec<&Link> = links
                .iter()
                .filter(|l| l.mac == Some(itf.lookup()))
                .collect();
            let link = match found.as_slice() {
                [one] => *one,
                [] => {
                    let seen: Vec<String> = links
                        .iter()
                        .filter_map(|l| l.mac.map(|m| format!("{}={m}", l.name)))
                        .collect();
                    return Err(NetworkError::MacNotFound {
                        mac: itf.lookup().to_string(),
                        seen: if seen.is_empty() {
                            "none with a MAC address".to_owned()
                        } else {
                            seen.join(", ")
                        },
                    });
                }
                several => {
                    let n: Vec<&str> = several.iter().map(|l| l.name.as_str()).collect();
                    return Err(NetworkError::Conflict(format!(
                        "MAC address {} is shared by the interfaces {}",
                        itf.lookup(),
                        n.join(", ")
                    )));
                }
            };
            if !itf.name.is_empty() {
                names.insert(link.index, itf.name.clone());
            }
            interfaces.push((link.index, link.name.clone()));
        }
        // After the renames, every name must still be unique.
        let mut by_name: HashMap<&str, u32> = HashMap::new();
        for (index, name) in &names {
            if let Some(other) = by_name.insert(name.as_str(), *index) {
                return Err(NetworkError::Conflict(format!(
                    "two interfaces would be named {name} (indexes {other} and {index})"
                )));
            }
        }
        let seen = || {
            let mut v: Vec<&str> = by_name.keys().copied().collect();
            v.sort_unstable();
            v.join(", ")
        };
        let device = |what: String, device: &str| {
            by_name
                .get(device)
                .copied()
                .ok_or_else(|| NetworkError::DeviceNotFound {
                    what,
                    device: device.to_owned(),
                    seen: seen(),
                })
        };
        let mut routes = Vec::new();
        for (i, r) in self.routes.iter().enumerate() {
            routes.push(if r.device.is_empty() {
                None
            } else {
                Some(device(format!("routes[{i}] ({r})"), &r.device)?)
            });
        }
        let mut neighbors = Vec::new();
        for (i, n) in self.neighbors.iter().enumerate() {
            neighbors.push(device(
                format!("neighbors[{i}] ({} lladdr {})", n.address, n.mac),
                &n.device,
            )?);
        }
        Ok(Plan {
            lo,
            interfaces,
            routes,
            neighbors,
        })
    }

    /// Applies the configuration (see the module doc) over a new rtnetlink connection.
    pub async fn apply(&self) -> Result<(), NetworkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetworkError::Socket)?;
        let task = tokio::spawn(conn);
        let res = self.apply_with(&handle).await;
        task.abort();
        res
    }

    async fn apply_with(&self, handle: &Handle) -> Result<(), NetworkError> {
        let links = list_links(handle).await?;
        let plan = self.plan(&links)?;
        set_link(
            handle,
            "bringing lo up",
            LinkUnspec::new_with_index(plan.lo).up().build(),
        )
        .await?;
        for (itf, (index, old)) in self.interfaces.iter().zip(&plan.interfaces) {
            let label = if itf.name.is_empty() || itf.name == *old {
                format!("interface {old} ({})", itf.mac)
            } else {
                format!("interface {old} ({}, to be {})", itf.mac, itf.name)
            };
            let msg = LinkUnspec::new_with_index(*index).down().build();
            set_link(handle, &format!("{label}: setting it down"), msg).await?;
            if !itf.name.is_empty() && itf.name != *old {
                let msg = LinkUnspec::new_with_index(*index)
                    .name(itf.name.clone())
                    .build();
                set_link(handle, &format!("{label}: renaming it"), msg).await?;
            }
            if itf.device_mac.is_some_and(|d| d != itf.mac) {
                let msg = LinkUnspec::new_with_index(*index)
                    .address(itf.mac.0.to_vec())
                    .build();
                set_link(handle, &format!("{label}: setting MAC {}", itf.mac), msg).await?;
            }
            if itf.mtu != 0 {
                let msg = LinkUnspec::new_with_index(*index).mtu(itf.mtu).build();
                set_link(handle, &format!("{label}: setting MTU {}", itf.mtu), msg).await?;
            }
            for a in &itf.addresses {
                let mut req = handle.address().add(*index, a.addr, a.prefix_len);
                if a.addr.is_ipv6() {
                    req.message_mut().header.flags = AddressHeaderFlags::Nodad;
                }
                req.execute()
                    .await
                    .map_err(|source| NetworkError::Netlink {
                        what: format!("{label}: adding address {a}"),
                        source,
                    })?;
            }
            let msg = LinkUnspec::new_with_index(*index).up().build();
            set_link(handle, &format!("{label}: setting it up"), msg).await?;
            log::info!("network: {label} configured");
        }
        for (r, oif) in self.routes.iter().zip(&plan.routes) {
            let what = format!("adding route {r}");
            let msg = route_message(r, *oif).map_err(|m| invalid(what.clone(), m))?;
            handle
                .route()
                .add(msg)
                .execute()
                .await
                .map_err(|source| NetworkError::Netlink { what, source })?;
        }
        for (n, index) in self.neighbors.iter().zip(&plan.neighbors) {
            handle
                .neighbours()
                .add(*index, n.address)
                .link_layer_address(&n.mac.0)
                .execute()
                .await
                .map_err(|source| NetworkError::Netlink {
                    what: format!(
                        "adding neighbour {} lladdr {} dev {}",
                        n.address, n.mac, n.device
                    ),
                    source,
                })?;
        }
        log::info!(
            "network: {} interfaces, {} routes, {} neighbours configured",
            self.interfaces.len(),
            self.routes.len(),
            self.neighbors.len()
        );
        Ok(())
    }
}

fn parse_route(i: usize, r: &lazyvm_proto::agent::Route) -> Result<RouteConfig, NetworkError> {
    let w = |f: &str| format!("routes[{i}].{f}");
    let destination = if r.destination.is_empty() {
        None
    } else {
        Some(parse_cidr(&r.destination).map_err(|m| invalid(w("destination"), m))?)
    };
    let gateway = if r.gateway.is_empty() {
        None
    } else {
        Some(parse_ip(&r.gateway).map_err(|m| invalid(w("gateway"), m))?)
    };
    let source = if r.source.is_empty() {
        None
    } else {
        Some(parse_ip(&r.source).map_err(|m| invalid(w("source"), m))?)
    };
    // The family: the destination's, else the gateway's, else the source's, else IPv4.
    let (ipv6, from) = match (&destination, &gateway, &source) {
        (Some(d), ..) => (d.addr.is_ipv6(), "destination"),
        (None, Some(g), _) => (g.is_ipv6(), "gateway"),
        (None, None, Some(s)) => (s.is_ipv6(), "source"),
        (None, None, None) => (false, "default"),
    };
    for (field, addr) in [("gateway", gateway), ("source", source)] {
        if let Some(a) = addr {
            if a.is_ipv6() != ipv6 {
                return Err(invalid(
                    w(field),
                    format!(
                        "{a} is {} but the route's {from} is {}",
                        family(&a),
                        if ipv6 { "IPv6" } else { "IPv4" }
                    ),
                ));
            }
        }
    }
    if let Some(g) = gateway {
        if g.is_unspecified() || g.is_multicast() {
            return Err(invalid(w("gateway"), format!("{g} cannot be a gateway")));
        }
    }
    if r.device.is_empty() {
        if gateway.is_none() {
            return Err(invalid(
                w("device"),
                "a route without a gateway needs a device",
            ));
        }
    } else {
        check_ifname(&r.device).map_err(|m| invalid(w("device"), m))?;
    }
    let scope = u8::try_from(r.scope)
        .map_err(|_| invalid(w("scope"), format!("{} is out of range 0..=255", r.scope)))?;
    let scope = match (scope, gateway) {
        (0, None) => SCOPE_LINK,
        (0, Some(_)) => SCOPE_UNIVERSE,
        (s, _) => s,
    };
    Ok(RouteConfig {
        ipv6,
        destination,
        gateway,
        device: r.device.clone(),
        source,
        scope,
    })
}

/// The RTM_NEWROUTE message of a route (main table, protocol static, unicast).
fn route_message(
    r: &RouteConfig,
    oif: Option<u32>,
) -> Result<rtnetlink::packet_route::route::RouteMessage, String> {
    let mut b = RouteMessageBuilder::<IpAddr>::new();
    b.get_mut().header.address_family = if r.ipv6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    if let Some(d) = r.destination {
        b = b
            .destination_prefix(d.addr, d.prefix_len)
            .map_err(|e| e.to_string())?;
    }
    if let Some(g) = r.gateway {
        b = b.gateway(g).map_err(|e| e.to_string())?;
    }
    if let Some(s) = r.source {
        b = b.pref_source(s).map_err(|e| e.to_string())?;
    }
    if let Some(oif) = oif {
        b = b.output_interface(oif);
    }
    Ok(b.scope(RouteScope::from(r.scope)).build())
}

async fn set_link(handle: &Handle, what: &str, msg: LinkMessage) -> Result<(), NetworkError> {
    handle
        .link()
        .set(msg)
        .execute()
        .await
        .map_err(|source| NetworkError::Netlink {
            what: what.to_owned(),
            source,
        })
}

/// Every link of the VM with its name and Ethernet MAC address.
async fn list_links(handle: &Handle) -> Result<Vec<Link>, NetworkError> {
    let mut stream = handle.link().get().execute();
    let mut links = Vec::new();
    let err = |source| NetworkError::Netlink {
        what: "listing the network interfaces".to_owned(),
        source,
    };
    while let Some(msg) = stream.try_next().await.map_err(err)? {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mac: None,
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n,
                LinkAttribute::Address(a) => {
                    if let Ok(bytes) = <[u8; 6]>::try_from(a.as_slice()) {
                        if bytes != [0; 6] {
                            link.mac = Some(Mac(bytes));
                        }
                    }
                }
                _ => {}
            }
        }
        links.push(link);
    }
    Ok(links)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lazyvm_proto::agent::{Interface, IpAddress, Neighbor, Route};

    fn itf(mac: &str, name: &str, addrs: &[(&str, u32)]) -> Interface {
        Interface {
            mac: mac.into(),
            name: name.into(),
            addresses: addrs
                .iter()
                .map(|(a, l)| IpAddress {
                    address: (*a).into(),
                    prefix_len: *l,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn route(dst: &str, gw: &str, dev: &str) -> Route {
        Route {
            destination: dst.into(),
            gateway: gw.into(),
            device: dev.into(),
            ..Default::default()
        }
    }

    fn err_text(req: &UpdateNetworkRequest) -> String {
        NetworkConfig::parse(req).unwrap_err().to_string()
    }

    #[test]
    fn macs() {
        let m = Mac::parse("AA:bb:0c:DD:ee:0F").unwrap();
        assert_eq!(m.0, [0xaa, 0xbb, 0x0c, 0xdd, 0xee, 0x0f]);
        assert_eq!(m.to_string(), "aa:bb:0c:dd:ee:0f");
        assert_eq!(
            Mac::parse("aa:bb:cc:dd:ee:ff"),
            Mac::parse("AA:BB:CC:DD:EE:FF")
        );
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aa-bb-cc-dd-ee-ff",
            "a:bb:cc:dd:ee:ff",
            "aaa:bb:cc:dd:ee:f",
            "gg:bb:cc:dd:ee:ff",
            "+a:bb:cc:dd:ee:ff",
            "aa:bb:cc:dd:ee:ff:",
        ] {
            assert!(Mac::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cidrs_and_prefixes() {
        let c = parse_cidr("10.88.0.0/16").unwrap();
        assert_eq!((c.addr.to_string(), c.prefix_len), ("10.88.0.0".into(), 16));
        assert_eq!(parse_cidr("0.0.0.0/0").unwrap().prefix_len, 0);
        assert_eq!(parse_cidr("10.1.2.3/32").unwrap().prefix_len, 32);
        assert_eq!(parse_cidr("fd00::/64").unwrap().prefix_len, 64);
        assert_eq!(parse_cidr("::/0").unwrap().prefix_len, 0);
        assert_eq!(parse_cidr("fd00::1/128").unwrap().prefix_len, 128);
        let e = parse_cidr("10.88.0.5/16").unwrap_err();
        assert!(e.contains("10.88.0.0/16"), "{e}");
        let e = parse_cidr("fd00::1/64").unwrap_err();
        assert!(e.contains("fd00::/64"), "{e}");
        assert!(parse_cidr("1.2.3.4/0").is_err());
        assert!(parse_cidr("10.0.0.0/33").unwrap_err().contains("0..=32"));
        assert!(parse_cidr("fd00::/129").unwrap_err().contains("0..=128"));
        for bad in [
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0.0/x",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "x/8",
            "10.0.0.0/0008",
            "/8",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad:?}");
        }
        assert!(check_prefix("10.0.0.1".parse().unwrap(), 32).is_ok());
        assert!(check_prefix("10.0.0.1".parse().unwrap(), 33).is_err());
        assert!(check_prefix("fd00::1".parse().unwrap(), 128).is_ok());
        assert!(check_prefix("fd00::1".parse().unwrap(), 129).is_err());
        assert!(parse_ip("010.0.0.1").is_err());
        assert!(parse_ip("fe80::1%eth0").is_err());
    }

    #[test]
    fn interface_names() {
        assert!(check_ifname("eth0").is_ok());
        assert!(check_ifname("a23456789012345").is_ok());
        for bad in [
            "",
            "a234567890123456",
            ".",
            "..",
            "a/b",
            "a:1",
            "a b",
            "a\n",
        ] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_a_full_request() {
        let mut eth0 = itf(
            "02:42:AC:11:00:02",
            "eth0",
            &[("10.88.0.5", 16), ("fd00::5", 64)],
        );
        eth0.mtu = 1450;
        let req = UpdateNetworkRequest {
            interfaces: vec![eth0],
            routes: vec![
                route("", "10.88.0.1", "eth0"),
                route("10.89.0.0/16", "", "eth0"),
                route("", "fd00::1", ""),
                Route {
                    destination: "192.168.0.0/24".into(),
                    gateway: "10.88.0.1".into(),
                    device: "eth0".into(),
                    source: "10.88.0.5".into(),
                    scope: 200,
                    ..Default::default()
                },
            ],
            neighbors: vec![Neighbor {
                address: "10.88.0.1".into(),
                mac: "02:42:ac:11:00:01".into(),
                device: "eth0".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let c = NetworkConfig::parse(&req).unwrap();
        assert_eq!(c.interfaces[0].mac.0, [2, 0x42, 0xac, 0x11, 0, 2]);
        assert_eq!(c.interfaces[0].mtu, 1450);
        assert_eq!(c.interfaces[0].addresses.len(), 2);
        assert_eq!(c.interfaces[0].addresses[1].prefix_len, 64);
        let r = &c.routes;
        assert_eq!(
            (r[0].ipv6, r[0].destination, r[0].scope),
            (false, None, SCOPE_UNIVERSE)
        );
        assert_eq!(
            r[0].to_string(),
            "default (IPv4) via 10.88.0.1 dev eth0 scope 0"
        );
        assert_eq!((r[1].gateway, r[1].scope), (None, SCOPE_LINK));
        assert_eq!(r[1].to_string(), "10.89.0.0/16 dev eth0 scope 253");
        assert!(r[2].ipv6 && r[2].device.is_empty());
        assert_eq!(
            (r[3].scope, r[3].source),
            (200, Some("10.88.0.5".parse().unwrap()))
        );
        assert_eq!(c.neighbors[0].mac.to_string(), "02:42:ac:11:00:01");
        // A default route without a gateway is a device route of link scope.
        let req = UpdateNetworkRequest {
            routes: vec![route("", "", "eth0")],
            ..Default::default()
        };
        let c = NetworkConfig::parse(&req).unwrap();
        assert_eq!((c.routes[0].ipv6, c.routes[0].scope), (false, SCOPE_LINK));
        assert!(NetworkConfig::parse(&UpdateNetworkRequest::default()).is_ok());
    }

    #[test]
    fn rejects_bad_requests_precisely() {
        let one = |i: Interface| UpdateNetworkRequest {
            interfaces: vec![i],
            ..Default::default()
        };
        let e = err_text(&one(itf("zz:00:00:00:00:00", "eth0", &[])));
        assert!(e.starts_with("invalid interfaces[0].mac:"), "{e}");
        let e = err_text(&one(itf("02:00:00:00:00:01", "eth/0", &[])));
        assert!(e.starts_with("invalid interfaces[0].name:"), "{e}");
        let e = err_text(&one(itf("02:00:00:00:00:01", "eth0", &[("10.0.0.1", 33)])));
        assert!(
            e.contains("interfaces[0].addresses[0]") && e.contains("0..=32"),
            "{e}"
        );
        let e = err_text(&one(itf("02:00:00:00:00:01", "eth0", &[("fd00::1", 129)])));
        assert!(e.contains("0..=128"), "{e}");
        let e = err_text(&one(itf("02:00:00:00:00:01", "eth0", &[("10.0.0.1/8", 8)])));
        assert!(e.contains("not an IPv4 or IPv6 address"), "{e}");
        let e = err_text(&one(itf("02:00:00:00:00:01", "eth0", &[("0.0.0.0", 8)])));
        assert!(e.contains("cannot be an interface address"), "{e}");
        let mut bad_mtu = itf("02:00:00:00:00:01", "eth0", &[]);
        bad_mtu.mtu = 20;
        assert!(err_text(&one(bad_mtu)).contains("interfaces[0].mtu"));
        let twice = UpdateNetworkRequest {
            interfaces: vec![
                itf("02:00:00:00:00:01", "eth0", &[]),
                itf("02:00:00:00:00:01", "eth1", &[]),
            ],
            ..Default::default()
        };
        assert!(err_text(&twice).contains("interfaces[1].mac"));
        let same_name = UpdateNetworkRequest {
            interfaces: vec![
                itf("02:00:00:00:00:01", "eth0", &[]),
                itf("02:00:00:00:00:02", "eth0", &[]),
            ],
            ..Default::default()
        };
        assert!(err_text(&same_name).contains("interfaces[1].name"));

        let routes = |r: Route| UpdateNetworkRequest {
            routes: vec![route("", "10.0.0.1", "eth0"), r],
            ..Default::default()
        };
        let e = err_text(&routes(route("10.0.0.0", "", "eth0")));
        assert!(
            e.starts_with("invalid routes[1].destination:") && e.contains("CIDR"),
            "{e}"
        );
        let e = err_text(&routes(route("10.0.0.0/8", "fd00::1", "eth0")));
        assert!(
            e.starts_with("invalid routes[1].gateway:") && e.contains("IPv6"),
            "{e}"
        );
        let e = err_text(&routes(route("", "nope", "eth0")));
        assert!(e.starts_with("invalid routes[1].gateway:"), "{e}");
        let e = err_text(&routes(route("10.0.0.0/8", "", "")));
        assert!(e.starts_with("invalid routes[1].device:"), "{e}");
        let mut bad_src = route("10.0.0.0/8", "", "eth0");
        bad_src.source = "fd00::2".into();
        assert!(err_text(&routes(bad_src)).starts_with("invalid routes[1].source:"));
        let mut bad_scope = route("10.0.0.0/8", "", "eth0");
        bad_scope.scope = 256;
        assert!(err_text(&routes(bad_scope)).starts_with("invalid routes[1].scope:"));

        let neigh = |address: &str, mac: &str, device: &str| UpdateNetworkRequest {
            neighbors: vec![Neighbor {
                address: address.into(),
                mac: mac.into(),
                device: device.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(err_text(&neigh("10.0.0.300", "02:00:00:00:00:01", "eth0"))
            .starts_with("invalid neighbors[0].address:"));
        assert!(err_text(&neigh("10.0.0.3", "02:00:00:00:00", "eth0"))
            .starts_with("invalid neighbors[0].mac:"));
        assert!(err_text(&neigh("10.0.0.3", "02:00:00:00:00:01", ""))
            .starts_with("invalid neighbors[0].device:"));
    }

    fn links() -> Vec<Link> {
        vec![
            Link {
                index: 1,
                name: "lo".into(),
                mac: None,
            },
            Link {
                index: 2,
                name: "eth0".into(),
                mac: Some(Mac([2, 0, 0, 0, 0, 1])),
            },
            Link {
                index: 3,
                name: "eth1".into(),
                mac: Some(Mac([2, 0, 0, 0, 0, 2])),
            },
        ]
    }

    #[test]
    fn plans_renames_and_devices() {
        let req = UpdateNetworkRequest {
            interfaces: vec![itf("02:00:00:00:00:02", "pod0", &[])],
            routes: vec![route("", "10.0.0.1", "pod0"), route("", "10.0.0.1", "")],
            neighbors: vec![Neighbor {
                address: "10.0.0.1".into(),
                mac: "02:00:00:00:00:09".into(),
                device: "eth0".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let p = NetworkConfig::parse(&req).unwrap().plan(&links()).unwrap();
        assert_eq!(p.lo, 1);
        assert_eq!(p.interfaces, vec![(3, "eth1".to_owned())]);
        assert_eq!(p.routes, vec![Some(3), None]);
        assert_eq!(p.neighbors, vec![2]);

        // The old name is gone after the rename.
        let req = UpdateNetworkRequest {
            interfaces: vec![itf("02:00:00:00:00:02", "pod0", &[])],
            routes: vec![route("10.0.0.0/8", "", "eth1")],
            ..Default::default()
        };
        let e = NetworkConfig::parse(&req)
            .unwrap()
            .plan(&links())
            .unwrap_err();
        assert!(matches!(e, NetworkError::DeviceNotFound { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("routes[0] (10.0.0.0/8 dev eth1 scope 253)"),
            "{e}"
        );

        // A new name must not collide with a link that keeps its name.
        let req = UpdateNetworkRequest {
            interfaces: vec![itf("02:00:00:00:00:02", "eth0", &[])],
            ..Default::default()
        };
        let e = NetworkConfig::parse(&req)
            .unwrap()
            .plan(&links())
            .unwrap_err();
        assert!(matches!(e, NetworkError::Conflict(_)), "{e}");
    }

    #[test]
    fn a_nic_is_found_by_its_device_mac_and_given_the_pods() {
        let mut eth = itf("0a:58:0a:58:00:05", "pod0", &[("10.88.0.5", 16)]);
        eth.device_mac = "02:00:00:00:00:02".into();
        let req = UpdateNetworkRequest {
            interfaces: vec![eth.clone()],
            ..Default::default()
        };
        let c = NetworkConfig::parse(&req).unwrap();
        assert_eq!(c.interfaces[0].lookup().to_string(), "02:00:00:00:00:02");
        assert_eq!(c.interfaces[0].mac.to_string(), "0a:58:0a:58:00:05");
        let plan = c.plan(&links()).unwrap();
        // links(): lo, eth0 = ...:01, eth1 = ...:02.
        assert_eq!(plan.interfaces[0].1, "eth1");
        eth.device_mac = "02:00:00".into();
        let e = err_text(&UpdateNetworkRequest {
            interfaces: vec![eth],
            ..Default::default()
        });
        assert!(e.contains("interfaces[0].device_mac"), "{e}");
    }

    #[test]
    fn unknown_mac_lists_the_macs_seen() {
        let req = UpdateNetworkRequest {
            interfaces: vec![itf("02:00:00:00:00:AA", "eth0", &[])],
            ..Default::default()
        };
        let e = NetworkConfig::parse(&req)
            .unwrap()
            .plan(&links())
            .unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, NetworkError::MacNotFound { .. }));
        assert!(text.contains("02:00:00:00:00:aa"), "{text}");
        assert!(
            text.contains("eth0=02:00:00:00:00:01, eth1=02:00:00:00:00:02"),
            "{text}"
        );
        let only_lo = &links()[..1];
        let e = NetworkConfig::parse(&req)
            .unwrap()
            .plan(only_lo)
            .unwrap_err();
        assert!(e.to_string().contains("none with a MAC address"), "{e}");
    }

    #[test]
    fn route_messages() {
        let req = UpdateNetworkRequest {
            routes: vec![
                route("", "fd00::1", "eth0"),
                route("10.1.0.0/16", "", "eth0"),
            ],
            ..Default::default()
        };
        let c = NetworkConfig::parse(&req).unwrap();
        let m = route_message(&c.routes[0], Some(2)).unwrap();
        assert_eq!(m.header.address_family, AddressFamily::Inet6);
        assert_eq!(m.header.destination_prefix_length, 0);
        assert_eq!(m.header.scope, RouteScope::Universe);
        let m = route_message(&c.routes[1], Some(2)).unwrap();
        assert_eq!(m.header.address_family, AddressFamily::Inet);
        assert_eq!(m.header.destination_prefix_length, 16);
        assert_eq!(m.header.scope, RouteScope::Link);
    }

    #[test]
    fn eexist_is_already_exists() {
        let mut m = rtnetlink::packet_core::ErrorMessage::default();
        m.code = std::num::NonZeroI32::new(-libc::EEXIST);
        let e = NetworkError::Netlink {
            what: "adding route x".into(),
            source: rtnetlink::Error::NetlinkError(m),
        };
        assert!(e.already_exists());
        assert!(
            e.to_string().starts_with("adding route x: File exists"),
            "{e}"
        );
    }

    /// Runs `ip -j <args>` (in the calling thread's network namespace).
    fn ip_json(args: &[&str]) -> serde_json::Value {
        let out = std::process::Command::new("ip")
            .arg("-j")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ip {args:?}: {:?}", out);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    async fn make_veth(handle: &Handle, mac: Mac) -> Result<(), rtnetlink::Error> {
        let msg = rtnetlink::LinkVeth::new("va0", "vb0")
            .address(mac.0.to_vec())
            .build();
        handle.link().add(msg).execute().await?;
        let peer = list_links(handle)
            .await
            .unwrap()
            .into_iter()
            .find(|l| l.name == "vb0")
            .unwrap();
        let up = LinkUnspec::new_with_index(peer.index).up().build();
        handle.link().set(up).execute().await
    }

    /// Configures a veth in a network namespace of the test's own (needs root and veth;
    /// skipped without them), checks the result with `ip`, then that a second identical
    /// request fails with EEXIST and an unknown MAC with the MACs seen.
    #[test]
    fn applies_in_a_network_namespace_of_its_own() {
        let run = || -> Result<(), String> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("no network namespace: {e}"))?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let (conn, handle, _) = rtnetlink::new_connection().unwrap();
                let task = tokio::spawn(conn);
                let mac = Mac([0x02, 0x42, 0xac, 0x11, 0, 5]);
                let made = make_veth(&handle, mac).await;
                task.abort();
                made.map_err(|e| format!("no veth: {e}"))?;

                let mut eth0 = itf(
                    "02:42:AC:11:00:05",
                    "eth0",
                    &[("10.99.0.5", 24), ("fd99::5", 64)],
                );
                eth0.mtu = 1400;
                let mut via_src = route("192.168.7.0/24", "10.99.0.1", "eth0");
                via_src.source = "10.99.0.5".into();
                let neighbor = |address: &str| Neighbor {
                    address: address.into(),
                    mac: "02:42:ac:11:00:01".into(),
                    device: "eth0".into(),
                    ..Default::default()
                };
                let req = UpdateNetworkRequest {
                    interfaces: vec![eth0],
                    routes: vec![
                        route("", "10.99.0.1", "eth0"),
                        route("10.100.0.0/16", "", "eth0"),
                        route("", "fd99::1", "eth0"),
                        via_src,
                    ],
                    neighbors: vec![neighbor("10.99.0.1"), neighbor("fd99::1")],
                    ..Default::default()
                };
                let config = NetworkConfig::parse(&req).unwrap();
                config.apply().await.unwrap();

                let lo = &ip_json(&["link", "show", "dev", "lo"])[0];
                assert!(
                    lo["flags"].as_array().unwrap().contains(&"UP".into()),
                    "{lo}"
                );
                let link = &ip_json(&["addr", "show", "dev", "eth0"])[0];
                assert_eq!(link["mtu"], 1400, "{link}");
                assert_eq!(link["address"], "02:42:ac:11:00:05");
                assert!(
                    link["flags"].as_array().unwrap().contains(&"UP".into()),
                    "{link}"
                );
                let addrs: Vec<String> = link["addr_info"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
                    .collect();
                assert!(addrs.contains(&"10.99.0.5/24".to_owned()), "{addrs:?}");
                assert!(addrs.contains(&"fd99::5/64".to_owned()), "{addrs:?}");
                let v4 = ip_json(&["-4", "route", "show"]);
                let find = |routes: &serde_json::Value, dst: &str| {
                    routes
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|r| r["dst"] == dst)
                        .cloned()
                        .unwrap_or_else(|| panic!("no route to {dst} in {routes}"))
                };
                let d = find(&v4, "default");
                assert_eq!(
                    (&d["gateway"], &d["dev"]),
                    (&"10.99.0.1".into(), &"eth0".into())
                );
                let l = find(&v4, "10.100.0.0/16");
                assert_eq!((&l["scope"], &l["dev"]), (&"link".into(), &"eth0".into()));
                let s = find(&v4, "192.168.7.0/24");
                assert_eq!(s["prefsrc"], "10.99.0.5", "{s}");
                let v6 = ip_json(&["-6", "route", "show"]);
                assert_eq!(find(&v6, "default")["gateway"], "fd99::1");
                let neigh = ip_json(&["neigh", "show", "dev", "eth0"]);
                for dst in ["10.99.0.1", "fd99::1"] {
                    let n = find(&neigh, dst);
                    assert_eq!(n["lladdr"], "02:42:ac:11:00:01", "{n}");
                    assert_eq!(n["state"][0], "PERMANENT", "{n}");
                }

                // Nothing is replaced.
                let e = config.apply().await.unwrap_err();
                assert!(e.already_exists(), "{e}");
                assert!(e.to_string().contains("adding address 10.99.0.5/24"), "{e}");

                let req = UpdateNetworkRequest {
                    interfaces: vec![itf("02:00:00:00:00:99", "eth1", &[])],
                    ..Default::default()
                };
                let e = NetworkConfig::parse(&req)
                    .unwrap()
                    .apply()
                    .await
                    .unwrap_err();
                let text = e.to_string();
                assert!(matches!(e, NetworkError::MacNotFound { .. }), "{text}");
                assert!(text.contains("eth0=02:42:ac:11:00:05"), "{text}");
                Ok(())
            })
        };
        // unshare() moves only the calling thread: use a thread of the test's own.
        match std::thread::spawn(run).join().unwrap() {
            Ok(()) => {}
            Err(e) => eprintln!("skipping the netlink test: {e}"),
        }
    }
}
