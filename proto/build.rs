//! Generates the ttrpc client and server (async) and the protobuf messages from
//! `agent.proto` into `$OUT_DIR`.

use std::{env, fs, path::PathBuf};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    println!("cargo:rerun-if-changed=agent.proto");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    Codegen::new()
        .inputs([dir.join("agent.proto")])
        .include(&dir)
        .rust_protobuf()
        .rust_protobuf_customize(ProtobufCustomize::default().generate_accessors(true))
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .out_dir(&out)
        .run()
        .expect("generating code from agent.proto");

    // `include!` cannot take inner attributes or inner doc comments: drop them.
    for name in ["agent.rs", "agent_ttrpc.rs"] {
        let path = out.join(name);
        let text = fs::read_to_string(&path).expect("reading generated code");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#!") && !l.starts_with("//!"))
            .collect();
        fs::write(&path, kept.join("\n")).expect("writing generated code");
    }
}
