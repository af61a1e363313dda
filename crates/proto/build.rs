//! Compiles `proto/driftwatch/v1/*.proto` with protox (pure Rust: no system protoc).

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let dir = root.join("driftwatch/v1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    files.sort();
    println!("cargo:rerun-if-changed={}", dir.display());
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    // Source info keeps the .proto comments, so reflection (grpcurl describe) shows them.
    let fds = protox::Compiler::new([&root])?
        .include_source_info(true)
        .include_imports(true)
        .open_files(&files)?
        .file_descriptor_set();

    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("driftwatch_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .btree_map(".")
        // Small per-RPC buffers: see src/codec.rs.
        .codec_path("crate::codec::CompactCodec")
        // `rpc Connect` would clash with the generated `Client::connect(dst)`
        // constructor; clients are built from a `Channel` with `::new` instead.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
