//! `spawn_app()`: the server on 127.0.0.1:0 with the embedded backend in a temp dir, plus typed
//! client helpers. Logs stay silent unless `TEST_LOG` is set.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Once};
use std::time::Duration;

use flashsale::backends::Backends;
use flashsale::clock::{Clock, ManualClock, SystemClock};
use flashsale::domain::{Role, UnixMillis};
use flashsale::Settings;
use flashsale_client::pb;
use flashsale_client::pb::admin_service_client::AdminServiceClient;
use flashsale_client::pb::auth_service_client::AuthServiceClient;
use flashsale_client::pb::feeds_service_client::FeedsServiceClient;
use flashsale_client::pb::orders_service_client::OrdersServiceClient;
use flashsale_client::pb::purchase_service_client::PurchaseServiceClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub const SECRET: &str = "integration-test-secret-of-32-bytes-at-least";

/// A running server and what a test needs to talk to it.
pub struct TestApp {
    /// gRPC / grpc-web address.
    pub addr: SocketAddr,
    /// Prometheus `/metrics` address.
    pub metrics_addr: SocketAddr,
    /// A channel to `addr` (HTTP/2).
    pub channel: Channel,
    /// Signs tokens with the server's secret, as `flashsale token` does.
    pub keys: flashsale::auth::JwtKeys,
    /// The data directory (deleted on drop).
    pub data_dir: Arc<tempfile::TempDir>,
    /// Set when built with a manual clock.
    pub clock: Option<Arc<ManualClock>>,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Options for [`spawn_app_with`].
pub struct AppOptions {
    /// Settings as the server sees them; `data_dir` and `jwt_secret` are filled in.
    pub settings: Settings,
    /// Start a manual clock at this instant instead of the system clock.
    pub manual_clock: Option<UnixMillis>,
    /// Reuse this data directory (restart tests).
    pub data_dir: Option<Arc<tempfile::TempDir>>,
    /// Wraps the backends the settings name before the server starts on them (test doubles that
    /// pause or fail at a chosen step, see `gates.rs`).
    pub wrap: Option<Box<dyn FnOnce(Backends) -> Backends + Send>>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            settings: Settings {
                // Rehearsals come from one address and hammer one buyer: no rate limits unless a
                // test asks for them.
                buyer_purchases_per_sec: 0,
                ip_purchases_per_sec: 0,
                ip_logins_per_sec: 0,
                feed_interval: Duration::from_millis(20),
                shutdown_grace: Duration::from_secs(2),
                ..Settings::default()
            },
            manual_clock: None,
            data_dir: None,
            wrap: None,
        }
    }
}

fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
                )
                .with_test_writer()
                .init();
        }
    });
}

/// True when `FLASHSALE_TEST_BACKEND=production`: every `spawn_app` then runs on Redis and the
/// MongoDB test server instead of the embedded backend, so the same API suite covers both
/// (`scripts/test` runs it both ways).
pub fn production_backends() -> bool {
    std::env::var("FLASHSALE_TEST_BACKEND").is_ok_and(|b| b == "production")
}

/// Points `settings` at the process's shared redis-server and MongoDB test server, with a key
/// prefix and a database no other app uses.
pub fn use_shared_production_backends(settings: &mut Settings) {
    let mongo = tokio::task::block_in_place(crate::mongo_support::shared);
    if crate::redis_support::on_cluster() {
        let cluster = tokio::task::block_in_place(crate::redis_support::shared_cluster);
        settings.redis_uri = Some(cluster.uri());
        settings.redis_cluster = true;
    } else {
        let redis = tokio::task::block_in_place(crate::redis_support::shared_redis);
        settings.redis_uri = Some(redis.uri());
    }
    settings.redis_key_prefix = crate::redis_support::fresh_prefix();
    settings.mongodb_uri = Some(mongo.uri());
    settings.mongodb_database = crate::mongo_support::fresh_database("app");
}

/// The server with default test options (system clock, no rate limits).
pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

/// The server with the given options.
pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    init_logs();
    let data_dir = options.data_dir.unwrap_or_else(|| Arc::new(tempfile::tempdir().expect("temp dir")));
    let mut settings = options.settings;
    settings.data_dir = data_dir.path().to_path_buf();
    settings.jwt_secret = Some(SECRET.to_owned());
    if production_backends() && settings.redis_uri.is_none() && settings.mongodb_uri.is_none() {
        use_shared_production_backends(&mut settings);
    }

    let manual = options.manual_clock.map(|start| Arc::new(ManualClock::new(start)));
    let clock: Arc<dyn Clock> = match &manual {
        Some(clock) => clock.clone(),
        None => Arc::new(SystemClock),
    };

    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind grpc");
    let metrics = TcpListener::bind("127.0.0.1:0").await.expect("bind metrics");
    let addr = grpc.local_addr().unwrap();
    let metrics_addr = metrics.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let listeners = flashsale::server::Listeners { grpc, metrics: Some(metrics) };
    let tls = settings.tls.is_some();
    let server = match options.wrap {
        None => tokio::spawn(flashsale::server::run(listeners, settings, clock, shutdown.clone())),
        Some(wrap) => {
            let backends = wrap(Backends::open(&settings).await.expect("open the backends"));
            tokio::spawn(flashsale::server::run_with(listeners, settings, backends, clock, shutdown.clone()))
        }
    };

    let endpoint = Channel::from_shared(format!("http://{addr}")).unwrap();
    // A server on TLS refuses plain text: its tests make their own channels.
    let channel = match tls {
        false => endpoint.connect().await.expect("connect to the test server"),
        true => endpoint.connect_lazy(),
    };
    TestApp {
        addr,
        metrics_addr,
        channel,
        keys: flashsale::auth::JwtKeys::new(SECRET.as_bytes()),
        data_dir,
        clock: manual,
        shutdown,
        server: Some(server),
    }
}

/// `msg` with `authorization: Bearer <token>` metadata.
pub fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(msg);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// The `google.rpc.ErrorInfo` reason of an error status ("" when there is none).
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status.get_error_details().error_info().map(|info| info.reason.clone()).unwrap_or_default()
}

impl TestApp {
    /// The clock's now (manual or system).
    pub fn now(&self) -> UnixMillis {
        match &self.clock {
            Some(clock) => clock.now(),
            None => SystemClock.now(),
        }
    }

    /// A token for a new admin.
    pub fn admin_token(&self) -> String {
        self.keys.issue("test-admin", "Admin", Role::Admin, SystemClock.now(), Duration::from_secs(3600)).0
    }

    /// A token for buyer `id` named `name` (minted like `flashsale token`, no registration).
    pub fn buyer_token(&self, id: &str, name: &str) -> String {
        self.keys.issue(id, name, Role::Buyer, SystemClock.now(), Duration::from_secs(3600)).0
    }

    pub fn auth(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.channel.clone())
    }

    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
    }

    pub fn purchase(&self) -> PurchaseServiceClient<Channel> {
        PurchaseServiceClient::new(self.channel.clone())
    }

    pub fn feeds(&self) -> FeedsServiceClient<Channel> {
        FeedsServiceClient::new(self.channel.clone())
    }

    pub fn orders(&self) -> OrdersServiceClient<Channel> {
        OrdersServiceClient::new(self.channel.clone())
    }

    /// The Rust client on this server's connection, calling with `token`.
    pub fn client(&self, token: &str) -> flashsale_client::Client {
        flashsale_client::Client::from_channel(self.channel.clone()).with_token(token).expect("a token is header text")
    }

    /// A service token (role payments or fulfillment) for `name`, minted with the server's secret.
    pub fn service_token(&self, role: Role, name: &str) -> String {
        self.keys.issue(&format!("service-{name}"), name, role, SystemClock.now(), Duration::from_secs(3600)).0
    }

    /// Creates a product holding `inventory` units.
    pub async fn create_product(&self, inventory: i64) -> pb::Product {
        self.admin()
            .create_product(authed(
                pb::CreateProductRequest {
                    name: "Test sneaker".into(),
                    description: "limited".into(),
                    initial_inventory: inventory,
                },
                &self.admin_token(),
            ))
            .await
            .expect("create product")
            .into_inner()
    }

    /// Creates a sale of `allocated` units that is ACTIVE now and ends in an hour.
    pub async fn active_sale(&self, allocated: i64, per_user_limit: u32, max_per_purchase: u32) -> pb::Sale {
        let product = self.create_product(allocated).await;
        self.create_sale(pb::CreateSaleRequest {
            queue: None,
            product_id: product.id,
            allocated,
            unit_price: Some(pb::Money { amount_minor: 1999, currency: "USD".into() }),
            per_user_limit,
            max_per_purchase,
            start_time: None,
            end_time: Some(timestamp(UnixMillis(self.now().0 + 3_600_000))),
            hold_seconds: 0,
        })
        .await
    }

    /// Creates a sale as given.
    pub async fn create_sale(&self, request: pb::CreateSaleRequest) -> pb::Sale {
        self.admin().create_sale(authed(request, &self.admin_token())).await.expect("create sale").into_inner()
    }

    /// Reads a sale through the Admin API.
    pub async fn get_sale(&self, sale_id: &str) -> pb::Sale {
        self.admin()
            .get_sale(authed(pb::GetSaleRequest { sale_id: sale_id.into() }, &self.admin_token()))
            .await
            .expect("get sale")
            .into_inner()
    }

    /// One purchase by `token`.
    pub async fn buy(
        &self,
        token: &str,
        sale_id: &str,
        quantity: u32,
        key: &str,
    ) -> Result<pb::PurchaseResponse, tonic::Status> {
        self.purchase()
            .purchase(authed(
                pb::PurchaseRequest {
                    admission_pass: String::new(),
                    sale_id: sale_id.into(),
                    quantity,
                    idempotency_key: key.into(),
                },
                token,
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Moves the manual clock forward (panics without one).
    pub fn advance(&self, by: Duration) {
        self.clock.as_ref().expect("built with a manual clock").advance(by);
    }

    /// Polls `probe` until it returns `Some`, for at most 10 s of real time.
    pub async fn eventually<T, F, Fut>(&self, what: &str, probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        poll_until(what, Duration::from_secs(10), probe).await
    }

    /// Starts the graceful shutdown (as SIGTERM does) without waiting for it.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Graceful shutdown; returns the server's result.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.server.take().unwrap().await.expect("server task panicked")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Polls `probe` every 10 ms until it returns `Some`; fails the test after `limit` of real time.
pub async fn poll_until<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A protobuf timestamp for `at`.
pub fn timestamp(at: UnixMillis) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: at.0.div_euclid(1000), nanos: (at.0.rem_euclid(1000) * 1_000_000) as i32 }
}

/// Asserts that `status` carries `code` and the ErrorInfo reason `expected_reason`, with the
/// status in the panic message so a failure says what the server answered.
pub fn assert_refused(status: &tonic::Status, code: tonic::Code, expected_reason: &str) {
    assert_eq!((status.code(), reason(status).as_str()), (code, expected_reason), "unexpected refusal: {status:?}");
}

/// The error of `result`, panicking with the value when the call succeeded.
pub fn refusal<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> tonic::Status {
    match result {
        Ok(value) => panic!("expected an error status, got {value:?}"),
        Err(status) => status,
    }
}

/// One entry of the `google.rpc.ErrorInfo` metadata of an error status.
pub fn error_metadata(status: &tonic::Status, key: &str) -> Option<String> {
    use tonic_types::StatusExt;
    status.get_error_details().error_info().and_then(|info| info.metadata.get(key).cloned())
}

/// The fields named by the `google.rpc.BadRequest` violations of an error status.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|bad| bad.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// True when a purchase was refused because no stock is left: SOLD_OUT, or SALE_ENDED once the
/// sell-out has closed the sale (its `end_reason` metadata names SOLD_OUT).
pub fn is_sold_out(status: &tonic::Status) -> bool {
    match (status.code(), reason(status).as_str()) {
        (tonic::Code::ResourceExhausted, "SOLD_OUT") => true,
        (tonic::Code::FailedPrecondition, "SALE_ENDED") => {
            error_metadata(status, "end_reason").is_some_and(|r| r.contains("SOLD_OUT"))
        }
        _ => false,
    }
}

const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Unpadded base64url, as in JWTs.
pub fn base64url_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 3);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(BASE64URL[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    out
}

/// Decodes unpadded base64url; `None` on a character outside the alphabet.
pub fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let (mut bits, mut count, mut out) = (0u32, 0u32, Vec::with_capacity(text.len() * 3 / 4));
    for c in text.bytes() {
        let value = BASE64URL.iter().position(|&x| x == c)? as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Some(out)
}

/// The claims of a JWT, read without checking its signature.
pub fn jwt_claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    serde_json::from_slice(&base64url_decode(payload).expect("base64url claims")).expect("JSON claims")
}

impl TestApp {
    /// The caller's orders, in one sale when `sale_id` is not empty (every page).
    pub async fn my_orders(&self, token: &str, sale_id: &str) -> Vec<pb::Order> {
        self.client(token).my_orders(sale_id).await.expect("list my orders")
    }

    /// Polls GetSale until `done` holds for the sale (see [`TestApp::eventually`]).
    pub async fn wait_for_sale(&self, sale_id: &str, what: &str, done: impl Fn(&pb::Sale) -> bool) -> pb::Sale {
        let done = &done;
        self.eventually(what, || async move {
            let sale = self.get_sale(sale_id).await;
            done(&sale).then_some(sale)
        })
        .await
    }
}

/// How long a test waits for one stream message (or a whole `read_until`) before it fails.
pub const STREAM_DEADLINE: Duration = Duration::from_secs(10);

/// The next message of a server stream, `None` once it has ended cleanly. Panics on an error
/// status or when nothing arrives within [`STREAM_DEADLINE`].
pub async fn next_message<T>(stream: &mut tonic::Streaming<T>, what: &str) -> Option<T> {
    match tokio::time::timeout(STREAM_DEADLINE, stream.message()).await {
        Ok(Ok(message)) => message,
        Ok(Err(status)) => panic!("{what}: the stream failed: {status:?}"),
        Err(_) => panic!("{what}: nothing arrived within {STREAM_DEADLINE:?}"),
    }
}

/// Reads `stream` until a message satisfies `done`; returns every message read, that one last.
/// Panics if the stream ends or fails first, or after [`STREAM_DEADLINE`] in all.
pub async fn read_until<T: std::fmt::Debug>(
    stream: &mut tonic::Streaming<T>,
    what: &str,
    mut done: impl FnMut(&T) -> bool,
) -> Vec<T> {
    let deadline = tokio::time::Instant::now() + STREAM_DEADLINE;
    let mut seen = Vec::new();
    loop {
        let next = tokio::time::timeout_at(deadline, stream.message()).await;
        match next {
            Ok(Ok(Some(message))) => {
                let stop = done(&message);
                seen.push(message);
                if stop {
                    return seen;
                }
            }
            Ok(Ok(None)) => panic!("{what}: the stream ended first; last of {} seen: {:?}", seen.len(), seen.last()),
            Ok(Err(status)) => panic!("{what}: the stream failed: {status:?}"),
            Err(_) => {
                panic!("{what}: not seen within {STREAM_DEADLINE:?}; last of {} seen: {:?}", seen.len(), seen.last())
            }
        }
    }
}

/// The error a server-streaming call ends with before any message: either the call itself
/// fails or its stream fails first. Panics if a message arrives instead.
pub async fn stream_refusal<T: std::fmt::Debug>(
    call: impl std::future::Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>>,
) -> tonic::Status {
    let mut stream = match call.await {
        Err(status) => return status,
        Ok(response) => response.into_inner(),
    };
    match tokio::time::timeout(STREAM_DEADLINE, stream.message()).await {
        Ok(Err(status)) => status,
        other => panic!("expected the stream to be refused, got {other:?}"),
    }
}

impl TestApp {
    /// Opens `WatchSale` (no token, as any watcher).
    pub async fn watch(&self, sale_id: &str) -> tonic::Streaming<pb::SaleSnapshot> {
        self.feeds()
            .watch_sale(pb::WatchSaleRequest { sale_id: sale_id.into() })
            .await
            .expect("watch sale")
            .into_inner()
    }

    /// Opens `Leaderboard` with `top_n` entries per message (no token).
    pub async fn leaderboard(&self, sale_id: &str, top_n: u32) -> tonic::Streaming<pb::LeaderboardSnapshot> {
        self.feeds()
            .leaderboard(pb::LeaderboardRequest { sale_id: sale_id.into(), top_n })
            .await
            .expect("open leaderboard")
            .into_inner()
    }

    /// Reads a product (its inventory) through the Admin API.
    pub async fn get_product(&self, product_id: &str) -> pb::Product {
        self.admin()
            .get_product(authed(pb::GetProductRequest { product_id: product_id.into() }, &self.admin_token()))
            .await
            .expect("get product")
            .into_inner()
    }

    /// Ends a sale through the Admin API.
    pub async fn end_sale(&self, sale_id: &str) -> pb::Sale {
        self.admin()
            .end_sale(authed(pb::EndSaleRequest { sale_id: sale_id.into() }, &self.admin_token()))
            .await
            .expect("end sale")
            .into_inner()
    }
}

/// The real `flashsale` binary, started with the given arguments on free ports, for tests that
/// kill it with SIGKILL or run several processes. Its stderr goes to a log file under the
/// target directory (to the test's stderr with `TEST_LOG`). Killed (SIGKILL) when dropped, so a
/// failing test never leaves it behind.
pub struct BinaryServer {
    child: std::process::Child,
    /// gRPC / grpc-web address, from the "flashsale listening" line.
    pub addr: SocketAddr,
    /// Where its log goes (`None` with `TEST_LOG`: the test's stderr).
    pub log: Option<std::path::PathBuf>,
}

impl BinaryServer {
    /// Runs `flashsale` with `args` (e.g. `serve --port 0 ...`) and waits, blocking, for its
    /// "listening" line. Nothing of the test's environment reaches it but PATH and the log
    /// settings (see [`clean_env`]).
    pub fn start<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        use std::sync::atomic::{AtomicUsize, Ordering};

        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let mut command = Command::new(env!("CARGO_BIN_EXE_flashsale"));
        command.args(args);
        clean_env(&mut command);
        command.stdin(Stdio::null()).stdout(Stdio::piped());
        let log = if std::env::var_os("TEST_LOG").is_some() {
            command.stderr(Stdio::inherit());
            None
        } else {
            let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("flashsale-logs");
            std::fs::create_dir_all(&dir).expect("creating the server log directory");
            let path = dir.join(format!("{}-{}.log", std::process::id(), STARTED.fetch_add(1, Ordering::Relaxed)));
            command.stderr(std::fs::File::create(&path).expect("creating the server log"));
            command.env("NO_COLOR", "1");
            Some(path)
        };
        let mut child = command.spawn().expect("start flashsale");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut server = BinaryServer { child, addr: "0.0.0.0:0".parse().unwrap(), log };

        // A thread reads stdout to its end, so the server never blocks on a full pipe.
        let (lines_tx, lines_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Once nobody listens any more, keep draining.
                let _ = lines_tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = lines_rx.recv_timeout(left).unwrap_or_else(|e| {
                panic!("flashsale did not print its listening line ({e}); its log:\n{}", server.log_text())
            });
            if let Some(rest) = line.strip_prefix("flashsale listening ") {
                let grpc = rest
                    .split_whitespace()
                    .find_map(|part| part.strip_prefix("grpc="))
                    .unwrap_or_else(|| panic!("no grpc= in {line:?}"));
                assert!(rest.contains("metrics="), "no metrics= in {line:?}");
                server.addr = grpc.parse().unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
                return server;
            }
        }
    }

    /// A channel to its gRPC address (HTTP/2).
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to flashsale at {}: {e}; its log:\n{}", self.addr, self.log_text()))
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown, no flush, nothing.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill -9 flashsale");
        self.child.wait().expect("reap flashsale");
    }

    /// Its log so far ("" with `TEST_LOG`), for failure messages.
    pub fn log_text(&self) -> String {
        self.log.as_ref().and_then(|path| std::fs::read_to_string(path).ok()).unwrap_or_default()
    }
}

impl Drop for BinaryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keeps the test's environment (backends, ports, secrets) from reaching a server process.
pub fn clean_env(command: &mut std::process::Command) {
    command.env_clear();
    for keep in ["PATH", "RUST_LOG", "RUST_BACKTRACE"] {
        if let Some(value) = std::env::var_os(keep) {
            command.env(keep, value);
        }
    }
}

/// Request and answer bytes as they are: for requests no generated client would send.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

impl TestApp {
    /// Calls `path` (e.g. "/flashsale.v1.AuthService/Login") with `body` as the request message,
    /// bytes as they are, with `token` if given; the answer's bytes.
    pub async fn raw_call(
        &self,
        path: &'static str,
        body: Vec<u8>,
        token: Option<&str>,
    ) -> Result<Vec<u8>, tonic::Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready().await.expect("the channel is ready");
        let request = match token {
            Some(token) => authed(body, token),
            None => tonic::Request::new(body),
        };
        grpc.unary(request, http::uri::PathAndQuery::from_static(path), RawCodec).await.map(tonic::Response::into_inner)
    }
}

impl TestApp {
    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics_text(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let exchange = async {
            let mut socket = tokio::net::TcpStream::connect(self.metrics_addr).await.expect("connect to /metrics");
            let request = format!("GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.metrics_addr);
            socket.write_all(request.as_bytes()).await.expect("send");
            let mut raw = Vec::new();
            socket.read_to_end(&mut raw).await.expect("read");
            String::from_utf8_lossy(&raw).into_owned()
        };
        tokio::time::timeout(STREAM_DEADLINE, exchange).await.expect("/metrics answers")
    }

    /// The value of one sample of `/metrics` (its name with labels, as printed), if present.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let text = self.metrics_text().await;
        text.lines().find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
    }
}
