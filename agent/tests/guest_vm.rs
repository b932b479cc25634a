//! Boots the guest image (build/guest/, from `make guest`) under QEMU/TCG with the real
//! nydusd (virtio-fs) and vhost-device-vsock, started by the production launch code
//! (`lazyvm::sandbox::Sandbox`), talks to the agent with the generated ttrpc client over
//! hybrid vsock, and runs busybox containers through it.
//!
//! Needs root, qemu-system-x86_64, nydusd, vhost-device-vsock, busybox and the guest
//! image. Without the image (or tools) the test says so and passes, unless
//! LAZYVM_REQUIRE_GUEST=1. Every process it starts is stopped by pid, also on failure
//! (the sandbox's helpers are killed when it is dropped).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lazyvm_proto::agent::*;
use lazyvm_proto::agent_ttrpc::AgentClient;
use ttrpc::context;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ has a parent")
        .to_path_buf()
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

#[derive(Clone, Copy, Debug)]
enum Kernel {
    Minimal,
    Debian,
}

fn ctx() -> context::Context {
    context::with_timeout(Duration::from_secs(30).as_nanos() as i64)
}

fn no_timeout() -> context::Context {
    context::with_timeout(0)
}

/// An OCI spec running `args` in a busybox rootfs.
fn spec(args: &[&str], terminal: bool, hostname: &str) -> Vec<u8> {
    spec_ns(args, terminal, hostname, true)
}

/// Like [`spec`]; without `pidns` the process shares the VM's PID namespace (so it is not
/// a namespace init, which SIGKILL from inside cannot kill).
fn spec_ns(args: &[&str], terminal: bool, hostname: &str, pidns: bool) -> Vec<u8> {
    let pid = if pidns { r#"{"type": "pid"}, "# } else { "" };
    let args: Vec<String> = args.iter().map(|s| format!("{s:?}")).collect();
    format!(
        r#"{{
  "ociVersion": "1.0.2",
  "process": {{
    "terminal": {terminal},
    "user": {{"uid": 0, "gid": 0}},
    "args": [{args}],
    "env": ["PATH=/bin", "TERM=xterm"],
    "cwd": "/",
    "rlimits": [{{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}}],
    "noNewPrivileges": true
  }},
  "root": {{"path": "rootfs", "readonly": true}},
  "hostname": "{hostname}",
  "mounts": [
    {{"destination": "/proc", "type": "proc", "source": "proc"}},
    {{"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}},
    {{"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}},
    {{"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}},
    {{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}}
  ],
  "linux": {{
    "namespaces": [{pid}{{"type": "ipc"}}, {{"type": "uts"}}, {{"type": "mount"}}]
  }}
}}"#,
        args = args.join(", ")
    )
    .into_bytes()
}

/// Makes a busybox rootfs in `dir`.
fn busybox_rootfs(dir: &Path) -> Result<(), BoxError> {
    let busybox = which("busybox").ok_or("busybox is missing")?;
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy(&busybox, dir.join("bin/busybox"))?;
    for applet in [
        "sh", "echo", "cat", "sleep", "hostname", "tty", "kill", "ls", "readlink", "true",
    ] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
    }
    let mut f = std::fs::File::create(dir.join("etc/passwd"))?;
    writeln!(f, "root:x:0:0:root:/:/bin/sh")?;
    Ok(())
}

/// A spec for a pod's container: [`spec`] with the given namespaces and sysctls, and
/// with the pod's shm (/run/lazyvm/pod/shm) bound at /dev/shm.
fn pod_spec(
    args: &[&str],
    hostname: &str,
    namespaces: serde_json::Value,
    sysctl: serde_json::Value,
) -> Vec<u8> {
    let mut v: serde_json::Value =
        serde_json::from_slice(&spec(args, false, hostname)).expect("spec() is JSON");
    v["linux"]["namespaces"] = namespaces;
    v["linux"]["sysctl"] = sysctl;
    if let Some(mounts) = v["mounts"].as_array_mut() {
        mounts.push(serde_json::json!({
            "destination": "/dev/shm", "type": "bind", "source": "/run/lazyvm/pod/shm",
            "options": ["rbind", "rw", "nosuid", "nodev", "noexec"]
        }));
    }
    v.to_string().into_bytes()
}

/// Namespaces as a CRI app container's spec names them: host paths.
fn host_ns(types: &[&str]) -> serde_json::Value {
    let mut list: Vec<serde_json::Value> = types
        .iter()
        .map(|t| {
            let file = if *t == "network" { "net" } else { t };
            serde_json::json!({"type": t, "path": format!("/proc/4242/ns/{file}")})
        })
        .collect();
    list.push(serde_json::json!({"type": "mount"}));
    serde_json::Value::Array(list)
}

/// The status code and message of a call that must fail.
fn status_of<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> Result<(ttrpc::Code, String), BoxError> {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => Ok((s.code(), s.message().to_owned())),
        other => Err(format!("expected an error status, got {other:?}").into()),
    }
}

/// An exec'd process running `script` (optionally on a terminal).
fn exec_process(script: &str, terminal: bool) -> Vec<u8> {
    serde_json::json!({
        "args": ["sh", "-c", script], "terminal": terminal, "env": ["PATH=/bin"],
        "cwd": "/", "user": {"uid": 0, "gid": 0}
    })
    .to_string()
    .into_bytes()
}

struct Agent {
    client: AgentClient,
}

impl Agent {
    async fn create(&self, cid: &str, spec: Vec<u8>) -> Result<u32, BoxError> {
        let storage = Storage {
            fstype: "bind".into(),
            source: "/run/lazyvm/shared/containers/busybox".into(),
            options: vec!["rbind".into(), "ro".into()],
            mount_point: format!("/run/lazyvm/containers/{cid}/rootfs"),
            ..Default::default()
        };
        self.create_with(cid, storage, spec).await
    }

    async fn create_with(
        &self,
        cid: &str,
        storage: Storage,
        spec: Vec<u8>,
    ) -> Result<u32, BoxError> {
        let r = self
            .client
            .create_container(
                ctx(),
                &CreateContainerRequest {
                    container_id: cid.into(),
                    storages: vec![storage],
                    oci_spec: spec,
                    ..Default::default()
                },
            )
            .await?;
        Ok(r.pid)
    }

    /// CreateContainer with a sandbox container and the busybox rootfs; returns the
    /// raw result.
    async fn create_in_pod(
        &self,
        cid: &str,
        spec: Vec<u8>,
        sandbox: &str,
    ) -> ttrpc::Result<CreateContainerResponse> {
        self.client
            .create_container(
                ctx(),
                &CreateContainerRequest {
                    container_id: cid.into(),
                    storages: vec![Storage {
                        fstype: "bind".into(),
                        source: "/run/lazyvm/shared/containers/busybox".into(),
                        options: vec!["rbind".into(), "ro".into()],
                        mount_point: format!("/run/lazyvm/containers/{cid}/rootfs"),
                        ..Default::default()
                    }],
                    oci_spec: spec,
                    sandbox_container_id: sandbox.into(),
                    ..Default::default()
                },
            )
            .await
    }

    async fn exec(&self, cid: &str, exec_id: &str, process: Vec<u8>) -> Result<u32, BoxError> {
        let r = self
            .client
            .exec_process(
                ctx(),
                &ExecProcessRequest {
                    container_id: cid.into(),
                    exec_id: exec_id.into(),
                    process,
                    ..Default::default()
                },
            )
            .await?;
        Ok(r.pid)
    }

    /// exec + wait + stdout.
    async fn exec_output(
        &self,
        cid: &str,
        exec_id: &str,
        script: &str,
    ) -> Result<String, BoxError> {
        self.exec(cid, exec_id, exec_process(script, false)).await?;
        let code = self.wait(cid, exec_id).await?;
        let out = self.read_all(cid, exec_id, false).await?;
        let err = self.read_all(cid, exec_id, true).await?;
        if code != 0 {
            return Err(format!("exec {script:?} exited with {code}: {out}{err}").into());
        }
        let req = RemoveProcessRequest {
            container_id: cid.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.client.remove_process(ctx(), &req).await?;
        Ok(out)
    }

    async fn start(&self, cid: &str) -> Result<(), BoxError> {
        self.client
            .start_container(
                ctx(),
                &StartContainerRequest {
                    container_id: cid.into(),
                    ..Default::default()
                },
            )
            .await?;
        Ok(())
    }

    async fn wait(&self, cid: &str, exec: &str) -> Result<i32, BoxError> {
        let r = self
            .client
            .wait_process(
                no_timeout(),
                &WaitProcessRequest {
                    container_id: cid.into(),
                    exec_id: exec.into(),
                    ..Default::default()
                },
            )
            .await?;
        Ok(r.exit_status)
    }

    async fn read_all(&self, cid: &str, exec: &str, stderr: bool) -> Result<String, BoxError> {
        let mut out = Vec::new();
        loop {
            let req = ReadStreamRequest {
                container_id: cid.into(),
                exec_id: exec.into(),
                ..Default::default()
            };
            let r = if stderr {
                self.client.read_stderr(no_timeout(), &req).await?
            } else {
                self.client.read_stdout(no_timeout(), &req).await?
            };
            if r.data.is_empty() {
                break;
            }
            out.extend(r.data);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    async fn remove(&self, cid: &str) -> Result<(), BoxError> {
        self.client
            .remove_container(
                ctx(),
                &RemoveContainerRequest {
                    container_id: cid.into(),
                    force: true,
                    ..Default::default()
                },
            )
            .await?;
        Ok(())
    }

    /// create + start + wait + stdout/stderr + remove.
    async fn run(&self, cid: &str, spec: Vec<u8>) -> Result<(i32, String, String), BoxError> {
        self.create(cid, spec).await?;
        self.start(cid).await?;
        let code = self.wait(cid, "").await?;
        let out = self.read_all(cid, "", false).await?;
        let err = self.read_all(cid, "", true).await?;
        self.remove(cid).await?;
        Ok((code, out, err))
    }
}

async fn boot_and_run(kernel: Kernel) -> Result<(), BoxError> {
    let guest = repo().join("build/guest");
    let (vmlinux, initrd) = match kernel {
        Kernel::Minimal => ("vmlinux", "initramfs.cpio"),
        Kernel::Debian => ("vmlinux-debian", "initramfs-debian.cpio"),
    };
    let (vmlinux, initrd) = (guest.join(vmlinux), guest.join(initrd));
    let tools = [
        "qemu-system-x86_64",
        "nydusd",
        "vhost-device-vsock",
        "busybox",
    ];
    let missing: Vec<String> = tools
        .iter()
        .filter(|t| which(t).is_none())
        .map(|t| t.to_string())
        .chain(
            [&vmlinux, &initrd]
                .iter()
                .filter(|p| !p.exists())
                .map(|p| p.display().to_string()),
        )
        .collect();
    if !missing.is_empty() {
        let msg = format!("{kernel:?}: missing {}", missing.join(", "));
        if std::env::var("LAZYVM_REQUIRE_GUEST").as_deref() == Ok("1") {
            return Err(msg.into());
        }
        eprintln!("skipping the guest test: {msg} (run make deps guest)");
        return Ok(());
    }

    // The VM is started by the production launch code (nydusd, vhost-device-vsock and
    // QEMU with the shim's command lines, the agent connection, CreateSandbox), so what
    // this test proves is what runs.
    let run_dir = PathBuf::from(format!("/tmp/lvt-{}-{kernel:?}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run_dir);
    let mut config = lazyvm::config::Config::default();
    let h = &mut config.hypervisor;
    h.accel = lazyvm::config::AccelSetting::Tcg;
    h.kernel = vmlinux.clone();
    h.initramfs = initrd.clone();
    h.machine = match kernel {
        Kernel::Minimal => lazyvm::hypervisor::Machine::Microvm,
        Kernel::Debian => lazyvm::hypervisor::Machine::Pc,
    };
    // Extra kernel command line words, e.g. LAZYVM_TEST_APPEND=lazyvm_no_pivot=1.
    if let Ok(extra) = std::env::var("LAZYVM_TEST_APPEND") {
        h.kernel_params = extra.split_whitespace().map(String::from).collect();
    }
    config.nydusd.path = which("nydusd").ok_or("nydusd is missing")?;
    config.vsock.path = which("vhost-device-vsock").ok_or("vhost-device-vsock is missing")?;
    let mut sandbox_spec = lazyvm::sandbox::SandboxSpec::new("guest-test", config);
    sandbox_spec.run_dir = run_dir.clone();
    let t0 = Instant::now();
    let sandbox = lazyvm::sandbox::Sandbox::start(sandbox_spec).await?;
    let dir = sandbox.dir().to_path_buf();
    let console = dir.join("vm/console.log");
    // The host's side of the tree the guest sees (read-only) at /run/lazyvm/shared.
    let shared = dir.join("private");
    busybox_rootfs(&shared.join("busybox"))?;

    let result = async {
        let client = sandbox
            .agent()
            .ok_or("the sandbox has no agent")?
            .raw()
            .clone();
        let health = client.health(ctx(), &HealthRequest::new()).await?;
        let ready = t0.elapsed();
        eprintln!(
            "{kernel:?}: agent ready {:.2} s after QEMU spawn (agent {}, kernel {})",
            ready.as_secs_f64(),
            health.version,
            health.kernel
        );
        let agent = Agent { client };
        agent
            .client
            .create_sandbox(
                ctx(),
                &CreateSandboxRequest {
                    hostname: "lazyvm-test".into(),
                    shm_size: 16 << 20,
                    ..Default::default()
                },
            )
            .await?;

        let t = Instant::now();
        let (code, out, err) = agent.run("hello", spec(&["echo", "hello"], false, "c")).await?;
        eprintln!("{kernel:?}: echo hello container in {:.2} s", t.elapsed().as_secs_f64());
        assert_eq!((code, out.as_str(), err.as_str()), (0, "hello\n", ""));

        let (code, ..) = agent.run("exit3", spec(&["sh", "-c", "exit 3"], false, "c")).await?;
        assert_eq!(code, 3);
        let (code, ..) = agent
            .run("kill9", spec_ns(&["sh", "-c", "kill -9 $$"], false, "c", false)).await?;
        assert_eq!(code, 137);
        let (code, out, _) = agent
            .run("ns", spec(&["sh", "-c", "echo $$ $(hostname); echo oops >&2"], false, "ctr-host"))
            .await?;
        assert_eq!((code, out.as_str()), (0, "1 ctr-host\n"));
        // The container's process runs with address-space randomisation (the guest's
        // static crun is at a fixed address, but none of that reaches the container):
        // 00000000 is PER_LINUX without ADDR_NO_RANDOMIZE (0x0040000).
        let (code, out, _) = agent
            .run("aslr", spec(&["cat", "/proc/self/personality"], false, "c"))
            .await?;
        assert_eq!((code, out.as_str()), (0, "00000000\n"));
        // The guest's crun enforces a seccomp filter (its static build links libseccomp):
        // one that fails chdir makes `cd` fail in the container, and only there.
        let cd = ["sh", "-c", "cd /tmp && echo moved || echo denied"];
        let filtered = String::from_utf8(spec(&cd, false, "c"))?.replace(
            r#""linux": {"#,
            r#""linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["chdir"], "action": "SCMP_ACT_ERRNO"}]},"#,
        );
        let (code, out, _) = agent.run("seccomp", filtered.into_bytes()).await?;
        assert_eq!((code, out.as_str()), (0, "denied\n"));
        let (code, out, _) = agent.run("no-seccomp", spec(&cd, false, "c")).await?;
        assert_eq!((code, out.as_str()), (0, "moved\n"));

        // An overlay rootfs as DESIGN.md's guest contract has it (lower and upper on the
        // share): a file written on the host is visible, writes land in snapshotdir/fs.
        // The upper and work directories are the guest's to write: bound read-write into
        // the tree, as the sandbox does for a nydus container.
        let snap = run_dir.join("ov-snapshot");
        let host = lazyvm::beneath::Beneath::open(&shared)?;
        for d in ["fs", "work"] {
            std::fs::create_dir_all(snap.join(d))?;
            host.bind(
                lazyvm::beneath::BindSource::Path(&snap.join(d)),
                Path::new("ov/snapshotdir").join(d).as_path(),
                lazyvm::beneath::BindOptions::default(),
            )?;
        }
        std::fs::write(shared.join("busybox/etc/from-host"), "host-data\n")?;
        let g = "/run/lazyvm/shared/containers";
        let overlay = Storage {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("lowerdir={g}/busybox"),
                format!("upperdir={g}/ov/snapshotdir/fs"),
                format!("workdir={g}/ov/snapshotdir/work"),
                "index=off".into(),
            ],
            mount_point: "/run/lazyvm/containers/ov/rootfs".into(),
            ..Default::default()
        };
        let rw = String::from_utf8(spec(
            &["sh", "-c", "cat /etc/from-host && echo written > /written"],
            false,
            "c",
        ))?
        .replace(r#""readonly": true"#, r#""readonly": false"#);
        agent.create_with("ov", overlay, rw.into_bytes()).await?;
        agent.start("ov").await?;
        assert_eq!(agent.wait("ov", "").await?, 0, "{}", agent.read_all("ov", "", true).await?);
        assert_eq!(agent.read_all("ov", "", false).await?, "host-data\n");
        agent.remove("ov").await?;
        assert_eq!(std::fs::read_to_string(snap.join("fs/written"))?, "written\n");

        // stdin reaches the process.
        agent.create("cat", spec(&["cat"], false, "c")).await?;
        agent.start("cat").await?;
        let w = agent
            .client
            .write_stdin(
                ctx(),
                &WriteStreamRequest {
                    container_id: "cat".into(),
                    data: b"ping\n".to_vec(),
                    ..Default::default()
                },
            )
            .await?;
        assert_eq!(w.len, 5);
        agent
            .client
            .close_stdin(
                ctx(),
                &CloseStdinRequest {
                    container_id: "cat".into(),
                    ..Default::default()
                },
            )
            .await?;
        assert_eq!(agent.wait("cat", "").await?, 0);
        assert_eq!(agent.read_all("cat", "", false).await?, "ping\n");
        agent.remove("cat").await?;

        // A terminal.
        let (code, out, _) = agent
            .run("tty", spec(&["sh", "-c", "[ -t 0 ] && [ -t 1 ] && echo isatty"], true, "c"))
            .await?;
        assert_eq!(code, 0);
        assert!(out.contains("isatty"), "tty output {out:?}");

        // exec, stats, pids, pause/resume, signal.
        agent.create("long", spec(&["sleep", "300"], false, "c")).await?;
        agent.start("long").await?;
        let process = r#"{"args":["sh","-c","echo from-exec"],"env":["PATH=/bin"],"cwd":"/","user":{"uid":0,"gid":0}}"#;
        agent
            .client
            .exec_process(
                ctx(),
                &ExecProcessRequest {
                    container_id: "long".into(),
                    exec_id: "e1".into(),
                    process: process.as_bytes().to_vec(),
                    ..Default::default()
                },
            )
            .await?;
        assert_eq!(agent.wait("long", "e1").await?, 0);
        assert_eq!(agent.read_all("long", "e1", false).await?, "from-exec\n");
        let e1 = RemoveProcessRequest {
            container_id: "long".into(),
            exec_id: "e1".into(),
            ..Default::default()
        };
        agent.client.remove_process(ctx(), &e1).await?;
        assert!(agent.client.remove_process(ctx(), &e1).await.is_err());
        // Once removed, an exec id can be used again; an exited exec's stdin closes
        // fine and a signal to it is NOT_FOUND; with a terminal too.
        for (id, tty) in [("e1", false), ("t1", true)] {
            agent.exec("long", id, exec_process("echo again", tty)).await?;
            assert_eq!(agent.wait("long", id).await?, 0);
            let out = agent.read_all("long", id, false).await?;
            assert!(out.contains("again"), "{id}: {out:?}");
            let close = CloseStdinRequest {
                container_id: "long".into(),
                exec_id: id.into(),
                ..Default::default()
            };
            agent.client.close_stdin(ctx(), &close).await?;
            let sig = SignalProcessRequest {
                container_id: "long".into(),
                exec_id: id.into(),
                signal: 15,
                ..Default::default()
            };
            let (code, msg) = status_of(agent.client.signal_process(ctx(), &sig).await)?;
            assert_eq!(code, ttrpc::Code::NOT_FOUND, "{msg}");
            let rm = RemoveProcessRequest {
                container_id: "long".into(),
                exec_id: id.into(),
                ..Default::default()
            };
            agent.client.remove_process(ctx(), &rm).await?;
        }
        let creq = ContainerRequest {
            container_id: "long".into(),
            ..Default::default()
        };
        let pids = agent.client.list_pids(ctx(), &creq).await?;
        assert_eq!(pids.pids.len(), 1, "pids {:?}", pids.pids);
        let stats = agent.client.stats_container(ctx(), &creq).await?;
        assert!(stats.memory.usage > 0);
        assert_eq!(stats.pids.current, 1);
        agent
            .client
            .update_container(
                ctx(),
                &UpdateContainerRequest {
                    container_id: "long".into(),
                    resources: br#"{"pids":{"limit":50}}"#.to_vec(),
                    ..Default::default()
                },
            )
            .await?;
        let stats = agent.client.stats_container(ctx(), &creq).await?;
        assert_eq!(stats.pids.limit, 50);
        agent.client.pause_container(ctx(), &creq).await?;
        agent.client.resume_container(ctx(), &creq).await?;
        agent
            .client
            .signal_process(
                ctx(),
                &SignalProcessRequest {
                    container_id: "long".into(),
                    signal: 9,
                    ..Default::default()
                },
            )
            .await?;
        assert_eq!(agent.wait("long", "").await?, 137);
        agent.remove("long").await?;

        // RemoveProcess frees an exec's stdio even while a process it left behind holds
        // the other ends: the agent's reader threads (seen from a container sharing the
        // VM's PID namespace, where /proc/1 is the agent) do not pile up.
        agent.create("probe", spec_ns(&["sleep", "300"], false, "c", false)).await?;
        agent.start("probe").await?;
        let threads = || async {
            let status = agent.exec_output("probe", "threads", "cat /proc/1/status").await?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse::<u32>().ok())
                .ok_or_else(|| BoxError::from(format!("no thread count in {status:?}")))
        };
        // So does an exec's process.
        let personality = agent.exec_output("probe", "aslr", "cat /proc/self/personality").await?;
        assert_eq!(personality, "00000000\n");
        // The guest's timers keep host time: a second's sleep takes a second on the host
        // (the minimal kernel takes the APIC timer's clock from `lapic_bus_khz=` instead
        // of calibrating it, and a wrong clock would stretch every sleep).
        let t = Instant::now();
        let slept = agent.exec_output("probe", "timer", "sleep 1; echo slept").await?;
        let took = t.elapsed();
        assert_eq!(slept, "slept\n");
        assert!(
            took >= Duration::from_millis(1000) && took < Duration::from_millis(1900),
            "sleep 1 in the guest took {took:?} of host time"
        );
        let before = threads().await?;
        for i in 0..3 {
            let id = format!("bg{i}");
            agent
                .exec("probe", &id, exec_process("sleep 300 & echo started", false))
                .await?;
            let first = agent
                .client
                .read_stdout(
                    ctx(),
                    &ReadStreamRequest {
                        container_id: "probe".into(),
                        exec_id: id.clone(),
                        ..Default::default()
                    },
                )
                .await?;
            assert_eq!(first.data, b"started\n");
            assert_eq!(agent.wait("probe", &id).await?, 0);
            let rm = RemoveProcessRequest {
                container_id: "probe".into(),
                exec_id: id,
                ..Default::default()
            };
            agent.client.remove_process(ctx(), &rm).await?;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut after = threads().await?;
        while after > before + 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            after = threads().await?;
        }
        assert!(after <= before + 1, "agent threads: {before} before, {after} after");
        agent.remove("probe").await?;

        // An OOM kill is reported.
        let oom = String::from_utf8(spec(&["sh", "-c", "head -c 200000000 /dev/zero | tail"], false, "c"))?
            .replace(
                r#""linux": {"#,
                r#""linux": {"resources": {"memory": {"limit": 16777216, "swap": 16777216}},"#,
            );
        agent.create("oom", oom.into_bytes()).await?;
        agent.start("oom").await?;
        let ev = agent
            .client
            .get_oom_event(
                context::with_timeout(Duration::from_secs(150).as_nanos() as i64),
                &GetOOMEventRequest::new(),
            )
            .await?;
        assert_eq!(ev.container_id, "oom");
        agent.wait("oom", "").await?;
        agent.remove("oom").await?;

        // UpdateNetwork without a NIC: lo comes up; an unknown MAC is NOT_FOUND (naming
        // it), a bad field INVALID_ARGUMENT, an existing route ALREADY_EXISTS.
        agent
            .client
            .update_network(ctx(), &UpdateNetworkRequest::new())
            .await?;
        let (code, out, err) = agent
            .run("lo", spec_ns(&["cat", "/sys/class/net/lo/flags"], false, "c", false))
            .await?;
        assert_eq!((code, out.as_str(), err.as_str()), (0, "0x9\n", ""));
        let unknown = UpdateNetworkRequest {
            interfaces: vec![Interface {
                mac: "02:00:00:00:00:99".into(),
                name: "eth0".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let (code, msg) = status_of(agent.client.update_network(ctx(), &unknown).await)?;
        assert_eq!(code, ttrpc::Code::NOT_FOUND, "{msg}");
        assert!(msg.contains("02:00:00:00:00:99"), "{msg}");
        let route = |destination: &str| UpdateNetworkRequest {
            routes: vec![Route {
                destination: destination.into(),
                device: "lo".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let (code, msg) = status_of(agent.client.update_network(ctx(), &route("10.123.0.1")).await)?;
        assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
        assert!(msg.contains("routes[0].destination"), "{msg}");
        agent
            .client
            .update_network(ctx(), &route("10.123.0.0/16"))
            .await?;
        let (code, msg) =
            status_of(agent.client.update_network(ctx(), &route("10.123.0.0/16")).await)?;
        assert_eq!(code, ttrpc::Code::ALREADY_EXISTS, "{msg}");

        // A pod: the sandbox container "pod" has its own IPC, UTS and PID namespaces (and
        // an IPC sysctl crun sets in it); "app" names them by host paths and joins them,
        // its VM-wide sysctl is written by the agent; both share the pod's shm.
        let pod = pod_spec(
            &["sleep", "300"],
            "pod-host",
            serde_json::json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                               {"type": "mount"},
                               {"type": "network", "path": "/var/run/netns/cni-1"}]),
            serde_json::json!({"kernel.shmmax": "12345"}),
        );
        agent.create_in_pod("pod", pod, "").await?;
        agent.start("pod").await?;
        let script = r#"hostname; cat /proc/sys/kernel/shmmax /proc/1/comm
            [ "$(readlink /proc/self/ns/ipc)" = "$(readlink /proc/1/ns/ipc)" ] && echo same-ipc
            cat /proc/sys/vm/overcommit_memory; set -- $(ls -ld /dev/shm); echo $1
            while read -r dev dir fs opts rest; do
              [ "$dir" = /dev/shm ] && o=${opts##*size=} && echo "$fs ${o%%,*}"
            done < /proc/mounts
            echo app-data > /dev/shm/x"#;
        let app = pod_spec(
            &["sh", "-c", script],
            "app-host",
            host_ns(&["pid", "ipc", "uts", "network"]),
            serde_json::json!({"vm.overcommit_memory": "1"}),
        );
        agent.create_in_pod("app", app, "pod").await.map_err(|e| format!("app: {e}"))?;
        agent.start("app").await?;
        let code = agent.wait("app", "").await?;
        let (out, err) = (agent.read_all("app", "", false).await?, agent.read_all("app", "", true).await?);
        assert_eq!(
            (code, out.as_str(), err.as_str()),
            (0, "pod-host\n12345\nsleep\nsame-ipc\n1\ndrwxrwxrwt\ntmpfs 16384k\n", "")
        );
        agent.remove("app").await?;
        assert_eq!(agent.exec_output("pod", "x", "cat /dev/shm/x").await?, "app-data\n");

        // What cannot be joined is refused before anything happens.
        let joiner = || pod_spec(&["true"], "c", host_ns(&["ipc"]), serde_json::json!({}));
        let (code, msg) = status_of(agent.create_in_pod("bad", joiner(), "").await)?;
        assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
        let (code, msg) = status_of(agent.create_in_pod("bad", joiner(), "nope").await)?;
        assert_eq!(code, ttrpc::Code::NOT_FOUND, "{msg}");
        let mnt = serde_json::json!([{"type": "mount", "path": "/proc/4242/ns/mnt"}]);
        let spec_mnt = pod_spec(&["true"], "c", mnt, serde_json::json!({}));
        let (code, msg) = status_of(agent.create_in_pod("bad", spec_mnt, "pod").await)?;
        assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
        assert!(msg.contains("mount"), "{msg}");
        let sysctl = |name: &str| {
            pod_spec(&["true"], "c", host_ns(&[]), serde_json::json!({ name: "1" }))
        };
        let (code, msg) = status_of(agent.create_in_pod("bad", sysctl("vm..x"), "").await)?;
        assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
        let (code, msg) =
            status_of(agent.create_in_pod("bad", sysctl("vm.no_such_sysctl"), "").await)?;
        assert_eq!(code, ttrpc::Code::INTERNAL, "{msg}");
        assert!(msg.contains("vm.no_such_sysctl"), "{msg}");
        // A sandbox whose init has exited has no namespaces to join.
        agent.create("dead", spec(&["true"], false, "c")).await?;
        agent.start("dead").await?;
        agent.wait("dead", "").await?;
        let (code, msg) = status_of(agent.create_in_pod("bad", joiner(), "dead").await)?;
        assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
        agent.remove("dead").await?;
        // Nothing was left behind by the refusals.
        let (code, ..) = agent.run("bad", spec(&["true"], false, "c")).await?;
        assert_eq!(code, 0);
        agent.remove("pod").await?;

        // A clear error for an unknown container.
        let err = agent.start("nope").await.expect_err("unknown container");
        assert!(err.to_string().contains("not found"), "{err}");

        agent
            .client
            .destroy_sandbox(ctx(), &DestroySandboxRequest::new())
            .await?;
        Ok::<(), BoxError>(())
    }
    .await;
    if let Err(e) = &result {
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("{kernel:?} failed: {e}\nconsole tail:");
        for l in tail.iter().rev() {
            eprintln!("  {l}");
        }
    }
    if std::env::var("LAZYVM_KEEP").as_deref() == Ok("1") {
        eprintln!("kept {}", dir.display());
        std::mem::forget(sandbox);
    } else {
        sandbox.stop().await;
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_minimal_kernel_runs_containers() {
    if let Err(e) = tokio::time::timeout(Duration::from_secs(600), boot_and_run(Kernel::Minimal))
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
    {
        panic!("minimal kernel: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_debian_kernel_runs_containers() {
    if let Err(e) = tokio::time::timeout(Duration::from_secs(600), boot_and_run(Kernel::Debian))
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
    {
        panic!("Debian kernel: {e}");
    }
}
