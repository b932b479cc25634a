//! Pod networking on the host, against the real kernel: a network namespace made here
//! with a veth as CNI's bridge plugin leaves it (address, MTU, routes), connected by
//! `PodNetwork::setup` to a tap, then torn down. Needs root.

use std::path::{Path, PathBuf};
use std::process::Command;

use lazyvm::network::{self, PodNetwork};

/// A network namespace of this test, removed (with its links) when dropped.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("lzn{}{tag}", std::process::id());
        ip(&["netns", "add", &name]);
        Netns { name }
    }

    fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    /// Runs `ip ARGS` in this namespace.
    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tc(ns: &Netns, args: &[&str]) -> String {
    let mut all = vec!["-n", ns.name.as_str()];
    all.extend_from_slice(args);
    let out = Command::new("tc").args(&all).output().expect("running tc");
    assert!(out.status.success(), "tc {all:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A "pod" namespace with eth0 (a veth whose peer sits in a "node" namespace), as CNI
/// leaves it: 10.77.0.5/24, MTU 1400, a default route via 10.77.0.1, an extra route and a
/// permanent neighbour.
fn pod_netns() -> (Netns, Netns) {
    let node = Netns::new("n");
    let pod = Netns::new("p");
    node.ip(&[
        "link", "add", "veth-pod", "mtu", "1400", "type", "veth", "peer", "name", "eth0", "netns",
        &pod.name,
    ]);
    node.ip(&["addr", "add", "10.77.0.1/24", "dev", "veth-pod"]);
    node.ip(&["link", "set", "veth-pod", "up"]);
    pod.ip(&[
        "link",
        "set",
        "eth0",
        "address",
        "02:42:0a:4d:00:05",
        "mtu",
        "1400",
    ]);
    pod.ip(&["addr", "add", "10.77.0.5/24", "dev", "eth0"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    pod.ip(&["link", "set", "lo", "up"]);
    pod.ip(&["route", "add", "default", "via", "10.77.0.1", "dev", "eth0"]);
    pod.ip(&[
        "route",
        "add",
        "10.99.0.0/16",
        "via",
        "10.77.0.1",
        "dev",
        "eth0",
    ]);
    pod.ip(&[
        "neigh",
        "add",
        "10.77.0.9",
        "lladdr",
        "02:00:00:00:00:09",
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    (node, pod)
}

#[tokio::test]
async fn taps_are_redirected_to_the_pod_interface_and_removed() {
    let (_node, pod) = pod_netns();
    let net = PodNetwork::setup(&pod.path()).await.unwrap();

    let g = net.guest();
    assert_eq!(g.interfaces.len(), 1, "{g:?}");
    let eth0 = &g.interfaces[0];
    assert_eq!(eth0.name, "eth0");
    assert_eq!(eth0.mac, "02:42:0a:4d:00:05");
    assert_eq!(eth0.mtu, 1400);
    assert_eq!(
        eth0.addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["10.77.0.5/24"]
    );
    let routes: Vec<String> = g
        .routes
        .iter()
        .map(|r| {
            format!(
                "{} via {} dev {}",
                r.destination
                    .map(|d| d.to_string())
                    .unwrap_or("default".into()),
                r.gateway.map(|g| g.to_string()).unwrap_or_default(),
                r.device
            )
        })
        .collect();
    assert!(
        routes.contains(&"default via 10.77.0.1 dev eth0".to_string()),
        "{routes:?}"
    );
    assert!(
        routes.contains(&"10.99.0.0/16 via 10.77.0.1 dev eth0".to_string()),
        "{routes:?}"
    );
    assert_eq!(g.neighbors.len(), 1, "{:?}", g.neighbors);
    assert_eq!(g.neighbors[0].mac, "02:00:00:00:00:09");
    assert_eq!(net.nics().len(), 1);
    assert_eq!(net.nics()[0].mac, "02:42:0a:4d:00:05");

    // The tap: up, the veth's MTU, and both directions redirected.
    let tap = pod.ip(&["link", "show", "tap0_lazyvm"]);
    assert!(tap.contains("mtu 1400"), "{tap}");
    assert!(tap.contains(",UP") || tap.contains("<UP"), "{tap}");
    for dev in ["eth0", "tap0_lazyvm"] {
        let filters = tc(&pod, &["filter", "show", "dev", dev, "ingress"]);
        let other = if dev == "eth0" { "tap0_lazyvm" } else { "eth0" };
        assert!(
            filters.contains("mirred") && filters.contains(&format!("to device {other}")),
            "{dev}: {filters}"
        );
    }
    let left = network::leftovers(&pod.path()).await.unwrap();
    assert_eq!(left.len(), 3, "{left:?}");

    net.teardown().await.unwrap();
    let left = network::leftovers(&pod.path()).await.unwrap();
    assert!(left.is_empty(), "left behind: {left:?}");
    // The pod's own configuration is untouched.
    assert!(pod.ip(&["addr", "show", "eth0"]).contains("10.77.0.5/24"));
}

#[tokio::test]
async fn a_namespace_without_addresses_or_a_missing_one_is_an_error() {
    let empty = Netns::new("e");
    let e = PodNetwork::setup(&empty.path()).await.unwrap_err();
    assert!(
        e.to_string().contains("no interface with an IP address"),
        "{e}"
    );
    assert!(network::leftovers(&empty.path()).await.unwrap().is_empty());
    let e = PodNetwork::setup(Path::new("/var/run/netns/lazyvm-no-such-ns"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("lazyvm-no-such-ns"), "{e}");
}
