//! The command line. Each subcommand has its own defaults; the shared parts (where the server
//! is, how buyers get tokens, where figures go) are flattened into each.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// `loadgen`: rehearsals and benchmarks of a flashsale server.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about = "Rehearses a flash sale against a flashsale server: verdict and figures")]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set up a sale, rush it with many buyers, print a verdict and figures (exit 1 on failure).
    Rehearse(RehearseArgs),
    /// Many attempts per unit: measures the sold-out rejection path (rejections/s, latency).
    Flood(FloodArgs),
    /// N concurrent WatchSale streams during a rush: purchase→delivery latency and memory per
    /// watcher.
    Watch(WatchArgs),
    /// Prepare an h2load run: write a gRPC request body and print the headers it needs.
    PrepareH2load(PrepareH2loadArgs),
}

/// Where the server is and how to get an admin token.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// gRPC address of the server (ignored with --spawn-server).
    #[arg(long, env = "LOADGEN_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// The server's JWT secret: mints the admin token (and buyer tokens with --mint-tokens).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// An admin token (from `flashsale token --role admin`), instead of minting one.
    #[arg(long, env = "LOADGEN_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Start this flashsale binary on 127.0.0.1 port 0 with a temp data dir and rate limits
    /// off, run against it and stop it at the end. Uses --jwt-secret or generates one.
    #[arg(long, value_name = "PATH")]
    pub spawn_server: Option<PathBuf>,
    /// Pid of the server process, to read its memory (RSS) from /proc (set by --spawn-server).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// HTTP/2 connections used round-robin for unary calls (one connection is served by one core).
    #[arg(long, default_value_t = 8)]
    pub channels: usize,
}

/// How the rush behaves, shared by every subcommand that runs one.
#[derive(Debug, Clone, Args)]
pub struct RushOptions {
    /// Mint buyer tokens with the server's secret instead of registering buyers through
    /// AuthService (registration runs Argon2 per buyer and takes a while for large runs).
    #[arg(long)]
    pub mint_tokens: bool,
    /// Cap on purchase attempts per second (0 = as fast as the concurrency allows).
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// Retries of one attempt after UNAVAILABLE or RATE_LIMITED (same idempotency key).
    #[arg(long, default_value_t = 20)]
    pub max_retries: u32,
    /// Seed of the random quantities (random when omitted).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Length of the sale's window, in seconds (it ends earlier when sold out).
    #[arg(long, default_value_t = 3600)]
    pub sale_secs: u64,
    /// Concurrent Register calls when registering buyers.
    #[arg(long, default_value_t = 8)]
    pub register_concurrency: usize,
    /// Write the figures as `name value` lines to this file (for scripts).
    #[arg(long, value_name = "FILE")]
    pub figures: Option<PathBuf>,
}

/// `loadgen rehearse`. The defaults reproduce the old project's rehearsal.
#[derive(Debug, Clone, Args)]
pub struct RehearseArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub rush: RushOptions,
    /// Distinct buyers.
    #[arg(long, default_value_t = 300)]
    pub buyers: usize,
    /// Purchases in flight at once.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// Smallest quantity of one purchase.
    #[arg(long, default_value_t = 1)]
    pub min_qty: u32,
    /// Largest quantity of one purchase (also the sale's max per purchase).
    #[arg(long, default_value_t = 7)]
    pub max_qty: u32,
    /// Units allocated to the sale.
    #[arg(long, default_value_t = 200)]
    pub units: i64,
    /// The sale's per-user limit (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    pub per_user_limit: u32,
    /// Purchases each buyer attempts (each with its own idempotency key).
    #[arg(long, default_value_t = 1)]
    pub attempts_per_buyer: usize,
    /// Write remaining stock and purchases/s over time to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub chart: Option<PathBuf>,
    /// Share of the attempts whose caller gives up (0..1): cancelled by its deadline, dropped, or
    /// its connection closed, after a random delay. Then patient buyers ask for the rest until
    /// the sale sells out, and the verdict checks that nothing was left behind.
    #[arg(long, default_value_t = 0.0, value_name = "RATIO")]
    pub abandon: f64,
    /// Abandoning callers give up within this many milliseconds.
    #[arg(long, default_value_t = 20, value_name = "MS")]
    pub abandon_within_ms: u64,
    /// Share of the abandoned attempts whose caller comes back later with the same key.
    #[arg(long, default_value_t = 0.5, value_name = "RATIO")]
    pub abandon_retry: f64,
    /// Longest one retry call of a come-back caller may wait for its answer before the verdict
    /// fails (the server's --in-flight-wait-ms, 3 s by default, plus slack).
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    pub retry_bound_ms: u64,
    /// N callers registering and logging in, over and over, during the rush (a sign-in storm):
    /// the same rush runs first without them, and the throughput of both is reported.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub sign_in_storm: usize,
    /// Sell with checkout holds of this many seconds (0: none): the rush's orders are HELD, then
    /// `--pay-ratio` of them are paid, the rest cancelled or left to expire.
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub hold_seconds: u32,
    /// With holds: the share of held orders paid (half the rest are cancelled, half expire).
    #[arg(long, default_value_t = 0.5, value_name = "RATIO")]
    pub pay_ratio: f64,
    /// With holds: late buyers wait in line for the units given back (and pay what they get).
    #[arg(long)]
    pub waitlist: bool,
    /// With `--waitlist`: how many late buyers line up.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub late_buyers: usize,
    /// Run the rush four times on fresh sales of the same server: alone, with a consumer of the
    /// order feed attached (WatchOrders of the sale with the admin token, as a fulfillment
    /// system, on a thread of its own), again with it, alone again (so that neither kind runs
    /// only on the fuller server). Reports both mean throughputs and their ratio, the feed's
    /// delivery lag, and checks it delivered every acknowledged order once.
    #[arg(long, conflicts_with_all = ["abandon", "sign_in_storm", "hold_seconds"])]
    pub order_feed: bool,
    /// Put the sale behind a waiting room: every buyer enters it (EnterQueue), waits to be
    /// admitted and buys one unit with the pass. Some buyers first try to buy without a pass.
    /// The verdict checks that no purchase succeeded without a pass, that admissions followed
    /// the line and that they came at the set rate (within 10%); the figures add the line's
    /// length, memory per waiting buyer and the server's CPU per update streamed.
    #[arg(long, conflicts_with_all = ["abandon", "sign_in_storm", "hold_seconds", "order_feed"])]
    pub queue: bool,
    /// With `--queue`: admissions per second (0: none, then --max-active must be set).
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub admit_per_second: u32,
    /// With `--queue`: most buyers admitted at once (0: no cap).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub max_active: u32,
    /// With `--queue`: the sale starts this many seconds after its creation and the room opens
    /// at once, so every buyer enters the pre-queue and is drawn at the start (0: the sale
    /// starts at once and buyers line up in arrival order).
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub prequeue_seconds: u32,
    /// With `--queue`: waiting-room streams per HTTP/2 connection.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub streams_per_connection: usize,
}

/// `loadgen flood`: far more attempts than units, quantity 1.
#[derive(Debug, Clone, Args)]
pub struct FloodArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub rush: RushOptions,
    /// Units allocated to the sale.
    #[arg(long, default_value_t = 100)]
    pub units: i64,
    /// Attempts per unit; the attempts beyond the units are the rejections measured.
    #[arg(long, default_value_t = 10)]
    pub attempts_per_unit: usize,
    /// Distinct buyers sharing the attempts.
    #[arg(long, default_value_t = 100)]
    pub buyers: usize,
    /// Purchases in flight at once.
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Write remaining stock and purchases/s over time to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub chart: Option<PathBuf>,
}

/// `loadgen watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub rush: RushOptions,
    /// Concurrent WatchSale streams on the sale.
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// WatchSale streams per HTTP/2 connection, as a proxy in front of the server (Envoy)
    /// multiplexes its browsers' streams.
    #[arg(long, default_value_t = 1000)]
    pub streams_per_connection: usize,
    /// Units allocated to the sale (quantity 1 each).
    #[arg(long, default_value_t = 1000)]
    pub units: i64,
    /// Distinct buyers, one purchase each.
    #[arg(long, default_value_t = 1000)]
    pub buyers: usize,
    /// Purchases in flight at once.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// Acknowledged purchases sampled per watcher for the latency histogram (0 = all).
    #[arg(long, default_value_t = 2000)]
    pub samples_per_watcher: usize,
}

/// Which request `prepare-h2load` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum H2loadKind {
    /// grpc.health.v1.Health/Check: the trivial baseline; no headers needed.
    Health,
    /// PurchaseService/Purchase on a sale that is already sold out, with a minted buyer token.
    SoldOut,
}

/// `loadgen prepare-h2load`.
#[derive(Debug, Clone, Args)]
pub struct PrepareH2loadArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The request to prepare.
    #[arg(long, value_enum)]
    pub kind: H2loadKind,
    /// Where to write the body (5-byte gRPC prefix + encoded message).
    #[arg(long, value_name = "FILE")]
    pub body: PathBuf,
}
