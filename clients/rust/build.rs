//! Generates the client side of the API from the repository's `proto/` (pure Rust: protox, no
//! system protoc).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let files = ["common", "auth", "admin", "purchase", "feeds", "orders"]
        .map(|f| root.join(format!("flashsale/v1/{f}.proto")));
    let mut compiler = protox::Compiler::new([&root])?;
    compiler.include_imports(true);
    compiler.open_files(files)?;
    tonic_prost_build::configure().build_server(false).compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
