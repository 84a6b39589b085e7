//! A `redis-server` for tests: one shared by the whole test process (each test takes a fresh
//! key prefix), or private ones for tests that stop and restart Redis.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A `redis-server` on a loopback port with a temporary directory and no persistence (or an
/// append-only file, from [`RedisServer::start_aof`]). It runs
/// under `sh`, which kills it when its stdin closes: on [`RedisServer::stop`], or when the test
/// process exits, however it exits.
pub struct RedisServer {
    pub port: u16,
    dir: Arc<tempfile::TempDir>,
    shell: Child,
}

impl RedisServer {
    /// A server on a free port.
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().unwrap().port();
        Self::start_on(port, Arc::new(tempfile::tempdir().expect("temp dir")))
    }

    /// A server on `port`, working in `dir`; waits until it answers PING.
    pub fn start_on(port: u16, dir: Arc<tempfile::TempDir>) -> Self {
        Self::start_on_with(port, dir, &[])
    }

    /// A server on a free port with an append-only file synced at every write, so a restart on
    /// the same port and directory ([`RedisServer::start_aof_on`]) brings every key back.
    pub fn start_aof() -> Self {
        let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().unwrap().port();
        Self::start_aof_on(port, Arc::new(tempfile::tempdir().expect("temp dir")))
    }

    /// [`RedisServer::start_aof`] on `port` and `dir` (a restart loads the append-only file).
    pub fn start_aof_on(port: u16, dir: Arc<tempfile::TempDir>) -> Self {
        Self::start_on_with(port, dir, &["--appendonly", "yes", "--appendfsync", "always"])
    }

    /// A server on `port`, working in `dir`, with `extra` options after the defaults (a later
    /// option overrides an earlier one); waits until it answers PING.
    pub fn start_on_with(port: u16, dir: Arc<tempfile::TempDir>, extra: &[&str]) -> Self {
        let log = dir.path().join("redis.log");
        let shell = Command::new("sh")
            .arg("-c")
            .arg(r#""$0" "$@" & pid=$!; read _line; kill $pid; wait $pid"#)
            .arg(redis_server_binary())
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--dir"])
            .arg(dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server under sh");
        let server = Self { port, dir, shell };
        server.wait_ready(&log);
        server
    }

    pub fn uri(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn wait_ready(&self, log: &Path) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let client = ::redis::Client::open(self.uri()).unwrap();
        loop {
            let pong = client
                .get_connection_with_timeout(Duration::from_millis(200))
                .and_then(|mut conn| ::redis::cmd("PING").query::<String>(&mut conn));
            if pong.is_ok() {
                return;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!("redis-server on port {} did not answer PING: {pong:?}\n{log}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server and waits until it is gone; returns its port and directory for a restart.
    pub fn stop(mut self) -> (u16, Arc<tempfile::TempDir>) {
        drop(self.shell.stdin.take());
        let _ = self.shell.wait();
        (self.port, self.dir.clone())
    }
}

fn redis_server_binary() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("redis-server"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            let debian = PathBuf::from("/usr/bin/redis-server");
            assert!(
                debian.is_file(),
                "redis-server not found on PATH nor in /usr/bin: install Debian's redis-server (scripts/test does)"
            );
            debian
        })
}

/// The server shared by every test of this process.
pub fn shared_redis() -> &'static RedisServer {
    static SHARED: OnceLock<RedisServer> = OnceLock::new();
    SHARED.get_or_init(RedisServer::start)
}

/// A key prefix no other test uses.
pub fn fresh_prefix() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("t{}-{}:", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A free loopback port (the OS's pick; another process could take it before it is used, as
/// with every port here).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().unwrap().port()
}

/// A Redis Cluster on loopback: three masters and three replicas, each a `redis-server` in
/// cluster mode in its own directory, joined by `redis-cli --cluster create`. A short node
/// timeout (1 s) makes a failover take seconds, not the default's fifteen.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts six nodes and creates the cluster; returns once every slot is served, every node
    /// says the cluster is ok and every replica has synced with its master.
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                let bus = free_port().to_string();
                RedisServer::start_on_with(
                    free_port(),
                    Arc::new(tempfile::tempdir().expect("temp dir")),
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "1000",
                        "--cluster-port",
                        &bus,
                    ],
                )
            })
            .collect();
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let created = Command::new(redis_cli_binary())
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        let cluster = Self { nodes };
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    /// The seed list flashsale takes (`--redis-uri`): every node.
    pub fn uri(&self) -> String {
        self.nodes.iter().map(|n| n.uri()).collect::<Vec<_>>().join(",")
    }

    /// Waits until every live node says `cluster_state:ok`, each shard has one master and every
    /// replica's link to its master is up (a killed node is left out).
    pub fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let live = self.nodes.iter().filter(|node| node.command_text(&["PING"]) == "PONG");
            let healthy = live.into_iter().all(|node| {
                let info = node.command_text(&["CLUSTER", "INFO"]);
                let replication = node.command_text(&["INFO", "replication"]);
                info.contains("cluster_state:ok")
                    && (replication.contains("role:master") || replication.contains("master_link_status:up"))
            });
            if healthy && self.masters().len() == 3 {
                return;
            }
            assert!(Instant::now() < deadline, "the Redis Cluster did not become healthy");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The ports of the masters serving slots.
    pub fn masters(&self) -> Vec<u16> {
        self.nodes.iter().filter(|n| !n.served_slots().is_empty()).map(|n| n.port).collect()
    }

    /// The node that is master of `key`'s slot now.
    pub fn master_of(&self, key: &str) -> &RedisServer {
        let slot: i64 = {
            let mut conn = self.nodes[0].connection();
            ::redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query(&mut conn).expect("CLUSTER KEYSLOT")
        };
        self.nodes
            .iter()
            .find(|n| n.served_slots().iter().any(|(from, to)| (*from..=*to).contains(&slot)))
            .expect("a master for the slot")
    }
}

impl RedisServer {
    fn connection(&self) -> ::redis::Connection {
        ::redis::Client::open(self.uri())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to a test redis-server")
    }

    /// A command's reply as text (empty when the node does not answer: it was killed).
    pub fn command_text(&self, args: &[&str]) -> String {
        let Ok(mut conn) =
            ::redis::Client::open(self.uri()).unwrap().get_connection_with_timeout(Duration::from_millis(500))
        else {
            return String::new();
        };
        let mut cmd = ::redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        match cmd.query::<::redis::Value>(&mut conn) {
            Ok(::redis::Value::BulkString(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
            Ok(::redis::Value::VerbatimString { text, .. }) => text,
            Ok(::redis::Value::SimpleString(text)) => text,
            _ => String::new(),
        }
    }

    /// The slot ranges this node serves as a master, from its own line of `CLUSTER NODES`
    /// (none for a replica, or a node that does not answer).
    fn served_slots(&self) -> Vec<(i64, i64)> {
        let nodes = self.command_text(&["CLUSTER", "NODES"]);
        let Some(me) = nodes.lines().find(|line| line.contains("myself")) else { return Vec::new() };
        let fields: Vec<&str> = me.split(' ').collect();
        if !fields.get(2).is_some_and(|flags| flags.contains("master")) {
            return Vec::new();
        }
        let bound = |text: &str| text.parse::<i64>().ok();
        fields[8.min(fields.len())..]
            .iter()
            .filter_map(|range| match range.split_once('-') {
                Some((from, to)) => Some((bound(from)?, bound(to)?)),
                None => bound(range).map(|slot| (slot, slot)),
            })
            .collect()
    }

    /// Kills the server with SIGKILL: no shutdown, nothing flushed.
    pub fn kill(&self) {
        let info = self.command_text(&["INFO", "server"]);
        let pid = info
            .lines()
            .find_map(|line| line.strip_prefix("process_id:"))
            .expect("process_id in INFO server")
            .trim()
            .to_owned();
        let killed = Command::new("kill").args(["-9", &pid]).status().expect("run kill");
        assert!(killed.success(), "kill -9 {pid} failed");
    }
}

fn redis_cli_binary() -> PathBuf {
    let server = redis_server_binary();
    let cli = server.with_file_name("redis-cli");
    assert!(cli.is_file(), "redis-cli not found beside {}: install Debian's redis-tools", server.display());
    cli
}

/// The Redis Cluster shared by every test of this process (each test takes a fresh key prefix).
pub fn shared_cluster() -> &'static RedisCluster {
    static SHARED: OnceLock<RedisCluster> = OnceLock::new();
    SHARED.get_or_init(RedisCluster::start)
}

/// True when `FLASHSALE_TEST_REDIS=cluster`: production-backend tests then put the hot path on
/// the shared Redis Cluster instead of one redis-server.
pub fn on_cluster() -> bool {
    std::env::var("FLASHSALE_TEST_REDIS").is_ok_and(|v| v == "cluster")
}
