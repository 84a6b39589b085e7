//! The MongoDB test server for tests: `tests/support/mongo_server.py`, which runs the PyPI
//! package nx-27017 (MongoDB's wire protocol over SQLite) made safe for concurrent
//! transactions. `scripts/test` installs nx-27017 into `.tools/venv` and exports
//! `MONGO_TEST_PYTHON` (that venv's python) and `FLASHSALE_MONGO_LAUNCHER` (the script); without
//! them the same defaults are used.
//!
//! [`shared`] is one in-memory server for the whole test process: each test takes a fresh
//! database from [`fresh_database`], so tests never see each other's data. A server started
//! here reads its standard input until end of file and then exits, so it never outlives the
//! test process, even one killed by a signal. [`MongoTestServer::start`] starts a private one
//! (file-backed when asked, so its data survives a restart) for tests that stop servers.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// How long a launcher may take to listen (python start-up and imports).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The replica set the server announces, as production's does (flashsale refuses a
/// standalone server: it has no transactions).
pub const REPLICA_SET: &str = "rs0";

/// A running test server.
pub struct MongoTestServer {
    child: Child,
    port: u16,
    /// Its log (stderr), kept under the target directory for post-mortems.
    pub log: PathBuf,
}

impl MongoTestServer {
    /// Starts a server on a free port, in memory (`db: None`) or on a SQLite file.
    pub fn start(db: Option<&Path>) -> Self {
        Self::start_on(0, db)
    }

    /// Starts a server on `port` (0: any free port); restarting on the port and file of a
    /// stopped server brings its data back.
    pub fn start_on(port: u16, db: Option<&Path>) -> Self {
        Self::spawn(port, db, Some(REPLICA_SET))
    }

    /// Starts an in-memory server that announces no replica set, as a standalone mongod.
    pub fn start_standalone() -> Self {
        Self::spawn(0, None, None)
    }

    fn spawn(port: u16, db: Option<&Path>, replica_set: Option<&str>) -> Self {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let python = std::env::var_os("MONGO_TEST_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| manifest.join(".tools/venv/bin/python"));
        let launcher = std::env::var_os("FLASHSALE_MONGO_LAUNCHER")
            .map(PathBuf::from)
            .unwrap_or_else(|| manifest.join("tests/support/mongo_server.py"));
        let logs = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mongo-test-server");
        std::fs::create_dir_all(&logs).expect("creating the test server log directory");
        let log = logs.join(format!("{}-{}.log", std::process::id(), STARTED.fetch_add(1, Ordering::Relaxed)));
        let stderr = std::fs::File::create(&log).expect("creating the test server log");
        let db = db.map_or_else(|| "memory".to_owned(), |p| p.display().to_string());
        let mut child = Command::new(&python)
            .arg(&launcher)
            .args(["--port", &port.to_string(), "--db", &db, "--exit-on-stdin-eof"])
            .args(replica_set.map(|name| ["--replica-set", name]).into_iter().flatten())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run the MongoDB test server ({} {}): {e}; scripts/test installs it",
                    python.display(),
                    launcher.display()
                )
            });
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready, listening) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("LISTENING ").and_then(|p| p.trim().parse::<u16>().ok()) {
                    let _ = ready.send(port);
                    break;
                }
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        match listening.recv_timeout(START_TIMEOUT) {
            Ok(port) => Self { child, port, log },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the MongoDB test server did not start within {START_TIMEOUT:?} ({} {}; is nx-27017 \
                     installed? scripts/test installs it). Its log:\n{}",
                    python.display(),
                    launcher.display(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URI for the driver. The pool is larger than the driver's default because this server
    /// makes a transaction wait for its turn while holding a connection, and makes a plain read
    /// wait while a transaction is open (a real server does neither): with as many reads in
    /// flight as the pool has connections, the open transaction's next command would find no
    /// connection and nothing would move. Tests put up to a few hundred calls in flight at once.
    pub fn uri(&self) -> String {
        format!(
            "mongodb://127.0.0.1:{}/?replicaSet={REPLICA_SET}&maxPoolSize=512&serverSelectionTimeoutMS=2000",
            self.port
        )
    }

    /// Stops it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MongoTestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The server every test of this process shares (started at first use; it exits when the test
/// process does, as its standard input then closes).
pub fn shared() -> &'static MongoTestServer {
    static SERVER: OnceLock<MongoTestServer> = OnceLock::new();
    SERVER.get_or_init(|| MongoTestServer::start(None))
}

/// A database name no other test uses.
pub fn fresh_database(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}
