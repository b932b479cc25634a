//! `lazyvm`: the user-facing command.
fn main() {
    eprintln!("lazyvm {}: no commands yet", env!("CARGO_PKG_VERSION"));
    std::process::exit(2);
}
