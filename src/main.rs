//! The `flashsale` binary: parses the command line and calls the library.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use flashsale::clock::{Clock, SystemClock};
use flashsale::config::{Cli, Command, ServeArgs, TokenArgs};
use flashsale::domain::Role;

/// mimalloc instead of glibc malloc: the purchase path allocates small, short-lived buffers
/// (request, order, reply) on many threads, where glibc's allocator cost ~15% of server CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    // A task woken by another runs next on that thread (the LIFO slot). With thousands of
    // WatchSale streams on a few connections, each stream's frame woke its connection's task,
    // which then ran at once and wrote that one frame: a `writev` per frame. Without the slot
    // the connection task runs after the streams woken with it and writes their frames
    // together: ~15% less server CPU per delivered snapshot and a lower p99 with 10,000
    // watchers (BENCHMARKS.md). `tokio_unstable` is set in .cargo/config.toml.
    #[cfg(tokio_unstable)]
    runtime.disable_lifo_slot();
    runtime.build()?.block_on(async {
        match cli.command {
            Some(Command::Token(args)) => token(args),
            Some(Command::Export(args)) => flashsale::export::run(args).await,
            Some(Command::Serve(args)) => serve(*args).await,
            None => serve(cli.serve).await,
        }
    })
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json") {
        logs.json().init();
    } else {
        logs.init();
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logs();
    let grpc = TcpListener::bind(SocketAddr::new(args.host, args.port))
        .await
        .with_context(|| format!("binding the gRPC port {}", args.port))?;
    let metrics = TcpListener::bind(SocketAddr::new(args.host, args.metrics_port))
        .await
        .with_context(|| format!("binding the metrics port {}", args.metrics_port))?;
    // One machine-readable line for scripts and tests that start the binary on port 0.
    println!("flashsale listening grpc={} metrics={}", grpc.local_addr()?, metrics.local_addr()?);
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let listeners = flashsale::server::Listeners { grpc, metrics: Some(metrics) };
    flashsale::server::run(listeners, args.settings.into(), Arc::new(SystemClock), shutdown).await
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = futures::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
    tracing::info!("shutdown requested");
    shutdown.cancel();
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let role = Role::parse(&args.role)?;
    let secret = flashsale::auth::load_or_create_secret(args.secret.jwt_secret.as_deref(), &args.secret.data_dir)?;
    let keys = flashsale::auth::JwtKeys::new(&secret);
    let (token, _) =
        keys.issue(&args.sub, &args.name, role, SystemClock.now(), std::time::Duration::from_secs(args.ttl_secs));
    println!("{token}");
    Ok(())
}
