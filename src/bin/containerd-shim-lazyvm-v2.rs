//! `containerd-shim-lazyvm-v2`: containerd's runtime shim for `io.containerd.lazyvm.v2`.

#[tokio::main]
async fn main() {
    lazyvm::shim::main().await;
}
