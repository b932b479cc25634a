//! Endurance ("soak") cycles, shared by `benches/soak.rs` (`make soak`: 200 cycles of
//! each kind) and `tests/soak.rs` (CI: 20 of each):
//!
//! - [`containers_in_one_pod`]: CreateContainer → StartContainer → ExecSync →
//!   StopContainer → RemoveContainer, over and over in ONE long-lived lazyvm pod, whose
//!   single shim, QEMU, nydusd, vhost-device-vsock and guest agent serve every one of
//!   them: where a per-container leak on the shim side (or in the guest) shows.
//! - [`whole_pods`]: RunPodSandbox → CreateContainer → StartContainer → ExecSync →
//!   StopContainer → RemoveContainer → StopPodSandbox → RemovePodSandbox, a fresh VM each
//!   cycle: where containerd's growth and per-pod leftovers (shims, sandbox directories,
//!   mounts, netns, veths) show.
//! - [`ctr_runs`]: `ctr run --rm` through containerd's Tasks API without the CRI.
//!
//! Each does [`WARMUP`] uncounted cycles, takes a [`Sample`] (cycle 0), then one after
//! every `report_every` cycles and after the last, printing each as it is taken. A sample
//! reads open fds, threads and RSS of containerd and of the pod's processes from /proc,
//! and counts what must not pile up. At the end the growth between the first and the last
//! sample is checked against [`Bound`]s, and everything the cycles made must be gone.
//! The returned [`Report`] lists what failed; nothing panics on a bound, so the bench can
//! print every table before it fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{busybox_rootfs, oci_image_archive, processes_mentioning, test_prefix};
use crate::containerd::{Containerd, RUNTIME};
use crate::cri::{comm, eventually, CriEnv, Pod, LAZYVM};

/// Cycles run before the first sample: the first pod and container make containerd (its
/// Go heap, its CNI and snapshot caches), the shim and the guest reach their working
/// size; that is start-up, not growth.
pub const WARMUP: usize = 2;
/// The pause before a sample, for teardown that finishes after the call returned (a shim
/// exiting after Shutdown, QEMU after its last container).
const SETTLE: Duration = Duration::from_secs(1);
/// How long leftovers may take to go at the end.
const GONE_SECS: u64 = 15;

/// What /proc says of one process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Figures {
    /// Entries in /proc/PID/fd.
    pub fds: u64,
    /// `Threads:` in /proc/PID/status.
    pub threads: u64,
    /// `VmRSS:` in /proc/PID/status, KiB.
    pub rss_kib: u64,
}

impl Figures {
    /// The figures of process `pid`; `None` when it is gone (or a zombie: no VmRSS).
    pub fn of(pid: u32) -> Option<Figures> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |key: &str| -> Option<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        Some(Figures {
            fds: std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64,
            threads: field("Threads:")?,
            rss_kib: field("VmRSS:")?,
        })
    }
}

/// One sample: the figures of the watched processes and counts of what must not pile up.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Counted cycles done (0: after the warm-up, before the first counted cycle).
    pub cycle: usize,
    /// Since sample 0.
    pub elapsed: Duration,
    /// (process, its figures).
    pub procs: Vec<(&'static str, Figures)>,
    /// (what, how many).
    pub counts: Vec<(&'static str, u64)>,
}

/// How much a process's fds and threads may grow between the first and the last sample,
/// and its RSS.
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    pub name: &'static str,
    pub fds: i64,
    pub threads: i64,
    pub rss: Rss,
}

/// A bound on a process's RSS.
#[derive(Clone, Copy, Debug)]
pub enum Rss {
    /// Growth between the first and the last sample, MiB.
    Growth(i64),
    /// A ceiling no sample may exceed, MiB.
    AtMost(i64),
}

/// How much a count may grow between the first and the last sample.
#[derive(Clone, Copy, Debug)]
pub struct CountBound {
    pub name: &'static str,
    pub growth: i64,
}

// The bounds. Measured on a 2-core host under TCG with containerd 1.6.20 (20 and 50
// cycles of each kind): containerd's fds never moved, it gained at most 1 thread and its
// RSS moved by -1..+3 MiB; the shim's and vhost-device-vsock's fds never moved, they
// gained at most 1 thread and under 1 MiB; so did nydusd once the guest let go of the
// removed containers' files (see `NYDUSD`). The slack covers what moves without leaking:
// an fd of a gRPC/ttrpc connection the other side closes late, an OS thread the Go
// runtime (kept) or tokio's blocking pool (gone after 10 s idle) starts when all are
// busy, heap the Go GC and the allocators give back late. A leak shows: one fd or one
// thread per cycle exceeds the bounds within the CI run's 20 cycles, 1 MiB per cycle
// too, and `make soak`'s 200 cycles catch 80 KiB per cycle in containerd, 40 KiB in the
// pod's processes.

/// containerd, in every kind of run.
pub const CONTAINERD: Bound = Bound {
    name: "containerd",
    fds: 8,
    threads: 4,
    rss: Rss::Growth(16),
};
/// The long-lived pod's shim.
pub const SHIM: Bound = Bound {
    name: "shim",
    fds: 8,
    threads: 4,
    rss: Rss::Growth(8),
};
/// The long-lived pod's nydusd: one passthrough share serves every container. It holds
/// an O_PATH fd for each inode the guest has looked up until the guest forgets it, so
/// it stays flat only if the guest drops the dentries of a removed container's files;
/// with nothing else making it, a guest with memory to spare never does (measured: 15
/// fds and 1.5 MiB more per cycle; flat when the guest's dentry and inode caches are
/// dropped after each removal).
pub const NYDUSD: Bound = Bound {
    name: "nydusd",
    fds: 8,
    threads: 4,
    rss: Rss::Growth(8),
};
/// The long-lived pod's vhost-device-vsock: a connection per exec and per agent call.
pub const VSOCK: Bound = Bound {
    name: "vsock",
    fds: 8,
    threads: 4,
    rss: Rss::Growth(8),
};
/// Room for QEMU's own memory beside the guest's RAM and TCG's translation cache (its
/// code, heap and device state; its whole RSS, guest pages and translations included,
/// was 257 MiB after the warm-up and 468 MiB after 50 cycles of a 512 MiB VM).
const QEMU_OWN_MIB: i64 = 128;

/// The bound on the long-lived pod's QEMU `pid`. Its RSS holds every guest page the
/// guest has touched (never given back without a balloon) and, under TCG, the
/// translation cache, which fills as each new container's binaries (new guest pages)
/// are translated: it climbs for many cycles towards `-m` + `tb-size` and is bounded by
/// that, plus [`QEMU_OWN_MIB`], read from QEMU's command line. Growth inside the guest is
/// bounded on the guest side ("guest used KiB", the agent's counts).
pub fn qemu_bound(pid: u32) -> Bound {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = String::from_utf8_lossy(&cmdline)
        .split('\0')
        .map(str::to_string)
        .collect();
    let after = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_default()
    };
    let mem: i64 = after("-m")
        .trim_end_matches(['M', 'm'])
        .parse()
        .unwrap_or_else(|_| panic!("QEMU {pid}: no -m <MiB>M in {args:?}"));
    let tb: i64 = after("-accel")
        .split(',')
        .find_map(|o| o.strip_prefix("tb-size="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Bound {
        name: "qemu",
        fds: 8,
        threads: 4,
        rss: Rss::AtMost(mem + tb + QEMU_OWN_MIB),
    }
}

/// Counts in the long-lived pod: one tap for the pod's one interface and the host mounts
/// of the pause and keeper containers, exactly; the agent's fds and tracked processes
/// come back to their level after each container (measured: never moved), its RSS by a
/// few hundred KiB (+300 KiB over 50 cycles); the guest's used memory (MemTotal -
/// MemAvailable, read in the keeper) moves with the guest kernel's slabs (+1.4 MiB over
/// 20 cycles, +1.9 MiB over 50).
pub const IN_POD_COUNTS: &[CountBound] = &[
    CountBound {
        name: "taps",
        growth: 0,
    },
    CountBound {
        name: "mounts",
        growth: 0,
    },
    CountBound {
        name: "agent fds",
        growth: 4,
    },
    CountBound {
        name: "agent procs",
        growth: 0,
    },
    CountBound {
        name: "agent KiB",
        growth: 4096,
    },
    CountBound {
        name: "guest used KiB",
        growth: 16 << 10,
    },
];

/// Counts between whole-pod cycles and `ctr run --rm` cycles: nothing of a finished cycle
/// stays.
pub const LEFTOVER_COUNTS: &[CountBound] = &[
    CountBound {
        name: "shims",
        growth: 0,
    },
    CountBound {
        name: "sandboxes",
        growth: 0,
    },
    CountBound {
        name: "netns",
        growth: 0,
    },
    CountBound {
        name: "veths",
        growth: 0,
    },
    CountBound {
        name: "mounts",
        growth: 0,
    },
    CountBound {
        name: "containers",
        growth: 0,
    },
    CountBound {
        name: "active snapshots",
        growth: 0,
    },
];

/// What a run printed and found.
#[derive(Debug)]
pub struct Report {
    pub title: String,
    pub samples: Vec<Sample>,
    /// Bounds exceeded and leftovers: empty when the run passed.
    pub problems: Vec<String>,
    /// The growth of every figure, first to last sample, with its bound.
    pub growth: Vec<String>,
}

impl Report {
    fn new(
        title: String,
        samples: Vec<Sample>,
        bounds: &[Bound],
        counts: &[CountBound],
        leftovers: Vec<String>,
    ) -> Report {
        let (growth, mut problems) = check_growth(&samples, bounds, counts);
        problems.extend(leftovers);
        Report {
            title,
            samples,
            problems,
            growth,
        }
    }

    /// The whole table, the growth and the problems.
    pub fn print(&self) {
        println!("\n== {} ==", self.title);
        if let Some(first) = self.samples.first() {
            println!("{}", header(first));
        }
        for s in &self.samples {
            println!("{}", row(s));
        }
        self.print_growth();
    }

    /// The growth against each bound and the problems (the table was printed as it
    /// grew).
    pub fn print_growth(&self) {
        println!("growth, first to last sample (bound):");
        for g in &self.growth {
            println!("  {g}");
        }
        if self.problems.is_empty() {
            println!("no leak: every bound held, nothing left behind");
        } else {
            for p in &self.problems {
                println!("PROBLEM: {p}");
            }
        }
    }
}

/// The table's header (two lines): a column group per process, a column per count.
fn header(s: &Sample) -> String {
    let mut top = format!("{:>6} {:>7} ", "", "");
    let mut bottom = format!("{:>6} {:>7} ", "cycle", "secs");
    for (name, _) in &s.procs {
        top += &format!("| {name:^17} ");
        bottom += &format!("| {:>4} {:>4} {:>7} ", "fds", "thr", "RSS MiB");
    }
    top += "|";
    bottom += "|";
    for (name, _) in &s.counts {
        let w = name.len().max(6);
        top += &format!(" {:>w$}", "");
        bottom += &format!(" {name:>w$}");
    }
    format!("{}\n{bottom}", top.trim_end())
}

fn row(s: &Sample) -> String {
    let mut line = format!("{:>6} {:>7.1} ", s.cycle, s.elapsed.as_secs_f64());
    for (_, f) in &s.procs {
        line += &format!(
            "| {:>4} {:>4} {:>7.1} ",
            f.fds,
            f.threads,
            f.rss_kib as f64 / 1024.0
        );
    }
    line += "|";
    for (name, v) in &s.counts {
        let w = name.len().max(6);
        line += &format!(" {v:>w$}");
    }
    line
}

/// Collects samples and prints each as it comes (the header before the first).
struct Table {
    samples: Vec<Sample>,
}

impl Table {
    fn new(title: &str) -> Table {
        println!("\n== {title} ==");
        Table {
            samples: Vec::new(),
        }
    }

    fn add(&mut self, s: Sample) {
        if self.samples.is_empty() {
            println!("{}", header(&s));
        }
        println!("{}", row(&s));
        self.samples.push(s);
    }
}

/// The growth of each bounded figure between the first and the last sample: one line per
/// figure, and the ones over their bound.
fn check_growth(
    samples: &[Sample],
    bounds: &[Bound],
    counts: &[CountBound],
) -> (Vec<String>, Vec<String>) {
    let (mut lines, mut problems) = (Vec::new(), Vec::new());
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return (lines, vec!["no samples".into()]);
    };
    let cycles = last.cycle - first.cycle;
    let growth = |what: String, grew: i64, bound: i64, unit: &str| {
        let line = format!("{what}: {grew:+}{unit} (≤ {bound:+}{unit})");
        let over = (grew > bound).then(|| format!("{line} over {cycles} cycles"));
        (line, over)
    };
    // (line, the problem if over its bound), in the order of the bounds.
    let mut checked: Vec<(String, Option<String>)> = Vec::new();
    for b in bounds {
        let find = |s: &Sample| s.procs.iter().find(|(n, _)| *n == b.name).map(|p| p.1);
        let (Some(a), Some(z)) = (find(first), find(last)) else {
            checked.push((String::new(), Some(format!("{}: not sampled", b.name))));
            continue;
        };
        checked.push(growth(
            format!("{} fds", b.name),
            z.fds as i64 - a.fds as i64,
            b.fds,
            "",
        ));
        checked.push(growth(
            format!("{} threads", b.name),
            z.threads as i64 - a.threads as i64,
            b.threads,
            "",
        ));
        checked.push(match b.rss {
            // In MiB, rounded towards zero: a bound is met by what it says.
            Rss::Growth(mib) => growth(
                format!("{} RSS", b.name),
                (z.rss_kib as i64 - a.rss_kib as i64) / 1024,
                mib,
                " MiB",
            ),
            Rss::AtMost(mib) => {
                let most = samples
                    .iter()
                    .filter_map(|s| s.procs.iter().find(|(n, _)| *n == b.name))
                    .map(|p| p.1.rss_kib / 1024)
                    .max()
                    .unwrap_or(0) as i64;
                let line = format!("{} RSS, highest sample: {most} MiB (≤ {mib} MiB)", b.name);
                let over = (most > mib).then(|| line.clone());
                (line, over)
            }
        });
    }
    for c in counts {
        let find = |s: &Sample| s.counts.iter().find(|(n, _)| *n == c.name).map(|p| p.1);
        let (Some(a), Some(z)) = (find(first), find(last)) else {
            checked.push((String::new(), Some(format!("{}: not sampled", c.name))));
            continue;
        };
        checked.push(growth(
            c.name.to_string(),
            z as i64 - a as i64,
            c.growth,
            "",
        ));
    }
    for (line, over) in checked {
        if !line.is_empty() {
            lines.push(line);
        }
        problems.extend(over);
    }
    (lines, problems)
}

/// The sole process in `pids`, named `what` in the panic otherwise.
fn the_one(what: &str, pids: Vec<u32>) -> u32 {
    assert_eq!(pids.len(), 1, "{what}: {pids:?}");
    pids[0]
}

fn figures(what: &str, pid: u32) -> Figures {
    Figures::of(pid).unwrap_or_else(|| panic!("{what} ({pid}) is gone"))
}

/// The mountinfo lines (of this process's mount namespace, the host's, where containerd
/// and the shims mount) naming one of `paths`.
fn mounts_naming(paths: &[PathBuf]) -> Vec<String> {
    let paths: Vec<String> = paths.iter().map(|p| format!("{}/", p.display())).collect();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.split(' ')
                .any(|f| paths.iter().any(|p| format!("{f}/").starts_with(p)))
        })
        .map(str::to_string)
        .collect()
}

/// Lines of `ctr` output, header dropped.
fn ctr_lines(out: std::process::Output) -> Vec<String> {
    assert!(
        out.status.success(),
        "ctr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect()
}

/// Containers that containerd (namespace of `ctr`) still has, and active snapshots.
fn containerd_leftovers(ctr: impl Fn(&[&str]) -> std::process::Output) -> (u64, u64) {
    let containers = ctr_lines(ctr(&["containers", "ls"])).len() as u64;
    let active = ctr_lines(ctr(&["snapshots", "ls"]))
        .iter()
        .filter(|l| l.split_whitespace().last() == Some("Active"))
        .count() as u64;
    (containers, active)
}

// ---- CRI: containers in one long-lived pod -------------------------------------------

/// The tap devices (`*_lazyvm`) in network namespace `netns` (a /var/run/netns path).
fn taps_in(netns: &Path) -> u64 {
    let name = netns.file_name().unwrap().to_string_lossy().into_owned();
    let out = Command::new("ip")
        .args(["-n", &name, "-o", "link", "show"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip -n {name} link show: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .filter(|n| {
            n.trim()
                .split('@')
                .next()
                .unwrap_or("")
                .ends_with("_lazyvm")
        })
        .count() as u64
}

/// The guest's MemTotal - MemAvailable, KiB, read in container `cid` (its /proc/meminfo
/// is the VM's).
async fn guest_used_kib(env: &CriEnv, cid: &str) -> u64 {
    let meminfo = env.exec_ok(cid, &["cat", "/proc/meminfo"]).await;
    let field = |key: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in the guest's meminfo:\n{meminfo}"))
    };
    field("MemTotal:") - field("MemAvailable:")
}

/// containerd's figures in a CRI env.
fn cri_containerd(env: &CriEnv) -> Figures {
    figures("containerd", env.containerd_pid().expect("containerd runs"))
}

/// One container cycle in `pod`: create, start, an exec that must answer the pod's
/// hostname, stop (SIGKILL at once: `sleep` as PID 1 ignores SIGTERM), remove.
async fn container_cycle(env: &CriEnv, pod: &Pod, name: &str) {
    let cid = env
        .create_container(pod, name, &["sleep", "2147483647"])
        .await;
    env.start_container(&cid).await;
    let out = env.exec_ok(&cid, &["cat", "/etc/hostname"]).await;
    assert_eq!(out.trim(), pod.config.hostname, "exec in {name}");
    env.stop_container(&cid, 0).await;
    env.remove_container(&cid).await;
}

/// A sample of the long-lived pod: containerd, the pod's shim and helpers, its taps, the
/// host mounts naming its sandbox directory or the env's, the agent, the guest's memory.
async fn pod_sample(
    env: &CriEnv,
    pod: &Pod,
    keeper: &str,
    netns: &Path,
    cycle: usize,
    start: Instant,
) -> Sample {
    tokio::time::sleep(SETTLE).await;
    let elapsed = start.elapsed();
    let dir = pod.sandbox_dir();
    let helpers = processes_mentioning(&dir);
    let helper = |prefix: &str| -> u32 {
        the_one(
            &format!("{prefix}* of {}", dir.display()),
            helpers
                .iter()
                .copied()
                .filter(|p| comm(*p).is_some_and(|c| c.starts_with(prefix)))
                .collect(),
        )
    };
    let mut procs = vec![("containerd", cri_containerd(env))];
    for (name, pid) in [
        ("shim", the_one("the pod's shim", env.shim_pids(pod))),
        ("qemu", helper("qemu-system")),
        ("nydusd", helper("nydusd")),
        ("vsock", helper("vhost-device-vs")),
    ] {
        procs.push((name, figures(name, pid)));
    }
    let (agent_kib, agent_fds, agent_procs) = pod.agent_footprint().await;
    let counts = vec![
        ("taps", taps_in(netns)),
        (
            "mounts",
            mounts_naming(&[dir.clone(), env.dir.clone()]).len() as u64,
        ),
        ("agent fds", u64::from(agent_fds)),
        ("agent procs", u64::from(agent_procs)),
        ("agent KiB", agent_kib),
        ("guest used KiB", guest_used_kib(env, keeper).await),
    ];
    Sample {
        cycle,
        elapsed,
        procs,
        counts,
    }
}

/// `n` container cycles in one long-lived lazyvm pod (beside a `keeper` container that
/// stays), sampled every `report_every`; then the pod is removed and must leave nothing.
pub async fn containers_in_one_pod(env: &CriEnv, n: usize, report_every: usize) -> Report {
    let title = format!(
        "CRI: {n} container cycles (create/start/exec/stop/remove) in one lazyvm pod \
         (+{WARMUP} warm-up)"
    );
    let mut table = Table::new(&title);
    let pod = env.run_pod("soak-pod", LAZYVM).await;
    let netns = env
        .pod_netns(&pod)
        .await
        .expect("the sandbox spec names the pod's netns");
    let keeper = env
        .create_container(&pod, "keeper", &["sleep", "2147483647"])
        .await;
    env.start_container(&keeper).await;
    for i in 0..WARMUP {
        container_cycle(env, &pod, &format!("warm{i}")).await;
    }
    let qemu = qemu_bound(the_one("the pod's QEMU", pod.qemu_pids()));
    let start = Instant::now();
    table.add(pod_sample(env, &pod, &keeper, &netns, 0, start).await);
    for i in 1..=n {
        container_cycle(env, &pod, &format!("c{i}")).await;
        if i % report_every == 0 || i == n {
            table.add(pod_sample(env, &pod, &keeper, &netns, i, start).await);
        }
    }
    env.stop_container(&keeper, 0).await;
    env.remove_container(&keeper).await;
    env.stop_pod(&pod).await;
    env.remove_pod(&pod).await;
    let leftovers = cri_leftovers(env, &[(pod, Some(netns))]).await;
    Report::new(
        title,
        table.samples,
        &[CONTAINERD, SHIM, qemu, NYDUSD, VSOCK],
        IN_POD_COUNTS,
        leftovers,
    )
}

// ---- CRI: whole pods ------------------------------------------------------------------

/// One whole-pod cycle; the pod and its netns path, for the checks.
async fn pod_cycle(env: &CriEnv, name: &str) -> (Pod, Option<PathBuf>) {
    let pod = env.run_pod(name, LAZYVM).await;
    let netns = env.pod_netns(&pod).await;
    container_cycle(env, &pod, "app").await;
    env.stop_pod(&pod).await;
    env.remove_pod(&pod).await;
    (pod, netns)
}

/// The shims of the env's containerd (whatever else mentions its socket).
fn cri_shims(env: &CriEnv) -> Vec<u32> {
    let containerd = env.containerd_pid();
    processes_mentioning(&env.socket)
        .into_iter()
        .filter(|p| Some(*p) != containerd)
        .collect()
}

/// What the cycles' pods left: counts for a sample.
fn pod_leftover_counts(env: &CriEnv, pods: &[(Pod, Option<PathBuf>)]) -> Vec<(&'static str, u64)> {
    let mut dirs: Vec<PathBuf> = pods.iter().map(|(p, _)| p.sandbox_dir()).collect();
    let sandboxes = dirs.iter().filter(|d| d.exists()).count() as u64;
    let netns = pods
        .iter()
        .filter(|(_, ns)| ns.as_ref().is_some_and(|ns| ns.exists()))
        .count() as u64;
    dirs.push(env.dir.clone());
    let (containers, active) = containerd_leftovers(|a| env.ctr(a));
    vec![
        ("shims", cri_shims(env).len() as u64),
        ("sandboxes", sandboxes),
        ("netns", netns),
        ("veths", env.bridge_ports().len() as u64),
        ("mounts", mounts_naming(&dirs).len() as u64),
        ("containers", containers),
        ("active snapshots", active),
    ]
}

/// A sample between whole-pod cycles: containerd, and what the pods so far left.
async fn pods_sample(
    env: &CriEnv,
    pods: &[(Pod, Option<PathBuf>)],
    cycle: usize,
    start: Instant,
) -> Sample {
    tokio::time::sleep(SETTLE).await;
    Sample {
        cycle,
        elapsed: start.elapsed(),
        procs: vec![("containerd", cri_containerd(env))],
        counts: pod_leftover_counts(env, pods),
    }
}

/// `n` whole-pod cycles (each with one container), containerd sampled every
/// `report_every`; nothing of any pod may be left.
pub async fn whole_pods(env: &CriEnv, n: usize, report_every: usize) -> Report {
    let title = format!(
        "CRI: {n} lazyvm pod cycles (RunPodSandbox/create/start/exec/stop/remove/\
         StopPodSandbox/RemovePodSandbox) (+{WARMUP} warm-up)"
    );
    let mut table = Table::new(&title);
    let mut pods = Vec::new();
    for i in 0..WARMUP {
        pods.push(pod_cycle(env, &format!("soak-warm{i}")).await);
    }
    let start = Instant::now();
    table.add(pods_sample(env, &pods, 0, start).await);
    for i in 1..=n {
        pods.push(pod_cycle(env, &format!("soak{i}")).await);
        if i % report_every == 0 || i == n {
            table.add(pods_sample(env, &pods, i, start).await);
        }
    }
    let leftovers = cri_leftovers(env, &pods).await;
    Report::new(
        title,
        table.samples,
        &[CONTAINERD],
        LEFTOVER_COUNTS,
        leftovers,
    )
}

/// What must hold once every pod of a CRI run is removed: no shim, no process naming a
/// sandbox directory, no sandbox directory, no mount under one or under the env's
/// directory, no pod netns, no veth on the bridge, no tap in the env's netns, no
/// container or active snapshot in containerd.
pub async fn cri_leftovers(env: &CriEnv, pods: &[(Pod, Option<PathBuf>)]) -> Vec<String> {
    let mut found = Vec::new();
    if !eventually(GONE_SECS, || cri_shims(env).is_empty()).await {
        found.push(format!(
            "processes naming {}: {:?}",
            env.socket.display(),
            cri_shims(env)
                .into_iter()
                .map(|p| (p, comm(p)))
                .collect::<Vec<_>>()
        ));
    }
    let containerd = env.containerd_pid();
    let others: Vec<u32> = processes_mentioning(&env.dir)
        .into_iter()
        .filter(|p| Some(*p) != containerd)
        .collect();
    if !others.is_empty() {
        found.push(format!(
            "processes naming {}: {others:?}",
            env.dir.display()
        ));
    }
    let mut dirs = vec![env.dir.clone()];
    for (pod, netns) in pods {
        let dir = pod.sandbox_dir();
        if !eventually(GONE_SECS, || processes_mentioning(&dir).is_empty()).await {
            found.push(format!(
                "processes of {}: {:?}",
                dir.display(),
                processes_mentioning(&dir)
                    .into_iter()
                    .map(|p| (p, comm(p)))
                    .collect::<Vec<_>>()
            ));
        }
        if dir.exists() {
            found.push(format!("{} left behind", dir.display()));
        }
        if let Some(ns) = netns.as_ref().filter(|ns| ns.exists()) {
            found.push(format!("pod netns {} left behind", ns.display()));
        }
        dirs.push(dir);
    }
    let mounts = mounts_naming(&dirs);
    if !mounts.is_empty() {
        found.push(format!("mounts left: {mounts:#?}"));
    }
    let ports = env.bridge_ports();
    if !ports.is_empty() {
        found.push(format!("veths left on {}: {ports:?}", env.bridge));
    }
    let taps = taps_in(&PathBuf::from(format!("/var/run/netns/{}", env.netns)));
    if taps != 0 {
        found.push(format!("{taps} *_lazyvm links in {}", env.netns));
    }
    let (containers, active) = containerd_leftovers(|a| env.ctr(a));
    if containers + active != 0 {
        found.push(format!(
            "containerd still has {containers} containers and {active} active snapshots"
        ));
    }
    found
}

// ---- ctr run --rm ---------------------------------------------------------------------

/// The image the `ctr run` cycles run.
pub const CTR_IMAGE: &str = "docker.io/library/lazyvm-busybox:soak";

/// A private containerd (no CRI) with lazyvm and a busybox image, for `ctr run`.
pub struct CtrEnv {
    // Dropped before the directory it lives in.
    pub containerd: Containerd,
    tmp: tempfile::TempDir,
}

impl CtrEnv {
    pub fn start() -> CtrEnv {
        let tmp = tempfile::Builder::new().prefix("lzsoak").tempdir().unwrap();
        let config = tmp.path().join("lazyvm.toml");
        crate::common::write_config(&config, &crate::common::guest_dir());
        let containerd = Containerd::start(tmp.path(), &config, &crate::common::shim_dir());
        let archive = tmp.path().join("image.tar");
        oci_image_archive(&busybox_rootfs(tmp.path()), CTR_IMAGE, &archive);
        containerd.import(&archive);
        CtrEnv { containerd, tmp }
    }

    /// The prefix of the cycles' container ids (their sandbox directories' names).
    fn prefix() -> String {
        format!("{}soak", test_prefix())
    }

    /// The shims of this containerd (whatever else mentions its socket).
    fn shims(&self) -> Vec<u32> {
        processes_mentioning(&self.containerd.socket)
            .into_iter()
            .filter(|p| *p != self.containerd.pid())
            .collect()
    }

    /// The sandbox directories of the cycles' containers.
    fn sandboxes(&self) -> Vec<String> {
        std::fs::read_dir(lazyvm::sandbox::RUN_DIR)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&Self::prefix()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Processes naming a sandbox directory of the cycles (QEMU, nydusd, vsock).
    fn helpers(&self) -> Vec<u32> {
        processes_mentioning(&Path::new(lazyvm::sandbox::RUN_DIR).join(Self::prefix()))
    }

    /// Mounts under containerd's directory or a sandbox directory of the cycles.
    fn mounts(&self) -> Vec<String> {
        let prefix = format!("{}/{}", lazyvm::sandbox::RUN_DIR, Self::prefix());
        let dir = self.containerd.dir.display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&prefix) || l.contains(&dir))
            .map(str::to_string)
            .collect()
    }

    fn sample(&self, cycle: usize, start: Instant) -> Sample {
        std::thread::sleep(SETTLE);
        let elapsed = start.elapsed();
        // containerd first: the `ctr` calls below are connections it closes lazily.
        let procs = vec![("containerd", figures("containerd", self.containerd.pid()))];
        let (containers, active) = containerd_leftovers(|a| self.containerd.ctr(a));
        Sample {
            cycle,
            elapsed,
            procs,
            counts: vec![
                ("shims", self.shims().len() as u64),
                ("sandboxes", self.sandboxes().len() as u64),
                ("helpers", self.helpers().len() as u64),
                ("mounts", self.mounts().len() as u64),
                ("containers", containers),
                ("active snapshots", active),
            ],
        }
    }

    /// One `ctr run --rm … echo soak-<i>`, which must print that.
    fn cycle(&self, i: &str) {
        let cid = format!("{}{i}", Self::prefix());
        let word = format!("soak-{i}");
        let out = self.containerd.ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            CTR_IMAGE,
            &cid,
            "echo",
            &word,
        ]);
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == word,
            "ctr run --rm {cid}: {:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// What the cycles left, once the last has had [`GONE_SECS`] to go.
    fn leftovers(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(GONE_SECS);
        let clean = || {
            self.shims().is_empty()
                && self.helpers().is_empty()
                && self.sandboxes().is_empty()
                && self.mounts().is_empty()
        };
        while !clean() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut found = Vec::new();
        let with_comm = |pids: Vec<u32>| -> Vec<(u32, Option<String>)> {
            pids.into_iter().map(|p| (p, comm(p))).collect()
        };
        if !self.shims().is_empty() {
            found.push(format!("shims left: {:?}", with_comm(self.shims())));
        }
        if !self.helpers().is_empty() {
            found.push(format!("helpers left: {:?}", with_comm(self.helpers())));
        }
        if !self.sandboxes().is_empty() {
            found.push(format!(
                "left under {}: {:?}",
                lazyvm::sandbox::RUN_DIR,
                self.sandboxes()
            ));
        }
        if !self.mounts().is_empty() {
            found.push(format!("mounts left: {:#?}", self.mounts()));
        }
        let (containers, active) = containerd_leftovers(|a| self.containerd.ctr(a));
        if containers + active != 0 {
            found.push(format!(
                "containerd still has {containers} containers and {active} active snapshots"
            ));
        }
        found
    }
}

/// `n` `ctr run --rm` cycles, containerd sampled every `report_every`; nothing may be
/// left.
pub fn ctr_runs(env: &CtrEnv, n: usize, report_every: usize) -> Report {
    let title = format!("ctr: {n} `ctr run --rm … echo` cycles with lazyvm (+{WARMUP} warm-up)");
    let mut table = Table::new(&title);
    for i in 0..WARMUP {
        env.cycle(&format!("w{i}"));
    }
    let start = Instant::now();
    table.add(env.sample(0, start));
    for i in 1..=n {
        env.cycle(&i.to_string());
        if i % report_every == 0 || i == n {
            table.add(env.sample(i, start));
        }
    }
    let leftovers = env.leftovers();
    let counts: Vec<CountBound> = LEFTOVER_COUNTS
        .iter()
        .copied()
        .filter(|c| !matches!(c.name, "netns" | "veths"))
        .chain([CountBound {
            name: "helpers",
            growth: 0,
        }])
        .collect();
    Report::new(title, table.samples, &[CONTAINERD], &counts, leftovers)
}
