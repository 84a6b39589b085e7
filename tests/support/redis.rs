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
