//! The lazy-pull benchmark: a pod's cold start from a throttled registry, lazyvm with a
//! nydus image against a full pull, as the image grows.
//!
//! Everything runs in network namespaces the benchmark creates: Debian's docker-registry
//! (its responses shaped to `LAZYVM_PULL_MBIT`, default 80 Mbit/s, with htb on the
//! registry's port), lazyvm-snapshotter and a private containerd with the CRI. Images
//! are built here from one rootfs per size (busybox plus incompressible data), each as a
//! nydus image and as a plain OCI image. Every sample is cold: a fresh containerd root
//! and state, snapshotter root and nydusd cache (only the registry's storage is kept).
//!
//! Legs, alternated in each round, timed from PullImage through RunPodSandbox,
//! CreateContainer and StartContainer to the container's first output line:
//! - (a) lazyvm + the nydus image (and a second workload reading 10% of the data);
//! - (b) lazyvm + the OCI image (full pull and unpack through the same snapshotter);
//! - (c) runc + the OCI image: the reference without a VM.
//!
//! Prints, per size, the medians, the ratios b/a and c/a, the bytes fetched from the
//! registry (its access log; nydusd's backend metrics beside them for (a)), and the
//! physical limit of (a): that run's VM boot + bytes read ÷ the shaped rate. Writes an
//! SVG chart (`LAZYVM_PULL_SVG`, default `target/bench-pull.svg`).
//!
//! `make bench-pull`; `LAZYVM_PULL_SIZES=100,300` and `LAZYVM_PULL_ROUNDS=1` shorten it.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/cri.rs"]
mod cri;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::registry::{Registry, REGISTRY};
use cri::{CriEnv, LazyOptions, LAZYVM, RUNC};
use k8s_cri::v1::{ImageSpec, NamespaceMode};

const MARKER: &str = "lazyvm-bench-pull-first-line";
const MIB: f64 = (1 << 20) as f64;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Leg {
    /// lazyvm + nydus, reading a few small files.
    Lazy,
    /// lazyvm + nydus, reading 10% of the data.
    LazyTenth,
    /// lazyvm + OCI.
    Full,
    /// runc + OCI.
    Runc,
}

impl Leg {
    fn name(self) -> &'static str {
        match self {
            Leg::Lazy => "(a) lazyvm+nydus",
            Leg::LazyTenth => "(a10) lazyvm+nydus, 10% read",
            Leg::Full => "(b) lazyvm+OCI",
            Leg::Runc => "(c) runc+OCI",
        }
    }
}

struct Image {
    mib: usize,
    nydus: String,
    oci: String,
    /// The nydus data blob's digest and size.
    blob: String,
    blob_bytes: u64,
    /// The OCI layer's size.
    oci_bytes: u64,
}

#[derive(Clone, Debug)]
struct Sample {
    time: Duration,
    /// Bytes the registry served for the leg.
    fetched: u64,
    /// Bytes of the nydus data blob the registry served (ranged reads).
    blob_read: u64,
    /// nydusd's backend read bytes (lazyvm + nydus legs).
    nydusd_read: Option<u64>,
    /// The VM's boot to agent-ready (lazyvm legs).
    vm_boot: Option<Duration>,
}

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

fn median<T: Clone + PartialOrd>(v: &[T]) -> T {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2].clone()
}

/// Builds and pushes the nydus and OCI images of one rootfs of `mib` MiB of data.
fn push_images(registry: &Registry, work: &Path, mib: usize) -> Image {
    let dir = work.join(format!("rootfs-{mib}"));
    let rootfs = cri::app_rootfs(&dir);
    std::fs::write(rootfs.join("etc/motd"), "lazyvm pull benchmark\n").unwrap();
    common::write_incompressible(&rootfs.join("data"), mib / 50, 50);
    let nydus = format!("{REGISTRY}/bench/nydus-{mib}:v1");
    let oci = format!("{REGISTRY}/bench/oci-{mib}:v1");
    let from = format!("dir:{}", rootfs.display());
    print!("{}", registry.convert(&from, &nydus, "nydus"));
    print!("{}", registry.convert(&from, &oci, "oci"));
    let _ = std::fs::remove_dir_all(&dir);
    let n = registry.manifest(&format!("bench/nydus-{mib}"), "v1");
    let o = registry.manifest(&format!("bench/oci-{mib}"), "v1");
    Image {
        mib,
        nydus,
        oci,
        blob: n["layers"][0]["digest"].as_str().unwrap().to_string(),
        blob_bytes: n["layers"][0]["size"].as_u64().unwrap(),
        oci_bytes: o["layers"][0]["size"].as_u64().unwrap(),
    }
}

/// The VM boot time the shim logged for pod `id`.
fn vm_boot(env: &CriEnv, id: &str) -> Option<Duration> {
    let log = std::fs::read_to_string(env.log_path()).ok()?;
    let line = log
        .lines()
        .find(|l| l.contains("lazyvm timings") && l.contains(id))?;
    let ms: f64 = line
        .split("vm_boot_ms=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(Duration::from_secs_f64(ms / 1000.0))
}

/// One cold sample of `leg` for `image`.
async fn sample(storage: &Path, image: &Image, leg: Leg, mbit: u32, n: usize) -> Sample {
    let env = CriEnv::start_lazy_with(LazyOptions {
        registry_storage: Some(storage),
        ..Default::default()
    })
    .await;
    let registry = &env.lazy.as_ref().unwrap().registry;
    registry.shape(mbit);
    let (reference, handler) = match leg {
        Leg::Lazy | Leg::LazyTenth => (&image.nydus, LAZYVM),
        Leg::Full => (&image.oci, LAZYVM),
        Leg::Runc => (&image.oci, RUNC),
    };
    let script = match leg {
        Leg::LazyTenth => {
            // A tenth of the data, from the start of the 50 MiB files in order.
            let mut left = image.mib / 10;
            let mut reads = String::new();
            let mut part = 0;
            while left > 0 {
                let n = left.min(50);
                reads +=
                    &format!("dd if=/data/part{part} of=/dev/null bs=1M count={n} 2>/dev/null; ");
                left -= n;
                part += 1;
            }
            format!("cat /etc/motd /etc/hello.txt >/dev/null; {reads}echo {MARKER}; sleep 600")
        }
        _ => format!("cat /etc/motd /etc/hello.txt >/dev/null; echo {MARKER}; sleep 600"),
    };
    let mark = registry.log_mark();
    let t = Instant::now();
    env.pull_image(reference).await.expect("PullImage");
    let pod = env.run_pod(&format!("pull{n}"), handler).await;
    let mut config = env.container_config("app", &["sh", "-c", &script], NamespaceMode::Container);
    config.image = Some(ImageSpec {
        image: reference.clone(),
        ..Default::default()
    });
    let cid = env
        .create_container_with(&pod, config)
        .await
        .expect("CreateContainer");
    env.start_container(&cid).await;
    let log = pod.log_dir.join("app.log");
    let deadline = Instant::now() + Duration::from_secs(900);
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains(MARKER)) {
        assert!(Instant::now() < deadline, "no output from {leg:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let time = t.elapsed();
    let requests = registry.requests_since(mark);
    let fetched = requests
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
        .map(|r| r.bytes)
        .sum();
    let (blob_read, _) = Registry::blob_reads(&requests, &image.blob);
    let nydusd_read = if matches!(leg, Leg::Lazy | Leg::LazyTenth) {
        let api = lazyvm::sandbox::sandbox_dir(Path::new(lazyvm::sandbox::RUN_DIR), &pod.id)
            .join("nydusd-api.sock");
        lazyvm::nydusd::NydusClient::new(api)
            .backend_metrics(None)
            .await
            .ok()
            .map(|m| m.read_amount_total)
    } else {
        None
    };
    let vm_boot = if handler == LAZYVM {
        vm_boot(&env, &pod.id)
    } else {
        None
    };
    env.stop_pod(&pod).await;
    env.remove_pod(&pod).await;
    Sample {
        time,
        fetched,
        blob_read,
        nydusd_read,
        vm_boot,
    }
}

fn chart(
    path: &Path,
    rows: &[(usize, [f64; 4])],
    mbit: u32,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_x = rows.iter().map(|r| r.0).max().unwrap_or(100) as f64 * 1.05;
    let max_y = rows
        .iter()
        .flat_map(|r| r.1.iter().copied())
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut c = ChartBuilder::on(&root)
        .caption(
            format!("Cold pod start to first output, registry at {mbit} Mbit/s (TCG, 2 cores)"),
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..max_x, 0f64..max_y)?;
    c.configure_mesh()
        .x_desc("image data (MiB)")
        .y_desc("seconds")
        .draw()?;
    const LEGS: [(&str, RGBColor); 4] = [
        ("(a) lazyvm + nydus", RGBColor(0, 120, 60)),
        ("(b) lazyvm + OCI (full pull)", RGBColor(200, 60, 0)),
        ("(c) runc + OCI (full pull)", RGBColor(60, 60, 200)),
        ("physical limit of (a)", RGBColor(120, 120, 120)),
    ];
    for (i, (name, color)) in LEGS.iter().enumerate() {
        let pts: Vec<(f64, f64)> = rows.iter().map(|r| (r.0 as f64, r.1[i])).collect();
        c.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        c.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

#[tokio::main]
async fn main() {
    let sizes = env_list("LAZYVM_PULL_SIZES", &[100, 300, 600]);
    let rounds = env_list("LAZYVM_PULL_ROUNDS", &[3])[0].max(1);
    let mbit = env_list("LAZYVM_PULL_MBIT", &[80])[0] as u32;
    let svg = std::env::var_os("LAZYVM_PULL_SVG")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-pull.svg"));
    let tmp = tempfile::Builder::new().prefix("lzpull").tempdir().unwrap();
    let storage = tmp.path().join("registry-storage");

    // The images, pushed once into a storage every sample's registry serves.
    let images: Vec<Image> = {
        let setup = CriEnv::start_lazy_with(LazyOptions {
            registry_storage: Some(&storage),
            ..Default::default()
        })
        .await;
        let registry = &setup.lazy.as_ref().unwrap().registry;
        sizes
            .iter()
            .map(|&mib| push_images(registry, tmp.path(), mib))
            .collect()
    };

    let rate = mbit as f64 * 1e6 / 8.0;
    let mut rows = Vec::new();
    let mut table = String::new();
    let mut n = 0;
    for image in &images {
        let legs = [Leg::Lazy, Leg::Full, Leg::Runc, Leg::LazyTenth];
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); legs.len()];
        for round in 0..rounds {
            // Alternate the order from round to round.
            let mut order: Vec<usize> = (0..legs.len()).collect();
            order.rotate_left(round % legs.len());
            for i in order {
                n += 1;
                let s = sample(&storage, image, legs[i], mbit, n).await;
                println!(
                    "{} MiB, round {}, {:32} {:7.2} s, fetched {:7.1} MiB{}",
                    image.mib,
                    round + 1,
                    legs[i].name(),
                    s.time.as_secs_f64(),
                    s.fetched as f64 / MIB,
                    s.nydusd_read
                        .map(|r| format!(", nydusd read {:.1} MiB", r as f64 / MIB))
                        .unwrap_or_default()
                );
                samples[i].push(s);
            }
        }
        let t = |i: usize| {
            median(
                &samples[i]
                    .iter()
                    .map(|s| s.time.as_secs_f64())
                    .collect::<Vec<_>>(),
            )
        };
        let f = |i: usize| median(&samples[i].iter().map(|s| s.fetched).collect::<Vec<_>>());
        let (a, b, c, a10) = (t(0), t(1), t(2), t(3));
        let boot = median(
            &samples[0]
                .iter()
                .filter_map(|s| s.vm_boot.map(|d| d.as_secs_f64()))
                .collect::<Vec<_>>(),
        );
        let blob_read = median(&samples[0].iter().map(|s| s.blob_read).collect::<Vec<_>>());
        let limit = boot + blob_read as f64 / rate;
        let nydusd = median(
            &samples[0]
                .iter()
                .filter_map(|s| s.nydusd_read)
                .collect::<Vec<_>>(),
        );
        table += &format!(
            "| {} MiB (blob {:.0} MiB, OCI layer {:.0} MiB) | {a:.2} s | {b:.2} s | {c:.2} s | {:.1}× | {:.1}× | {:.1} / {:.1} / {:.1} MiB (blob {:.2}%; nydusd read {:.1} MiB) | {limit:.2} s (+{:.2} s) | {a10:.2} s, {:.1} MiB |\n",
            image.mib,
            image.blob_bytes as f64 / MIB,
            image.oci_bytes as f64 / MIB,
            b / a,
            c / a,
            f(0) as f64 / MIB,
            f(1) as f64 / MIB,
            f(2) as f64 / MIB,
            blob_read as f64 * 100.0 / image.blob_bytes as f64,
            nydusd as f64 / MIB,
            a - limit,
            f(3) as f64 / MIB,
        );
        rows.push((image.mib, [a, b, c, limit]));
    }
    println!(
        "\nCold pod start to first output, registry shaped to {mbit} Mbit/s, medians of {rounds}:\n"
    );
    println!("| image | (a) lazyvm+nydus | (b) lazyvm+OCI | (c) runc+OCI | b/a | c/a | fetched a / b / c | limit of (a): boot + read÷rate | (a10) 10% read |");
    println!("|---|---|---|---|---|---|---|---|---|");
    print!("{table}");
    match chart(&svg, &rows, mbit) {
        Ok(()) => println!("\nchart: {}", svg.display()),
        Err(e) => println!("\nchart: {e}"),
    }
}
