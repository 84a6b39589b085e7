//! The `loadgen` binary: parses the command line, runs the subcommand, exits 1 when a verdict
//! fails.

use std::process::ExitCode;

use clap::Parser;
use loadgen::{Cli, Command};

/// mimalloc, as in the server: every call allocates a few small buffers (request, headers,
/// reply) on each runtime thread, where glibc malloc cost ~18% of the load generator's CPU —
/// CPU the server under test would otherwise get.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let report = match cli.command {
        Command::Rehearse(args) => loadgen::rehearse::run(args).await?,
        Command::Flood(args) => loadgen::flood::run(args).await?,
        Command::Watch(args) => loadgen::watch::run(args).await?,
        Command::PrepareH2load(args) => {
            loadgen::h2load::run(args).await?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    Ok(if report.verdict.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
