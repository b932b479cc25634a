//! Kubernetes pods through containerd 1.6's CRI, driven as crictl drives it (CRI v1 over
//! gRPC with `k8s-cri`): RunPodSandbox → CreateContainer/StartContainer → ExecSync →
//! ContainerStatus and the CRI log file → StopContainer/RemoveContainer →
//! StopPodSandbox/RemovePodSandbox, with a CNI bridge network. Each test runs once with
//! the `runc` handler (the baseline that proves the harness) and once with `lazyvm`.
//!
//! Everything runs in a network namespace the test creates (see `common/cri.rs`). Needs
//! root; the lazyvm tests need the guest image (`make guest`). `LAZYVM_CRI_DEBUG=1` runs
//! containerd at debug level; `LAZYVM_CRI_KEEP=1` keeps the test's directory.

mod common;
#[path = "common/cri.rs"]
mod cri;
#[path = "common/vmcache.rs"]
mod vmcache;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_cri::v1::{Capability, ContainerState, NamespaceMode, PodSandboxState};

use common::{guest_dir, processes_mentioning};
use cri::*;

/// The bound on a whole test.
const TEST_SECS: u64 = 900;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The mountinfo lines naming `dir` or a path under it (in the test's mount namespace, which is
/// the host's).
fn mounted_under(dir: &Path) -> Vec<String> {
    let d = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&d))
        .map(str::to_string)
        .collect()
}

/// What must hold once a pod is removed: its netns, processes (shim, and for lazyvm QEMU,
/// nydusd, vhost-device-vsock), sandbox directory and mounts are gone, and only the veths
/// of the `others` pods still running are left on the bridge.
async fn assert_pod_gone(env: &CriEnv, pod: &Pod, netns: Option<&Path>, others: usize) {
    if let Some(ns) = netns {
        assert!(
            eventually(10, || !ns.exists()).await,
            "pod netns {} left behind",
            ns.display()
        );
    }
    assert!(
        eventually(10, || env.shim_pids(pod).is_empty()).await,
        "shim of {} left: {:?}",
        pod.id,
        env.shim_pids(pod)
    );
    if pod.handler == LAZYVM {
        let dir = pod.sandbox_dir();
        assert!(
            eventually(10, || processes_mentioning(&dir).is_empty()).await,
            "processes of {} left: {:?}",
            dir.display(),
            processes_mentioning(&dir)
                .into_iter()
                .map(|p| (p, comm(p)))
                .collect::<Vec<_>>()
        );
        assert!(!dir.exists(), "{} left behind", dir.display());
        let m = mounted_under(&dir);
        assert!(m.is_empty(), "mounts left under {}: {m:?}", dir.display());
    }
    assert!(
        eventually(10, || env.bridge_ports().len() == others).await,
        "ports left on {} (pods still running: {others}): {:?}",
        env.bridge,
        env.bridge_ports()
    );
}

/// Checks that apply right after RunPodSandbox: ready, the handler asked for, an IP from
/// the test subnet, and for lazyvm exactly one QEMU.
async fn check_new_pod(env: &CriEnv, pod: &Pod) -> String {
    let st = env.pod_status(pod).await.status.unwrap();
    assert_eq!(
        PodSandboxState::try_from(st.state),
        Ok(PodSandboxState::SandboxReady)
    );
    assert_eq!(st.runtime_handler, pod.handler);
    let ip = env.pod_ip(pod).await;
    assert!(
        ip.starts_with(&format!("{}.", env.subnet_prefix)),
        "pod IP {ip} not in {}",
        env.subnet
    );
    if pod.handler == LAZYVM {
        let qemu = pod.qemu_pids();
        assert_eq!(qemu.len(), 1, "QEMU processes of pod {}: {qemu:?}", pod.id);
    }
    ip
}

async fn stop_and_remove(env: &CriEnv, pod: &Pod, containers: &[&str]) {
    for cid in containers {
        let t = Instant::now();
        env.stop_container(cid, 2).await;
        eprintln!("StopContainer {cid}: {:?}", t.elapsed());
        assert_eq!(
            env.container_state(cid).await,
            ContainerState::ContainerExited
        );
        env.remove_container(cid).await;
    }
    let t = Instant::now();
    env.stop_pod(pod).await;
    eprintln!("StopPodSandbox: {:?}", t.elapsed());
    let st = env.pod_status(pod).await.status.unwrap();
    assert_eq!(
        PodSandboxState::try_from(st.state),
        Ok(PodSandboxState::SandboxNotready)
    );
    let t = Instant::now();
    env.remove_pod(pod).await;
    eprintln!("RemovePodSandbox: {:?}", t.elapsed());
}

const HTTPD: &[&str] = &["httpd", "-f", "-p", "8080", "-h", "/www"];

fn wget(ip: &str) -> Vec<String> {
    ["wget", "-q", "-O", "-"]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("http://{ip}:{WEB_PORT}/")])
        .collect()
}

/// One pod with a web server (A) and a sleeper (B), the whole crictl flow.
async fn pod_lifecycle(handler: &str) {
    let t0 = Instant::now();
    let env = CriEnv::start().await;
    eprintln!("[{handler}] environment ready: {:?}", t0.elapsed());

    let t = Instant::now();
    let pod = env.run_pod("web", handler).await;
    eprintln!("[{handler}] RunPodSandbox: {:?}", t.elapsed());
    let ip = check_new_pod(&env, &pod).await;
    let netns = env.pod_netns(&pod).await;
    let netns = netns.expect("the sandbox spec names the pod's netns");
    assert!(netns.exists(), "{}", netns.display());
    // The bridge is the test's own, in the test's netns only.
    assert!(env.netns_has_link(&env.bridge));
    let on_host = std::process::Command::new("ip")
        .args(["link", "show", &env.bridge])
        .output()
        .unwrap();
    assert!(!on_host.status.success(), "{} is on the host", env.bridge);
    assert_eq!(env.bridge_ports().len(), 1, "one veth for the pod");

    let t = Instant::now();
    let server = env.create_container(&pod, "server", HTTPD).await;
    let client = env
        .create_container(
            &pod,
            "client",
            &["sh", "-c", "echo client-started; exec sleep 2147483647"],
        )
        .await;
    env.start_container(&server).await;
    env.start_container(&client).await;
    eprintln!("[{handler}] Create+StartContainer x2: {:?}", t.elapsed());
    for cid in [&server, &client] {
        assert_eq!(
            env.container_state(cid).await,
            ContainerState::ContainerRunning
        );
    }
    let shims = env.shim_pids(&pod);
    assert_eq!(shims.len(), 1, "one shim serves the pod: {shims:?}");
    if handler == LAZYVM {
        assert_eq!(pod.qemu_pids().len(), 1, "containers share the pod's VM");
    }

    // Hostname and DNS as the pod config asked.
    let t = Instant::now();
    let hostname = env.exec_ok(&client, &["hostname"]).await;
    eprintln!("[{handler}] first ExecSync: {:?}", t.elapsed());
    assert_eq!(hostname.trim(), "web");
    let resolv = env.exec_ok(&client, &["cat", "/etc/resolv.conf"]).await;
    for want in [
        format!("nameserver {}.53", env.subnet_prefix),
        "search lzcri.example svc.lzcri.example".to_string(),
        "options ndots:2".to_string(),
    ] {
        assert!(
            resolv.contains(&want),
            "{want:?} not in resolv.conf:\n{resolv}"
        );
    }
    let envs = env.exec_ok(&client, &["env"]).await;
    assert!(envs.contains("LZCRI_CONTAINER=client"), "{envs}");

    // The pod IP is on an interface inside the pod (the guest's NIC for lazyvm).
    let addrs = env.exec_ok(&client, &["ip", "addr"]).await;
    assert!(
        addrs.contains(&format!("inet {ip}/")),
        "pod IP {ip} not in the pod's `ip addr`:\n{addrs}"
    );

    // A's server: from B over the pod's loopback, and from the test netns at the pod IP.
    let local = env
        .exec_until_ok(
            &client,
            &["wget", "-q", "-O", "-", "http://127.0.0.1:8080/"],
            30,
        )
        .await;
    assert!(local.contains(WEB_MARKER), "{local}");
    let remote = env
        .http_get_from_netns(&ip, WEB_PORT, 30)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        remote.starts_with("HTTP/1.") && remote.contains(WEB_MARKER),
        "{remote}"
    );

    // ContainerStatus and the CRI log file.
    let st = env.container_status(&client).await;
    let log_path = pod.log_dir.join("client.log");
    assert_eq!(Path::new(&st.log_path), log_path);
    assert_eq!(st.image.map(|i| i.image).as_deref(), Some(APP_IMAGE));
    assert!(st.started_at > 0);
    assert!(
        eventually(10, || cri_log_lines(&log_path, "stdout")
            .iter()
            .any(|l| l == "client-started"))
        .await,
        "client-started not in {}: {:?}",
        log_path.display(),
        std::fs::read_to_string(&log_path)
    );
    if handler == LAZYVM {
        assert_eq!(pod.qemu_pids().len(), 1);
    }

    stop_and_remove(&env, &pod, &[&server, &client]).await;
    assert_pod_gone(&env, &pod, Some(&netns), 0).await;
    eprintln!("[{handler}] whole test: {:?}", t0.elapsed());
}

/// Two pods at once: separate VMs (lazyvm) and IPs, reaching each other over the bridge.
async fn two_pods(handler: &str) {
    let t0 = Instant::now();
    let env = CriEnv::start().await;
    let t = Instant::now();
    let p1 = env.run_pod("pod-one", handler).await;
    let p2 = env.run_pod("pod-two", handler).await;
    eprintln!("[{handler}] RunPodSandbox x2: {:?}", t.elapsed());
    let ip1 = check_new_pod(&env, &p1).await;
    let ip2 = check_new_pod(&env, &p2).await;
    assert_ne!(ip1, ip2);
    if handler == LAZYVM {
        assert_ne!(p1.qemu_pids(), p2.qemu_pids(), "one VM per pod");
    }
    assert_eq!(env.bridge_ports().len(), 2);
    let n1 = env.pod_netns(&p1).await;
    let n2 = env.pod_netns(&p2).await;
    assert_ne!(n1, n2);

    let s1 = env.create_container(&p1, "server", HTTPD).await;
    let s2 = env.create_container(&p2, "server", HTTPD).await;
    env.start_container(&s1).await;
    env.start_container(&s2).await;
    for (from, to_ip) in [(&s2, &ip1), (&s1, &ip2)] {
        let cmd = wget(to_ip);
        let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let got = env.exec_until_ok(from, &cmd, 30).await;
        assert!(got.contains(WEB_MARKER), "{got}");
    }
    for ip in [&ip1, &ip2] {
        let got = env
            .http_get_from_netns(ip, WEB_PORT, 30)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(got.contains(WEB_MARKER), "{got}");
    }
    for (pod, cid) in [(&p1, &s1), (&p2, &s2)] {
        let hostname = env.exec_ok(cid, &["hostname"]).await;
        assert_eq!(hostname.trim(), pod.config.hostname);
    }

    stop_and_remove(&env, &p1, &[&s1]).await;
    assert_pod_gone(&env, &p1, n1.as_deref(), 1).await;
    // The other pod is untouched by the first one's removal.
    let got = env
        .http_get_from_netns(&ip2, WEB_PORT, 10)
        .unwrap_or_else(|e| panic!("pod two after pod one's removal: {e}"));
    assert!(got.contains(WEB_MARKER));
    stop_and_remove(&env, &p2, &[&s2]).await;
    assert_pod_gone(&env, &p2, n2.as_deref(), 0).await;
    eprintln!("[{handler}] whole test: {:?}", t0.elapsed());
}

/// Resident memory (kB) and open fds of a host process.
fn rss_and_fds(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    (vm_rss_kb(&status), count_fds(pid))
}

fn vm_rss_kb(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"))
}

fn count_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The largest mapping of process `pid` in /proc/<pid>/smaps: (size kB, Rss kB, what).
fn largest_mapping(pid: u32) -> Option<(u64, u64, String)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut best: Option<(u64, u64, String)> = None;
    let mut cur: Option<(u64, u64, String)> = None;
    let kb = |l: &str| -> u64 {
        l.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            if let Some(c) = cur.take() {
                if best.as_ref().is_none_or(|b| c.1 > b.1) {
                    best = Some(c);
                }
            }
            let what = line
                .split_whitespace()
                .nth(5)
                .unwrap_or("[anon]")
                .to_string();
            cur = Some((0, 0, what));
        } else if let Some(c) = cur.as_mut() {
            if line.starts_with("Size:") {
                c.0 = kb(line);
            } else if line.starts_with("Rss:") {
                c.1 = kb(line);
            }
        }
    }
    if let Some(c) = cur {
        if best.as_ref().is_none_or(|b| c.1 > b.1) {
            best = Some(c);
        }
    }
    best
}

/// The node's PID 1 seen from a container of a hostPID pod (runc): `(VmRSS kB, open
/// fds)`. Read, never asserted on: it proves the probe path of the runc baseline.
async fn node_init_rss_and_fds(env: &CriEnv, probe: &str) -> (u64, usize) {
    let out = env
        .exec_ok(
            probe,
            &[
                "sh",
                "-c",
                "cat /proc/1/status; echo fds=$(ls /proc/1/fd | wc -l)",
            ],
        )
        .await;
    let fds = out
        .lines()
        .find_map(|l| l.strip_prefix("fds="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no fd count in {out}"));
    (vm_rss_kb(&out), fds)
}

const EXECS: usize = 200;
/// How much an exec loop may grow a process: open fds and resident memory.
const FD_SLACK: i64 = 2;
const RSS_SLACK_KB: i64 = 4096;

/// 200 ExecSync calls leave the shim's and (lazyvm) the guest agent's memory, open fds
/// and process table flat.
async fn exec_sync_loop(handler: &str) {
    let t0 = Instant::now();
    let env = CriEnv::start().await;
    let mut config = env.pod_config("execs");
    if handler != LAZYVM {
        // runc: a hostPID pod, whose probe container reads the node's PID 1 (lazyvm
        // refuses hostPID pods, see `lazyvm_refuses_host_namespaces`; its agent answers
        // for itself instead).
        if let Some(sc) = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
        {
            sc.namespace_options = Some(namespaces(NamespaceMode::Node));
        }
    }
    let pod = env
        .run_pod_with(config, handler)
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox ({handler}): {e}"));
    check_new_pod(&env, &pod).await;
    let sleeper = env
        .create_container(&pod, "sleeper", &["sleep", "2147483647"])
        .await;
    env.start_container(&sleeper).await;
    let mut probe = None;
    if handler != LAZYVM {
        let mut config =
            env.container_config("probe", &["sleep", "2147483647"], NamespaceMode::Node);
        // Listing another process's fds takes CAP_SYS_PTRACE.
        if let Some(sc) = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
        {
            sc.capabilities = Some(Capability {
                add_capabilities: vec!["SYS_PTRACE".into()],
                ..Default::default()
            });
        }
        let cid = env
            .create_container_with(&pod, config)
            .await
            .unwrap_or_else(|e| panic!("CreateContainer probe: {e}"));
        env.start_container(&cid).await;
        probe = Some(cid);
    }

    let shims = env.shim_pids(&pod);
    assert_eq!(shims.len(), 1, "shim processes of the pod: {shims:?}");
    let shim = shims[0];
    for _ in 0..10 {
        env.exec_ok(&sleeper, &["true"]).await;
    }
    let shim_before = rss_and_fds(shim);
    let agent_before = if handler == LAZYVM {
        Some(pod.agent_footprint().await)
    } else {
        None
    };
    let node_before = match &probe {
        Some(p) => Some(node_init_rss_and_fds(&env, p).await),
        None => None,
    };
    let t = Instant::now();
    for i in 0..EXECS {
        let r = env
            .exec(&sleeper, &["true"], 30)
            .await
            .unwrap_or_else(|e| panic!("ExecSync {i}: {e}"));
        assert_eq!(r.exit_code, 0, "ExecSync {i}: {}", text(&r.stderr));
    }
    let took = t.elapsed();
    eprintln!(
        "[{handler}] {EXECS} ExecSync `true`: {took:?} ({:?} each)",
        took / EXECS as u32
    );
    let shim_after = rss_and_fds(shim);
    eprintln!("[{handler}] shim (VmRSS kB, fds): before {shim_before:?}, after {shim_after:?}");
    assert!(
        shim_after.1 as i64 - shim_before.1 as i64 <= FD_SLACK,
        "shim fds grew: {shim_before:?} -> {shim_after:?}"
    );
    assert!(
        shim_after.0 as i64 - shim_before.0 as i64 <= RSS_SLACK_KB,
        "shim memory grew: {shim_before:?} -> {shim_after:?}"
    );
    if let Some(before) = agent_before {
        let after = pod.agent_footprint().await;
        eprintln!(
            "[{handler}] agent (VmRSS kB, fds, processes): before {before:?}, after {after:?}"
        );
        assert!(
            i64::from(after.1) - i64::from(before.1) <= FD_SLACK,
            "agent fds grew: {before:?} -> {after:?}"
        );
        assert!(
            after.0 as i64 - before.0 as i64 <= RSS_SLACK_KB,
            "agent memory grew: {before:?} -> {after:?}"
        );
        assert_eq!(after.2, before.2, "the agent still tracks exited execs");
        // QEMU's TCG translation cache is bounded (tb-size): its default of 1 GiB was
        // seen filled, resident, by this very loop.
        for qemu in pod.qemu_pids() {
            let biggest = largest_mapping(qemu);
            eprintln!(
                "[{handler}] QEMU {qemu}: VmRSS {} kB, largest mapping (size kB, rss kB, what) {biggest:?}",
                vm_rss_kb(&std::fs::read_to_string(format!("/proc/{qemu}/status")).unwrap_or_default())
            );
            if let Some((size, _, what)) = biggest {
                assert!(
                    size < 900 << 10 || what.contains("memfd"),
                    "QEMU's largest mapping is {size} kB ({what})"
                );
            }
        }
    }
    if let (Some(p), Some(before)) = (&probe, node_before) {
        let after = node_init_rss_and_fds(&env, p).await;
        eprintln!(
            "[{handler}] the node's PID 1 (VmRSS kB, fds): before {before:?}, after {after:?}"
        );
        assert!(before.0 > 0 && after.0 > 0);
    }

    let mut containers = vec![sleeper.as_str()];
    if let Some(p) = &probe {
        containers.push(p);
    }
    let netns = env.pod_netns(&pod).await;
    stop_and_remove(&env, &pod, &containers).await;
    assert_pod_gone(&env, &pod, netns.as_deref(), 0).await;
    eprintln!("[{handler}] whole test: {:?}", t0.elapsed());
}

/// CPU and memory limits reach the container's cgroup (what the kubelet sends for a pod
/// with `limits: {cpu: 500m, memory: 64Mi}`).
async fn cpu_and_memory_limits(handler: &str) {
    let env = CriEnv::start().await;
    let pod = env.run_pod("limits", handler).await;
    check_new_pod(&env, &pod).await;
    let mut config = env.container_config(
        "limited",
        &["sleep", "2147483647"],
        NamespaceMode::Container,
    );
    let resources = config
        .linux
        .as_mut()
        .and_then(|l| l.resources.as_mut())
        .unwrap();
    resources.cpu_quota = 50_000;
    resources.cpu_shares = 512;
    resources.memory_limit_in_bytes = 64 << 20;
    let cid = env
        .create_container_with(&pod, config)
        .await
        .unwrap_or_else(|e| panic!("CreateContainer with limits ({handler}): {e}"));
    env.start_container(&cid).await;
    // cgroup v2 (the lazyvm guest) or v1 (this host): the container's own cgroup is
    // mounted at /sys/fs/cgroup; else it is found through /proc/self/cgroup.
    let script = r#"
        for f in cpu.max cpu.weight memory.max cpu/cpu.cfs_quota_us cpu/cpu.cfs_period_us cpu/cpu.shares memory/memory.limit_in_bytes; do
          if [ -f /sys/fs/cgroup/$f ]; then echo "$f=$(cat /sys/fs/cgroup/$f)"; fi
        done
        rel=$(sed -n 's/^0:://p' /proc/self/cgroup)
        if [ -n "$rel" ] && [ ! -f /sys/fs/cgroup/cpu.max ]; then
          for f in cpu.max cpu.weight memory.max; do
            [ -f /sys/fs/cgroup$rel/$f ] && echo "$f=$(cat /sys/fs/cgroup$rel/$f)"
          done
        fi
        echo cgroup="$(tr '\n' ' ' < /proc/self/cgroup)"
    "#;
    let out = env.exec_ok(&cid, &["sh", "-c", script]).await;
    eprintln!("[{handler}] cgroup files seen in the container:\n{out}");
    let v2 = out.contains("cpu.max=") || out.contains("memory.max=");
    if v2 {
        assert!(out.contains("cpu.max=50000 100000"), "{out}");
        // 512 shares as runc and crun map them: 1 + (512 - 2) * 9999 / 262142.
        assert!(out.contains("cpu.weight=20\n"), "{out}");
        assert!(out.contains(&format!("memory.max={}", 64 << 20)), "{out}");
    } else {
        assert!(out.contains("cpu/cpu.cfs_quota_us=50000"), "{out}");
        assert!(out.contains("cpu/cpu.cfs_period_us=100000"), "{out}");
        assert!(out.contains("cpu/cpu.shares=512"), "{out}");
        assert!(
            out.contains(&format!("memory/memory.limit_in_bytes={}", 64 << 20)),
            "{out}"
        );
    }
    let netns = env.pod_netns(&pod).await;
    stop_and_remove(&env, &pod, &[&cid]).await;
    assert_pod_gone(&env, &pod, netns.as_deref(), 0).await;
}

fn need_guest() {
    guest_dir();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_pod_lifecycle() {
    within("test", TEST_SECS, pod_lifecycle(RUNC)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_two_pods() {
    within("test", TEST_SECS, two_pods(RUNC)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_exec_sync_loop() {
    within("test", TEST_SECS, exec_sync_loop(RUNC)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazyvm_pod_lifecycle() {
    need_guest();
    within("test", TEST_SECS, pod_lifecycle(LAZYVM)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazyvm_two_pods() {
    need_guest();
    within("test", TEST_SECS, two_pods(LAZYVM)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazyvm_exec_sync_loop() {
    need_guest();
    within("test", TEST_SECS, exec_sync_loop(LAZYVM)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_cpu_and_memory_limits() {
    within("test", TEST_SECS, cpu_and_memory_limits(RUNC)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazyvm_cpu_and_memory_limits() {
    need_guest();
    within("test", TEST_SECS, cpu_and_memory_limits(LAZYVM)).await;
}

/// hostNetwork and hostPID pods are refused with a message that says why, and the refusal
/// leaves no VM, sandbox directory or pod behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazyvm_refuses_host_namespaces() {
    need_guest();
    within("test", TEST_SECS, async {
        let env = CriEnv::start().await;
        for (name, field) in [("hostpid", "hostPID"), ("hostnet", "hostNetwork")] {
            let mut config = env.pod_config(name);
            let sc = config
                .linux
                .as_mut()
                .and_then(|l| l.security_context.as_mut())
                .unwrap();
            let mut ns = namespaces(NamespaceMode::Container);
            if field == "hostPID" {
                ns.pid = NamespaceMode::Node as i32;
            } else {
                ns.network = NamespaceMode::Node as i32;
            }
            sc.namespace_options = Some(ns);
            let before = lazyvm_dirs();
            let err = env
                .run_pod_with(config, LAZYVM)
                .await
                .expect_err("lazyvm must refuse a pod with the node's namespaces");
            eprintln!("{field}: {err}");
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
            assert!(err.message().contains(field), "{err}");
            let mut runtime = env.runtime.clone();
            let pods = within(
                "ListPodSandbox",
                30,
                runtime.list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest::default()),
            )
            .await
            .unwrap()
            .into_inner()
            .items;
            assert!(pods.is_empty(), "{pods:?}");
            let new: Vec<_> = lazyvm_dirs()
                .into_iter()
                .filter(|d| !before.contains(d))
                .collect();
            assert!(new.is_empty(), "left under /run/lazyvm: {new:?}");
            assert!(env.bridge_ports().is_empty(), "{:?}", env.bridge_ports());
        }
        assert!(
            eventually(10, || processes_mentioning(&env.socket)
                .into_iter()
                .all(|p| comm(p).as_deref() == Some("containerd")))
            .await,
            "a shim is left"
        );
    })
    .await;
}

/// The pod's VM is sized by its annotations (a size over the configured maximum is
/// refused, naming the annotation); the pod's sysctls reach its containers (a network one
/// set for the VM, an IPC one in the sandbox's IPC namespace); `/dev/shm` is one tmpfs
/// inside the VM shared by the pod's containers; app containers share the sandbox's UTS
/// and IPC namespaces, and with shareProcessNamespace its PID namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazyvm_pod_size_sysctls_and_shm() {
    need_guest();
    within("test", TEST_SECS, async {
        let env = CriEnv::start().await;
        let mut config = env.pod_config("sized");
        config.annotations = [
            ("io.lazyvm.vm.vcpus".to_string(), "2".to_string()),
            ("io.lazyvm.vm.memory-mib".to_string(), "640".to_string()),
        ]
        .into();
        if let Some(sc) = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
        {
            // shareProcessNamespace: one PID namespace for the pod, the pause process's.
            sc.namespace_options = Some(namespaces(NamespaceMode::Pod));
        }
        if let Some(l) = config.linux.as_mut() {
            l.sysctls = [
                (
                    "net.ipv4.ip_unprivileged_port_start".to_string(),
                    "80".to_string(),
                ),
                ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
            ]
            .into();
        }
        let pod = env
            .run_pod_with(config, LAZYVM)
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}"));
        check_new_pod(&env, &pod).await;
        let shared_pid =
            |name: &str| env.container_config(name, &["sleep", "2147483647"], NamespaceMode::Pod);
        let a = env
            .create_container_with(&pod, shared_pid("a"))
            .await
            .unwrap_or_else(|e| panic!("CreateContainer a: {e}"));
        let b = env
            .create_container_with(&pod, shared_pid("b"))
            .await
            .unwrap_or_else(|e| panic!("CreateContainer b: {e}"));
        env.start_container(&a).await;
        env.start_container(&b).await;

        let nproc = env
            .exec_ok(&a, &["sh", "-c", "grep -c ^processor /proc/cpuinfo"])
            .await;
        assert_eq!(nproc.trim(), "2", "vCPUs in the guest");
        let mem = env
            .exec_ok(
                &a,
                &["sh", "-c", "sed -n 's/^MemTotal: *//p' /proc/meminfo"],
            )
            .await;
        let kib: u64 = mem.split_whitespace().next().unwrap().parse().unwrap();
        assert!(
            (560 << 10..=640 << 10).contains(&kib),
            "MemTotal {kib} kB for a 640 MiB VM"
        );

        for cid in [&a, &b] {
            let port = env
                .exec_ok(
                    cid,
                    &["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"],
                )
                .await;
            assert_eq!(port.trim(), "80");
            let rmid = env
                .exec_ok(cid, &["cat", "/proc/sys/kernel/shm_rmid_forced"])
                .await;
            assert_eq!(rmid.trim(), "1", "IPC sysctl in container {cid}");
            // The pod's hostname: the sandbox's UTS namespace.
            assert_eq!(env.exec_ok(cid, &["hostname"]).await.trim(), "sized");
        }
        // One PID namespace for the pod: PID 1 is the pause process, and b sees a's.
        let init = env.exec_ok(&b, &["cat", "/proc/1/cmdline"]).await;
        assert_eq!(init.replace('\0', " ").trim(), "/bin/sleep 2147483647");
        let sleepers = env
            .exec_ok(
                &b,
                &["sh", "-c", "cat /proc/[0-9]*/comm | grep -c '^sleep$'"],
            )
            .await;
        assert_eq!(sleepers.trim(), "3", "pause, a and b in one PID namespace");
        // One IPC namespace for the pod.
        let ipc_a = env.exec_ok(&a, &["readlink", "/proc/self/ns/ipc"]).await;
        let ipc_b = env.exec_ok(&b, &["readlink", "/proc/self/ns/ipc"]).await;
        assert_eq!(ipc_a, ipc_b);
        // /dev/shm: a tmpfs in the guest, shared by the pod's containers.
        env.exec_ok(&a, &["sh", "-c", "echo shared-by-a > /dev/shm/x"])
            .await;
        assert_eq!(
            env.exec_ok(&b, &["cat", "/dev/shm/x"]).await.trim(),
            "shared-by-a"
        );
        let mounts = env.exec_ok(&b, &["cat", "/proc/mounts"]).await;
        let shm = mounts
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some("/dev/shm"))
            .unwrap_or_else(|| panic!("no /dev/shm in\n{mounts}"));
        assert!(shm.contains("tmpfs"), "{shm}");

        let netns = env.pod_netns(&pod).await;
        stop_and_remove(&env, &pod, &[&a, &b]).await;
        assert_pod_gone(&env, &pod, netns.as_deref(), 0).await;

        // Bigger than the configuration allows: refused, nothing left.
        let mut config = env.pod_config("toobig");
        config.annotations = [("io.lazyvm.vm.vcpus".to_string(), "4096".to_string())].into();
        let before = lazyvm_dirs();
        let err = env
            .run_pod_with(config, LAZYVM)
            .await
            .expect_err("4096 vCPUs must be refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(err.message().contains("io.lazyvm.vm.vcpus"), "{err}");
        let new: Vec<_> = lazyvm_dirs()
            .into_iter()
            .filter(|d| !before.contains(d))
            .collect();
        assert!(new.is_empty(), "left under /run/lazyvm: {new:?}");
    })
    .await;
}

fn lazyvm_dirs() -> Vec<String> {
    std::fs::read_dir(lazyvm::sandbox::RUN_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// QEMU killed under a pod with one running container and one created but never
/// started: the running one is reported exited with 255 within seconds, the pod is not
/// ready, the created one (the CRI makes its task only at StartContainer) cannot be
/// started, and stopping and removing everything leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazyvm_a_dead_vm_ends_the_pod() {
    need_guest();
    within("test", TEST_SECS, async {
        let env = CriEnv::start().await;
        let pod = env.run_pod("dead-vm", LAZYVM).await;
        check_new_pod(&env, &pod).await;
        let netns = env.pod_netns(&pod).await;
        let running = env
            .create_container(&pod, "running", &["sleep", "1000"])
            .await;
        env.start_container(&running).await;
        let created = env
            .create_container(&pod, "created", &["sleep", "1000"])
            .await;
        let qemu = pod.qemu_pids();
        assert_eq!(qemu.len(), 1, "{qemu:?}");
        let t = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(qemu[0] as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill -9 of the pod's QEMU");
        let st = env.wait_exited(&running, 20).await;
        eprintln!("exited {:?} after the kill", t.elapsed());
        assert_eq!(st.exit_code, 255, "{st:?}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = env.pod_status(&pod).await.status.unwrap();
            if st.state == PodSandboxState::SandboxNotready as i32 {
                break;
            }
            assert!(Instant::now() < deadline, "the pod is still ready: {st:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let refused = env.try_start_container(&created).await;
        assert!(refused.is_err(), "a container started in a dead pod");
        env.remove_container(&created).await;
        stop_and_remove(&env, &pod, &[&running]).await;
        assert_pod_gone(&env, &pod, netns.as_deref(), 0).await;
    })
    .await;
}

/// containerd stopped (SIGTERM, then in a second round SIGKILL) and started again under
/// a running lazyvm pod, as the CRI sees it: ListContainers shows the running container
/// RUNNING and the one that exited while containerd was down EXITED with its status, the
/// running one's output kept reaching its CRI log, ExecSync works, and stopping and
/// removing the pod leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazyvm_pods_survive_a_containerd_restart() {
    use nix::sys::signal::Signal;
    need_guest();
    within("test", TEST_SECS, async {
        let mut env = CriEnv::start().await;
        for sig in [Signal::SIGTERM, Signal::SIGKILL] {
            let tag = if sig == Signal::SIGTERM {
                "term"
            } else {
                "kill"
            };
            let pod = env.run_pod(&format!("restart-{tag}"), LAZYVM).await;
            let netns = env.pod_netns(&pod).await;
            let ticker = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.5; done";
            let a = env
                .create_container(&pod, "ticker", &["sh", "-c", ticker])
                .await;
            env.start_container(&a).await;
            let b = env
                .create_container(&pod, "short", &["sh", "-c", "sleep 2; exit 7"])
                .await;
            env.start_container(&b).await;
            let log = PathBuf::from(env.container_status(&a).await.log_path);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let before = cri_log_lines(&log, "stdout").len();
            // Down for 6 s: b exits meanwhile, a keeps printing.
            env.restart_containerd(sig, Duration::from_secs(6)).await;
            let after = cri_log_lines(&log, "stdout").len();
            assert!(
                after >= before + 8,
                "{sig}: the ticker's output stopped reaching its log: {before} then {after} lines"
            );
            let listed = env.list_containers().await;
            assert!(
                listed.contains(&(a.clone(), ContainerState::ContainerRunning)),
                "{sig}: {listed:?}"
            );
            let st = env.wait_exited(&b, 20).await;
            assert_eq!(st.exit_code, 7, "{sig}: {st:?}");
            assert_eq!(env.exec_ok(&a, &["echo", "exec-ok"]).await, "exec-ok\n");
            stop_and_remove(&env, &pod, &[&a, &b]).await;
            assert_pod_gone(&env, &pod, netns.as_deref(), 0).await;
        }
    })
    .await;
}

/// The MAC of interface `name` in the network namespace at `netns`.
fn mac_in(netns: &Path, name: &str) -> String {
    // Not /sys: its view is the namespace of whoever mounted it.
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-o", "link", "show", name])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = text(&out.stdout);
    line.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {line}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazyvm_pod_from_the_vm_cache() {
    need_guest();
    let env = CriEnv::start().await;
    // The shims read their configuration when they start: from now on they ask the cache.
    let config = env.dir.join("lazyvm.toml");
    let socket = env.dir.join("cache.sock");
    vmcache::name_socket(&config, &socket);
    let cache = vmcache::Cache::start(&config, &socket, &env.dir.join("cache.log"));
    tokio::task::block_in_place(|| cache.wait_ready(1));
    let warm = cache.warm_dirs();
    assert_eq!(warm.len(), 1);
    let helpers = vmcache::recorded_pids(&warm[0]);
    assert_eq!(helpers.len(), 3, "{helpers:?}");

    let t = Instant::now();
    let pod = env.run_pod("cachedweb", LAZYVM).await;
    eprintln!("RunPodSandbox with a VM from the cache: {:?}", t.elapsed());
    let log = std::fs::read_to_string(env.log_path()).unwrap_or_default();
    assert!(
        log.contains("(a VM from the cache)"),
        "the pod took the cached VM:\n{}",
        cache.log()
    );
    let dir = pod.sandbox_dir();
    assert_eq!(
        vmcache::recorded_pids(&dir),
        helpers,
        "the cached VM's helpers"
    );
    let netns = env.pod_netns(&pod).await.expect("the pod's netns");
    let ip = env.pod_ip(&pod).await;

    let server = env.create_container(&pod, "server", HTTPD).await;
    env.start_container(&server).await;
    // The guest NIC has the pod interface's MAC and address.
    let guest_mac = env
        .exec_ok(&server, &["cat", "/sys/class/net/eth0/address"])
        .await;
    assert_eq!(guest_mac.trim(), mac_in(&netns, "eth0"));
    let addrs = env.exec_ok(&server, &["ip", "addr"]).await;
    assert!(addrs.contains(&format!("inet {ip}/")), "{addrs}");
    // Reachable at the pod IP from the test's netns, over the bridge, the pod's veth and
    // the tap that waited in the cache's namespace.
    let remote = env
        .http_get_from_netns(&ip, WEB_PORT, 30)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(remote.contains(WEB_MARKER), "{remote}");

    // The cache booted the next VM meanwhile; its tap is nowhere but in its own namespace.
    tokio::task::block_in_place(|| cache.wait_ready(1));
    assert!(!env.netns_has_link("tap0_lazyvm"));
    let on_host = std::process::Command::new("ip")
        .args(["link", "show", "tap0_lazyvm"])
        .output()
        .unwrap();
    assert!(!on_host.status.success(), "a tap on the host");

    stop_and_remove(&env, &pod, &[&server]).await;
    assert!(
        eventually(10, || !netns.exists()).await,
        "{} left",
        netns.display()
    );
    assert!(
        eventually(10, || helpers.iter().all(|p| !common::process_exists(*p))).await,
        "the cached VM's helpers left: {helpers:?}"
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(eventually(10, || env.bridge_ports().is_empty()).await);
    drop(cache);
}
