//! Endurance, CI size: 20 cycles of each kind (`make soak` runs 200, see
//! `benches/soak.rs`), each sampled every 10 cycles, against the same bounds and
//! leftover checks as the long run (`common/soak.rs`): container cycles in one
//! long-lived lazyvm pod and whole lazyvm pod cycles through containerd 1.6's CRI (in a
//! network namespace of the test's own), and `ctr run --rm` cycles. Needs root and the
//! guest image (`make guest`). Run with `--nocapture` to see the tables.

mod common;
#[path = "common/containerd.rs"]
mod containerd;
#[path = "common/cri.rs"]
mod cri;
#[path = "common/soak.rs"]
mod soak;

use cri::{within, CriEnv};

const CYCLES: usize = 20;
const REPORT_EVERY: usize = 10;
/// The bound on a whole test (each takes 1–2 minutes under TCG on 2 cores).
const TEST_SECS: u64 = 600;

fn assert_passed(report: &soak::Report) {
    report.print_growth();
    assert!(
        report.problems.is_empty(),
        "{}:\n{}",
        report.title,
        report.problems.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_twenty_cycles_of_containers_in_one_lazyvm_pod() {
    common::guest_dir();
    within("test", TEST_SECS, async {
        let env = CriEnv::start().await;
        let report = soak::containers_in_one_pod(&env, CYCLES, REPORT_EVERY).await;
        assert_passed(&report);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_twenty_cycles_of_lazyvm_pods() {
    common::guest_dir();
    within("test", TEST_SECS, async {
        let env = CriEnv::start().await;
        let report = soak::whole_pods(&env, CYCLES, REPORT_EVERY).await;
        assert_passed(&report);
    })
    .await;
}

#[test]
fn soak_twenty_cycles_of_ctr_run_rm() {
    common::guest_dir();
    let env = soak::CtrEnv::start();
    let report = soak::ctr_runs(&env, CYCLES, REPORT_EVERY);
    assert_passed(&report);
}
