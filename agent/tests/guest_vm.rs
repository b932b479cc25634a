//! Boots the guest image (build/guest/, from `make guest`) under QEMU/TCG with the real
//! nydusd (virtio-fs) and vhost-device-vsock, talks to the agent with the generated ttrpc
//! client over hybrid vsock, and runs busybox containers through it.
//!
//! Needs root, qemu-system-x86_64, nydusd, vhost-device-vsock, busybox and the guest
//! image. Without the image (or tools) the test says so and passes, unless
//! LAZYVM_REQUIRE_GUEST=1. Every process it starts is stopped by pid, also on failure.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lazyvm_proto::agent::*;
use lazyvm_proto::agent_ttrpc::AgentClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
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

/// The host TSC frequency in kHz (the minimal kernel needs it on microvm).
fn tsc_khz() -> Option<u64> {
    if let Ok(t) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz") {
        return t.trim().parse().ok();
    }
    let from_mhz = |s: &str| s.trim().parse::<f64>().ok().map(|m| (m * 1000.0) as u64);
    if let Ok(out) = Command::new("dmesg").output() {
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines() {
            if let Some(rest) = line.split("tsc: Detected ").nth(1) {
                if let Some(mhz) = rest.split(" MHz").next() {
                    return from_mhz(mhz);
                }
            }
        }
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    from_mhz(line.split(':').nth(1)?)
}

#[derive(Clone, Copy, Debug)]
enum Kernel {
    Minimal,
    Debian,
}

/// Processes started by the test; killed (by pid) and reaped on drop.
struct Procs {
    children: Vec<(&'static str, Child)>,
    dir: PathBuf,
}

impl Drop for Procs {
    fn drop(&mut self) {
        // QEMU first (it holds the vhost-user connections), then the daemons.
        for (name, child) in self.children.iter_mut().rev() {
            if let Err(e) = child.kill() {
                eprintln!("stopping {name} (pid {}): {e}", child.id());
            }
            let _ = child.wait();
        }
        if std::env::var("LAZYVM_KEEP").as_deref() == Ok("1") {
            eprintln!("kept {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn spawn(procs: &mut Procs, name: &'static str, cmd: &mut Command) -> Result<(), BoxError> {
    let log = std::fs::File::create(procs.dir.join(format!("{name}.log")))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting {name}: {e}"))?;
    procs.children.push((name, child));
    Ok(())
}

async fn wait_for_socket(path: &Path) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        if Instant::now() > deadline {
            return Err(format!("{} did not appear", path.display()).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// One HTTP request to nydusd's API socket; returns the status code.
async fn nydusd_api(sock: &Path, method: &str, path: &str, body: &str) -> Result<u16, BoxError> {
    let mut s = UnixStream::connect(sock).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    // Read the status line only (nydusd may keep the connection open).
    let mut resp = Vec::new();
    let mut buf = [0u8; 1024];
    while !resp.windows(2).any(|w| w == b"\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await??;
        if n == 0 {
            break;
        }
        resp.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&resp);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad response from nydusd: {text}"))?;
    Ok(code)
}

/// Hybrid vsock: connect, `CONNECT 1024\n`, expect `OK ...\n`. Retries while the guest
/// boots.
async fn connect_agent(uds: &Path, deadline: Instant) -> Result<UnixStream, BoxError> {
    loop {
        let attempt = async {
            let mut s = UnixStream::connect(uds).await?;
            s.write_all(b"CONNECT 1024\n").await?;
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            loop {
                if s.read(&mut b).await? == 0 {
                    return Err::<UnixStream, BoxError>("closed before OK".into());
                }
                if b[0] == b'\n' {
                    break;
                }
                line.push(b[0]);
            }
            if !line.starts_with(b"OK") {
                return Err(
                    format!("unexpected reply {:?}", String::from_utf8_lossy(&line)).into(),
                );
            }
            Ok(s)
        };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) if Instant::now() > deadline => return Err(e),
            Err(_) if Instant::now() > deadline => return Err("connect timed out".into()),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
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
        "sh", "echo", "cat", "sleep", "hostname", "tty", "kill", "ls",
    ] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
    }
    let mut f = std::fs::File::create(dir.join("etc/passwd"))?;
    writeln!(f, "root:x:0:0:root:/:/bin/sh")?;
    Ok(())
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
        Kernel::Minimal => ("vmlinux", "initramfs.cpio.gz"),
        Kernel::Debian => ("vmlinux-debian", "initramfs-debian.cpio.gz"),
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

    let dir = PathBuf::from(format!("/tmp/lvt-{}-{kernel:?}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("shared"))?;
    let mut procs = Procs {
        children: Vec::new(),
        dir: dir.clone(),
    };
    busybox_rootfs(&dir.join("shared/busybox"))?;

    let (vhost_vsock, uds) = (dir.join("vhost-vsock.sock"), dir.join("vsock.sock"));
    let (fs_sock, api_sock) = (dir.join("fs.sock"), dir.join("api.sock"));
    spawn(
        &mut procs,
        "vhost-device-vsock",
        Command::new("vhost-device-vsock")
            .arg("--guest-cid=3")
            .arg(format!("--socket={}", vhost_vsock.display()))
            .arg(format!("--uds-path={}", uds.display())),
    )?;
    spawn(
        &mut procs,
        "nydusd",
        Command::new("nydusd")
            .arg("virtiofs")
            .arg("--sock")
            .arg(&fs_sock)
            .arg("--apisock")
            .arg(&api_sock)
            .args(["--rlimit-nofile", "0"]),
    )?;
    wait_for_socket(&api_sock).await?;
    wait_for_socket(&vhost_vsock).await?;
    let body = format!(
        r#"{{"fs_type":"passthrough_fs","source":"{}","config":""}}"#,
        dir.join("shared").display()
    );
    let code = nydusd_api(
        &api_sock,
        "POST",
        "/api/v1/mount?mountpoint=/containers",
        &body,
    )
    .await?;
    assert_eq!(code, 204, "nydusd passthrough mount");

    let (machine, append) = match kernel {
        Kernel::Minimal => (
            "microvm,pit=on,pcie=on,rtc=on,acpi=on",
            format!(
                "console=ttyS0 panic=-1 tsc_early_khz={}",
                tsc_khz().ok_or("cannot find the host TSC frequency")?
            ),
        ),
        Kernel::Debian => ("pc", "console=ttyS0 panic=-1".to_owned()),
    };
    // Extra kernel command line words, e.g. LAZYVM_TEST_APPEND=lazyvm_no_pivot=1.
    let append = match std::env::var("LAZYVM_TEST_APPEND") {
        Ok(extra) if !extra.is_empty() => format!("{append} {extra}"),
        _ => append,
    };
    let console = dir.join("console.log");
    let t0 = Instant::now();
    spawn(
        &mut procs,
        "qemu",
        Command::new("qemu-system-x86_64")
            .args([
                "-M", machine, "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "512M",
            ])
            .args(["-object", "memory-backend-memfd,id=mem,size=512M,share=on"])
            .args(["-numa", "node,memdev=mem"])
            .arg("-kernel")
            .arg(&vmlinux)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", &append])
            .args(["-display", "none", "-no-reboot", "-nodefaults"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-chardev")
            .arg(format!("socket,id=vsock,path={}", vhost_vsock.display()))
            .args(["-device", "vhost-user-vsock-pci,chardev=vsock"])
            .arg("-chardev")
            .arg(format!("socket,id=fs,path={}", fs_sock.display()))
            .args(["-device", "vhost-user-fs-pci,chardev=fs,tag=lazyvm"]),
    )?;

    let result = async {
        let stream = connect_agent(&uds, Instant::now() + Duration::from_secs(60)).await?;
        let client = AgentClient::new(ttrpc::r#async::Client::new(
            ttrpc::r#async::transport::Socket::new(stream),
        ));
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

        // An overlay rootfs as DESIGN.md's guest contract has it (lower and upper on the
        // share): a file written on the host is visible, writes land in snapshotdir/fs.
        let snap = dir.join("shared/ov/snapshotdir");
        std::fs::create_dir_all(snap.join("fs"))?;
        std::fs::create_dir_all(snap.join("work"))?;
        std::fs::write(dir.join("shared/busybox/etc/from-host"), "host-data\n")?;
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
    drop(procs);
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_minimal_kernel_runs_containers() {
    if let Err(e) = tokio::time::timeout(Duration::from_secs(400), boot_and_run(Kernel::Minimal))
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
    {
        panic!("minimal kernel: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_debian_kernel_runs_containers() {
    if let Err(e) = tokio::time::timeout(Duration::from_secs(400), boot_and_run(Kernel::Debian))
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
    {
        panic!("Debian kernel: {e}");
    }
}
