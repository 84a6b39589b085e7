//! Command line and environment. Every flag is also an environment variable; the names of the
//! project this replaces still work (PORT, JWT_SECRET, MONGODB_URI, REDIS_URI).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// The `flashsale` command line.
#[derive(Debug, Parser)]
#[command(name = "flashsale", version, about = "Flash-sale service: gRPC, grpc-web and live feeds")]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `serve`, also accepted without the subcommand.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API (the default).
    Serve(Box<ServeArgs>),
    /// Print a token signed with the server's secret (for the first admin, or for rehearsals).
    Token(TokenArgs),
    /// Write a sale's orders to a file (CSV or JSON lines) through the paged ListSaleOrders.
    Export(ExportArgs),
}

/// Options of `flashsale export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// The sale whose orders to write.
    #[arg(long)]
    pub sale: String,
    /// csv (a header line, then one order per line) or jsonl (one JSON object per line).
    #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
    pub format: ExportFormat,
    /// The server's gRPC address.
    #[arg(long, env = "FLASHSALE_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// An admin or fulfillment token (`flashsale token`, or AdminService.IssueServiceToken).
    #[arg(long, env = "FLASHSALE_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The file to write; standard output when absent. The file appears only once complete.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Orders per page asked of the server (1..1000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub page_size: i32,
}

/// What `flashsale export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// Comma-separated values with a header line (RFC 4180 quoting).
    Csv,
    /// One JSON object per line.
    Jsonl,
}

/// Options of `flashsale serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,
    /// gRPC and grpc-web port (0 picks a free one; the bound address is printed).
    #[arg(long, env = "PORT", default_value_t = 50051)]
    pub port: u16,
    /// Prometheus metrics port (`GET /metrics`); 0 picks a free one.
    #[arg(long, env = "METRICS_PORT", default_value_t = 9090)]
    pub metrics_port: u16,
    /// The service's own options.
    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// Options shared by `serve` and `token`: where the data and the signing secret live.
#[derive(Debug, Clone, Args)]
pub struct SecretArgs {
    /// Directory of the embedded store and of the generated JWT secret.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// HS256 signing secret (at least 32 bytes). Without it, one is generated and kept in
    /// `<data-dir>/jwt_secret` so tokens survive restarts. Never logged.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
}

/// Options of the service itself.
#[derive(Debug, Clone, Args)]
pub struct SettingsArgs {
    /// Data directory and signing secret.
    #[command(flatten)]
    pub secret: SecretArgs,
    /// Lifetime of issued tokens, in seconds.
    #[arg(long, env = "TOKEN_TTL_SECS", default_value_t = 3600)]
    pub token_ttl_secs: u64,
    /// Email of an admin account created (or promoted) at start-up.
    #[arg(long, env = "ADMIN_EMAIL", requires = "admin_password")]
    pub admin_email: Option<String>,
    /// Password of that admin account. Never logged.
    #[arg(long, env = "ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// Shortest interval between two messages of one feed, in milliseconds.
    #[arg(long, env = "FEED_INTERVAL_MS", default_value_t = 50)]
    pub feed_interval_ms: u64,
    /// Purchases per second allowed per buyer (0 = no limit).
    #[arg(long, env = "BUYER_PURCHASES_PER_SEC", default_value_t = 10)]
    pub buyer_purchases_per_sec: u32,
    /// Purchases per second allowed per client address (0 = no limit; a rehearsal from one
    /// machine sets 0).
    #[arg(long, env = "IP_PURCHASES_PER_SEC", default_value_t = 2000)]
    pub ip_purchases_per_sec: u32,
    /// Logins per second allowed per client address (0 = no limit).
    #[arg(long, env = "IP_LOGINS_PER_SEC", default_value_t = 20)]
    pub ip_logins_per_sec: u32,
    /// Proxies whose forwarded client addresses are believed, comma-separated addresses or
    /// CIDR blocks (e.g. `10.0.0.7,172.28.0.0/24`). From such a peer the client's address, for
    /// the per-address limits, is the rightmost address of `x-forwarded-for` that is not a
    /// trusted proxy, else Envoy's `x-envoy-external-address`; from any other peer both headers
    /// are ignored.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_proxy)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// PEM certificate chain: serve gRPC, grpc-web and the page over TLS (with `--tls-key`).
    /// Without it the port speaks plain text (HTTP/2 and HTTP/1.1), as behind a proxy that
    /// terminates TLS.
    #[arg(long, env = "TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Largest request message accepted, in bytes.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,
    /// How long open streams and in-flight requests may take to finish at shutdown, in ms.
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 5000)]
    pub shutdown_grace_ms: u64,
    /// Longest a purchase retry waits for its key's first attempt, still in flight, to settle
    /// (ms); past it the retry answers UNAVAILABLE (retry with the same key).
    #[arg(long, env = "IN_FLIGHT_WAIT_MS", default_value_t = 3000)]
    pub in_flight_wait_ms: u64,
    /// How long order events (the WatchOrders feed) are kept, in hours; 0 keeps them for ever.
    /// A consumer away for longer must list the orders again (CURSOR_EXPIRED).
    #[arg(long, env = "ORDER_EVENTS_RETENTION_HOURS", default_value_t = 168)]
    pub order_events_retention_hours: u64,
    /// How long a buyer whose waiting-room streams all dropped keeps their place, in seconds:
    /// when their turn comes after that, they are passed over.
    #[arg(long, env = "QUEUE_GRACE_SECONDS", default_value_t = 30)]
    pub queue_grace_seconds: u64,
    /// CPU password hashing (Register, Login) may use, in cores (fractions allowed); default: a
    /// quarter of the cores, at least 0.5.
    #[arg(long, env = "AUTH_CORES", value_parser = parse_cores)]
    pub auth_cores: Option<f64>,
    /// Sign-ins that may wait for a hashing thread; more are refused at once (SIGN_IN_BUSY).
    #[arg(long, env = "AUTH_QUEUE", default_value_t = 32)]
    pub auth_queue: usize,
    /// Scheduling priority (nice, 0..=19) of the hashing threads: higher leaves the cores to
    /// purchases when both want them.
    #[arg(long, env = "AUTH_NICE", default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub auth_nice: i32,
    /// Production backends (Redis, MongoDB).
    #[command(flatten)]
    pub backends: BackendArgs,
}

/// Production backends; without them the embedded backend serves from `--data-dir`.
#[derive(Debug, Clone, Args)]
pub struct BackendArgs {
    /// Redis for the hot path and feed fan-out between nodes, e.g. redis://127.0.0.1:6379; or a
    /// Redis Cluster, named by a comma-separated list of seed nodes
    /// (redis://10.0.0.1:7000,redis://10.0.0.2:7000).
    #[arg(long, env = "REDIS_URI", hide_env_values = true)]
    pub redis_uri: Option<String>,
    /// `--redis-uri` is a Redis Cluster even when it names one seed node.
    #[arg(long, env = "REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// Prefix of every Redis key (several deployments may share one Redis).
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "flashsale:")]
    pub redis_key_prefix: String,
    /// MongoDB replica set for the durable record, e.g. mongodb://mongo:27017/?replicaSet=rs0.
    #[arg(long, env = "MONGODB_URI", hide_env_values = true)]
    pub mongodb_uri: Option<String>,
    /// MongoDB database name.
    #[arg(long, env = "MONGODB_DATABASE", default_value = "flashsale")]
    pub mongodb_database: String,
    /// With Redis: how often each node reconciles the hot state with the record, in ms.
    #[arg(long, env = "RECONCILE_INTERVAL_MS", default_value_t = 10_000)]
    pub reconcile_interval_ms: u64,
    /// With Redis: a reservation in flight for longer than this (ms) belonged to a dead node
    /// and is settled by reconciliation. Must exceed the slowest commit.
    #[arg(long, env = "ORPHAN_AFTER_MS", default_value_t = 30_000)]
    pub orphan_after_ms: u64,
}

/// Options of `flashsale token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// Where the server's secret comes from.
    #[command(flatten)]
    pub secret: SecretArgs,
    /// Role of the token: buyer or admin.
    #[arg(long, default_value = "admin")]
    pub role: String,
    /// Subject (user id) of the token.
    #[arg(long, default_value = "cli-admin")]
    pub sub: String,
    /// Display name in the token.
    #[arg(long, default_value = "Operator")]
    pub name: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl_secs: u64,
}

/// Everything the service needs besides its listeners and clock; `Default` suits tests.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Directory of the embedded store (and of the generated secret).
    pub data_dir: PathBuf,
    /// HS256 secret; generated into `data_dir` when `None`.
    pub jwt_secret: Option<String>,
    /// Lifetime of issued tokens.
    pub token_ttl: Duration,
    /// Admin account ensured at start-up: (email, password).
    pub admin: Option<(String, String)>,
    /// Shortest interval between two messages of one feed.
    pub feed_interval: Duration,
    /// Purchases per second per buyer; 0 = unlimited.
    pub buyer_purchases_per_sec: u32,
    /// Purchases per second per client address; 0 = unlimited.
    pub ip_purchases_per_sec: u32,
    /// Logins per second per client address; 0 = unlimited.
    pub ip_logins_per_sec: u32,
    /// Largest request message, in bytes.
    pub max_message_bytes: usize,
    /// Bound on draining at shutdown.
    pub shutdown_grace: Duration,
    /// Longest a retry waits for its key's first attempt to settle.
    pub in_flight_wait: Duration,
    /// The password hashing pool.
    pub password_pool: crate::passwords::PoolSize,
    /// Redis URI: the hot path and feed fan-out go to Redis when set.
    pub redis_uri: Option<String>,
    /// Prefix of every Redis key.
    pub redis_key_prefix: String,
    /// `redis_uri` is a Redis Cluster (also implied by a list of seeds).
    pub redis_cluster: bool,
    /// Peers whose forwarded client addresses are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Certificate chain and key (PEM files) to serve over TLS; plain text when `None`.
    pub tls: Option<TlsFiles>,
    /// MongoDB URI: the durable record goes to MongoDB when set.
    pub mongodb_uri: Option<String>,
    /// MongoDB database name.
    pub mongodb_database: String,
    /// How often reconciliation runs (shared hot store only).
    pub reconcile_interval: Duration,
    /// Age after which an in-flight reservation is considered orphaned.
    pub orphan_after: Duration,
    /// How long order events are kept; `None`: for ever.
    pub order_events_retention: Option<Duration>,
    /// How long a waiting-room buyer with no open stream keeps their place.
    pub queue_grace: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            jwt_secret: None,
            token_ttl: Duration::from_secs(3600),
            admin: None,
            feed_interval: Duration::from_millis(50),
            buyer_purchases_per_sec: 10,
            ip_purchases_per_sec: 2000,
            ip_logins_per_sec: 20,
            max_message_bytes: 64 * 1024,
            shutdown_grace: Duration::from_secs(5),
            in_flight_wait: Duration::from_secs(3),
            password_pool: crate::passwords::PoolSize::default_for_machine(),
            redis_uri: None,
            redis_key_prefix: "flashsale:".into(),
            redis_cluster: false,
            trusted_proxies: Vec::new(),
            tls: None,
            mongodb_uri: None,
            mongodb_database: "flashsale".into(),
            reconcile_interval: Duration::from_secs(10),
            orphan_after: Duration::from_secs(30),
            order_events_retention: Some(Duration::from_secs(7 * 86_400)),
            queue_grace: Duration::from_secs(30),
        }
    }
}

impl From<SettingsArgs> for Settings {
    fn from(args: SettingsArgs) -> Self {
        Self {
            data_dir: args.secret.data_dir,
            jwt_secret: args.secret.jwt_secret,
            token_ttl: Duration::from_secs(args.token_ttl_secs),
            admin: args.admin_email.zip(args.admin_password),
            feed_interval: Duration::from_millis(args.feed_interval_ms.max(1)),
            buyer_purchases_per_sec: args.buyer_purchases_per_sec,
            ip_purchases_per_sec: args.ip_purchases_per_sec,
            ip_logins_per_sec: args.ip_logins_per_sec,
            max_message_bytes: args.max_message_bytes,
            shutdown_grace: Duration::from_millis(args.shutdown_grace_ms),
            in_flight_wait: Duration::from_millis(args.in_flight_wait_ms),
            password_pool: crate::passwords::PoolSize {
                cores: args.auth_cores.unwrap_or_else(|| crate::passwords::PoolSize::default_for_machine().cores),
                queue: args.auth_queue,
                nice: args.auth_nice,
            },
            redis_uri: args.backends.redis_uri,
            redis_key_prefix: args.backends.redis_key_prefix,
            redis_cluster: args.backends.redis_cluster,
            trusted_proxies: args.trusted_proxies,
            tls: args.tls_cert.zip(args.tls_key).map(|(cert, key)| TlsFiles { cert, key }),
            mongodb_uri: args.backends.mongodb_uri,
            mongodb_database: args.backends.mongodb_database,
            reconcile_interval: Duration::from_millis(args.backends.reconcile_interval_ms.max(100)),
            orphan_after: Duration::from_millis(args.backends.orphan_after_ms),
            order_events_retention: match args.order_events_retention_hours {
                0 => None,
                hours => Some(Duration::from_secs(hours.saturating_mul(3600))),
            },
            queue_grace: Duration::from_secs(args.queue_grace_seconds.clamp(1, 86_400)),
        }
    }
}

/// A positive number of cores, at most 1024.
fn parse_cores(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(cores) if cores > 0.0 && cores <= 1024.0 => Ok(cores),
        _ => Err(format!("{raw:?} is not a number of cores in (0, 1024]")),
    }
}

/// The PEM files of a TLS identity.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain, the server's first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// A trusted proxy: an address (one host) or a CIDR block.
pub(crate) fn parse_proxy(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is neither an IP address nor a CIDR block"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_proxies_are_addresses_or_blocks() {
        assert_eq!(parse_proxy(" 10.0.0.7 "), Ok("10.0.0.7/32".parse().unwrap()));
        assert_eq!(parse_proxy("172.28.0.0/24"), Ok("172.28.0.0/24".parse().unwrap()));
        assert_eq!(parse_proxy("::1"), Ok("::1/128".parse().unwrap()));
        assert!(parse_proxy("envoy").is_err());
    }
}
