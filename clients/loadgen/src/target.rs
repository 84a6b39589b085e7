//! The server under test: a pool of HTTP/2 connections, the admin token, the signing keys when
//! the secret is known, and — with `--spawn-server` — the server process itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use flashsale_client::mint::{Minter, Role};
use flashsale_client::pb::admin_service_client::AdminServiceClient;
use flashsale_client::pb::auth_service_client::AuthServiceClient;
use flashsale_client::pb::feeds_service_client::FeedsServiceClient;
use flashsale_client::pb::purchase_service_client::PurchaseServiceClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::cli::TargetArgs;

/// Lifetime of every token loadgen mints: longer than any rehearsal.
pub const TOKEN_TTL: Duration = Duration::from_secs(6 * 3600);

/// Several HTTP/2 connections to one server, handed out round-robin. One connection is
/// read and written by one task on each side, so spreading calls over a few of them lets the
/// server use every core.
pub struct Pool {
    channels: Vec<Channel>,
    next: AtomicUsize,
    endpoint: Endpoint,
}

impl Pool {
    /// Opens `count` connections (at least one) to `addr`.
    pub async fn connect(addr: &str, count: usize) -> anyhow::Result<Self> {
        let endpoint = Endpoint::from_shared(addr.to_owned())
            .with_context(|| format!("bad server address {addr:?}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5));
        let mut channels = Vec::with_capacity(count.max(1));
        for _ in 0..count.max(1) {
            channels.push(endpoint.connect().await.with_context(|| format!("connecting to {addr}"))?);
        }
        Ok(Self { channels, next: AtomicUsize::new(0), endpoint })
    }

    /// A new connection of its own (closed when its last handle is dropped).
    pub async fn fresh_channel(&self) -> anyhow::Result<Channel> {
        self.endpoint.connect().await.context("opening a connection")
    }

    /// The next connection in turn.
    pub fn channel(&self) -> Channel {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        self.channels[i].clone()
    }

    /// An AdminService client on the next connection.
    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel())
    }

    /// An AuthService client on the next connection.
    pub fn auth(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.channel())
    }

    /// A PurchaseService client on the next connection.
    pub fn purchase(&self) -> PurchaseServiceClient<Channel> {
        PurchaseServiceClient::new(self.channel())
    }

    /// A FeedsService client on the next connection.
    pub fn feeds(&self) -> FeedsServiceClient<Channel> {
        FeedsServiceClient::new(self.channel())
    }
}

/// `Bearer <token>` as request metadata, parsed once and cloned into every request.
pub fn bearer(token: &str) -> anyhow::Result<AsciiMetadataValue> {
    format!("Bearer {token}").parse().context("a token must be printable ASCII")
}

/// `message` with the `authorization` metadata.
pub fn authed<T>(message: T, bearer: &AsciiMetadataValue) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", bearer.clone());
    request
}

/// Everything a subcommand needs to talk to the server.
pub struct Session {
    /// Connections for unary calls.
    pub pool: Arc<Pool>,
    /// The gRPC address, `http://host:port`.
    pub addr: String,
    /// `Bearer <admin token>`.
    pub admin: AsciiMetadataValue,
    /// Signing keys, when the secret is known (needed by --mint-tokens).
    pub keys: Option<Minter>,
    /// Pid of the server process, when known (memory figures).
    pub server_pid: Option<u32>,
    /// The server started by --spawn-server; stopped when the session is dropped.
    pub server: Option<SpawnedServer>,
}

impl Session {
    /// Connects as `args` say, starting the server first with --spawn-server.
    pub async fn open(args: &TargetArgs) -> anyhow::Result<Self> {
        let (addr, secret, server) = match &args.spawn_server {
            Some(binary) => {
                let secret = args.jwt_secret.clone().unwrap_or_else(random_secret);
                let server = SpawnedServer::start(binary, &secret).await?;
                (format!("http://{}", server.grpc), Some(secret), Some(server))
            }
            None => (args.addr.clone(), args.jwt_secret.clone(), None),
        };
        let keys = secret.as_deref().map(|s| Minter::new(s.as_bytes()));
        let admin = match (&args.admin_token, &keys) {
            (Some(token), _) => bearer(token)?,
            (None, Some(keys)) => bearer(&mint(keys, "loadgen-admin", "Loadgen", Role::Admin)?)?,
            (None, None) => bail!("an admin token is needed: pass --admin-token, or --jwt-secret to mint one"),
        };
        let pool = Arc::new(Pool::connect(&addr, args.channels).await?);
        let server_pid = args.server_pid.or_else(|| server.as_ref().map(|s| s.pid));
        Ok(Self { pool, addr, admin, keys, server_pid, server })
    }

    /// The signing keys, or an error saying why they are needed.
    pub fn keys_for(&self, what: &str) -> anyhow::Result<&Minter> {
        self.keys
            .as_ref()
            .with_context(|| format!("{what} needs the server's secret: pass --jwt-secret (or --spawn-server)"))
    }
}

/// A token signed with `keys`, as `flashsale token` prints.
pub fn mint(keys: &Minter, sub: &str, name: &str, role: Role) -> anyhow::Result<String> {
    keys.token(sub, name, role, TOKEN_TTL).context("signing a token")
}

/// 32 random bytes as 64 hex characters.
pub fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A flashsale server started by loadgen on 127.0.0.1, port 0, with its own temp data dir and
/// every rate limit off. Killed (and its data dir removed) when dropped.
pub struct SpawnedServer {
    /// The gRPC address it bound.
    pub grpc: SocketAddr,
    /// The metrics address it bound.
    pub metrics: SocketAddr,
    /// Its process id.
    pub pid: u32,
    /// Where its log (stderr) goes.
    pub log: PathBuf,
    child: tokio::process::Child,
    _data_dir: tempfile::TempDir,
}

impl SpawnedServer {
    /// Starts `binary serve` and waits for its `flashsale listening grpc=.. metrics=..` line.
    pub async fn start(binary: &Path, secret: &str) -> anyhow::Result<Self> {
        let data_dir =
            tempfile::Builder::new().prefix("loadgen-server-").tempdir().context("creating a temp data dir")?;
        let log = data_dir.path().join("server.log");
        let log_file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = tokio::process::Command::new(binary)
            .args(["serve", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"])
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(["--buyer-purchases-per-sec", "0", "--ip-purchases-per-sec", "0", "--ip-logins-per-sec", "0"])
            .env("JWT_SECRET", secret)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id().context("the server exited at once")?;
        let mut lines = BufReader::new(child.stdout.take().context("server stdout")?).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .with_context(|| format!("the server printed no address within 60 s; see {}", log.display()))?
            .context("reading the server's stdout")?;
        let Some(line) = line else {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("the server exited before listening:\n{tail}");
        };
        let (grpc, metrics) = parse_listening(&line)?;
        // Keep reading stdout so a later line never meets a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self { grpc, metrics, pid, log, child, _data_dir: data_dir })
    }

    /// Kills the server and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Reads `flashsale listening grpc=ADDR metrics=ADDR`.
fn parse_listening(line: &str) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let field = |name: &str| -> anyhow::Result<SocketAddr> {
        let prefix = format!("{name}=");
        let value = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix(&prefix))
            .with_context(|| format!("no {name}= in the server's line {line:?}"))?;
        value.parse().with_context(|| format!("bad {name} address {value:?}"))
    };
    Ok((field("grpc")?, field("metrics")?))
}

/// Resident memory of process `pid` in bytes (VmRSS of /proc/PID/status).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .with_context(|| format!("no VmRSS in {path}"))?;
    Ok(kib * 1024)
}

/// CPU time (user + system, every thread) process `pid` has used so far, from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).context("malformed stat");
    // Fields 14 and 15 are at 11 and 12 after the state (field 3); USER_HZ is 100 on Linux.
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_listening_line() {
        let (grpc, metrics) =
            parse_listening("flashsale listening grpc=127.0.0.1:4321 metrics=127.0.0.1:9876").unwrap();
        assert_eq!(grpc.port(), 4321);
        assert_eq!(metrics.port(), 9876);
        assert!(parse_listening("something else").is_err());
    }

    #[test]
    fn reads_our_own_rss_and_cpu() {
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {}
        assert!(cpu_time(std::process::id()).unwrap() > Duration::ZERO);
    }
}
