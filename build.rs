//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and generates the tonic code.
//! The encoded descriptor set is also written to OUT_DIR for server reflection.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/flashsale/v1/common.proto",
        "proto/flashsale/v1/auth.proto",
        "proto/flashsale/v1/admin.proto",
        "proto/flashsale/v1/purchase.proto",
        "proto/flashsale/v1/feeds.proto",
    ];
    println!("cargo:rerun-if-changed=proto");

    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true);
    compiler.open_files(files)?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("flashsale_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure().compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
