//! What surrounds the API: health, metrics, grpc-web and CORS for browsers, graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use flashsale_client::pb;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::helpers::{authed, next_message, spawn_app, spawn_app_with, AppOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_serving() {
    let app = spawn_app().await;
    let mut health = HealthClient::new(app.channel.clone());
    for service in ["", "flashsale.v1.PurchaseService"] {
        let response = health
            .check(HealthCheckRequest { service: service.into() })
            .await
            .unwrap_or_else(|e| panic!("health of {service:?}: {e:?}"))
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "health of {service:?}");
    }
}

/// An HTTP/1.1 response read off a raw socket.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    /// Lower-cased names.
    headers: Vec<(String, String)>,
    /// De-chunked body.
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Sends `request` on a new connection and reads the response until `enough` says the body
/// (so far) suffices, or the server closes the connection (`Connection: close`).
async fn raw_http(addr: std::net::SocketAddr, request: &[u8], enough: impl Fn(&[u8]) -> bool) -> RawResponse {
    let exchange = async {
        let mut socket = TcpStream::connect(addr).await.expect("connect");
        socket.write_all(request).await.expect("send request");
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = socket.read(&mut buf).await.expect("read response");
            raw.extend_from_slice(&buf[..n]);
            if let Some(response) = parse_response(&raw) {
                if n == 0 || enough(&response.body) {
                    return response;
                }
            }
            assert!(n > 0, "connection closed mid-response: {:?}", String::from_utf8_lossy(&raw));
        }
    };
    tokio::time::timeout(Duration::from_secs(10), exchange).await.expect("an HTTP response within the deadline")
}

/// Parses what has arrived so far: `None` until the head is complete. A chunked body is
/// de-chunked as far as whole chunks go.
fn parse_response(raw: &[u8]) -> Option<RawResponse> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..head_end]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[head_end + 4..];
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        let mut body = Vec::new();
        let mut at = 0;
        while let Some(line_end) = rest[at..].windows(2).position(|w| w == b"\r\n") {
            let size_text = std::str::from_utf8(&rest[at..at + line_end]).unwrap();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).expect("chunk size");
            let start = at + line_end + 2;
            if size == 0 || rest.len() < start + size + 2 {
                break;
            }
            body.extend_from_slice(&rest[start..start + size]);
            at = start + size + 2;
        }
        body
    } else {
        rest.to_vec()
    };
    Some(RawResponse { status, headers, body })
}

/// grpc-web frames of a body: (flags, payload) for every complete frame.
fn frames(body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut at = 0;
    while body.len() >= at + 5 {
        let len = u32::from_be_bytes(body[at + 1..at + 5].try_into().unwrap()) as usize;
        if body.len() < at + 5 + len {
            break;
        }
        frames.push((body[at], body[at + 5..at + 5 + len].to_vec()));
        at += 5 + len;
    }
    frames
}

/// A grpc-web POST of `message` to `path`, as a browser sends it.
fn grpc_web_request(addr: std::net::SocketAddr, path: &str, message: &impl Message) -> Vec<u8> {
    let payload = message.encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    body.extend_from_slice(&payload);
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/grpc-web+proto\r\n\
         Accept: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nOrigin: http://shop.example\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_purchases() {
    let app = spawn_app().await;
    let sale = app.active_sale(5, 0, 1).await;
    app.buy(&app.buyer_token("metered", "Metered"), &sale.id, 1, "k").await.expect("purchase");

    let request = format!("GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", app.metrics_addr);
    let response = raw_http(app.metrics_addr, request.as_bytes(), |_| false).await;
    assert_eq!(response.status, 200, "{response:?}");
    let text = String::from_utf8_lossy(&response.body);
    assert!(
        text.lines().any(|line| line.starts_with("flashsale_purchases_total")),
        "no flashsale_purchases_total sample in:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_watch_a_sale_over_grpc_web() {
    let app = spawn_app().await;
    let sale = app.active_sale(7, 0, 1).await;
    let path = "/flashsale.v1.FeedsService/WatchSale";
    let request = grpc_web_request(app.addr, path, &pb::WatchSaleRequest { sale_id: sale.id.clone() });

    // A live sale: the first data frame is the snapshot (the stream stays open).
    let response = raw_http(app.addr, &request, |body| frames(body).iter().any(|(flags, _)| flags & 0x80 == 0)).await;
    assert_eq!(response.status, 200, "{response:?}");
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("application/grpc-web"), "content-type {content_type:?}");
    assert!(response.header("access-control-allow-origin").is_some(), "CORS on the answer: {:?}", response.headers);
    let (_, payload) = frames(&response.body).into_iter().find(|(flags, _)| flags & 0x80 == 0).unwrap();
    let snapshot = pb::SaleSnapshot::decode(payload.as_slice()).expect("a SaleSnapshot");
    assert_eq!(snapshot.sale_id, sale.id);
    assert_eq!(snapshot.status(), pb::SaleStatus::Active);
    assert_eq!((snapshot.allocated, snapshot.remaining), (7, 7));

    // An ended sale: the final snapshot, then trailers saying OK, then the end of the body.
    app.end_sale(&sale.id).await;
    let response = raw_http(app.addr, &request, |_| false).await;
    assert_eq!(response.status, 200, "{response:?}");
    let frames = frames(&response.body);
    let data: Vec<_> = frames.iter().filter(|(flags, _)| flags & 0x80 == 0).collect();
    let snapshots: Vec<_> =
        data.iter().map(|(_, payload)| pb::SaleSnapshot::decode(payload.as_slice()).expect("a SaleSnapshot")).collect();
    let last = snapshots.last().expect("a final snapshot");
    assert_eq!((last.status(), last.end_reason()), (pb::SaleStatus::Ended, pb::EndReason::ByAdmin), "{snapshots:?}");
    assert_eq!(frames.last().map(|(flags, _)| flags & 0x80), Some(0x80), "trailers come last");
    let trailers =
        frames.iter().find(|(flags, _)| flags & 0x80 != 0).map(|(_, t)| String::from_utf8_lossy(t).to_lowercase());
    let trailers = trailers.expect("a trailers frame");
    assert!(trailers.contains("grpc-status:0") || trailers.contains("grpc-status: 0"), "{trailers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_allows_browsers() {
    let app = spawn_app().await;
    let request = format!(
        "OPTIONS /flashsale.v1.FeedsService/WatchSale HTTP/1.1\r\nHost: {}\r\nOrigin: http://shop.example\r\n\
         Access-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: content-type,x-grpc-web,x-user-agent,authorization\r\n\
         Connection: close\r\n\r\n",
        app.addr
    );
    let response = raw_http(app.addr, request.as_bytes(), |_| false).await;
    assert!((200..300).contains(&response.status), "{response:?}");
    let origin = response.header("access-control-allow-origin").expect("access-control-allow-origin");
    assert!(origin == "*" || origin == "http://shop.example", "allow-origin {origin:?}");
    let headers = response.header("access-control-allow-headers").unwrap_or_default().to_ascii_lowercase();
    for needed in ["content-type", "x-grpc-web", "authorization"] {
        assert!(headers == "*" || headers.contains(needed), "{needed} not allowed: {headers:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_ends_open_streams() {
    // A grace period longer than the test's patience: the server must not need it, the open
    // streams must end by themselves.
    let mut options = AppOptions::default();
    options.settings.shutdown_grace = Duration::from_secs(120);
    let app = spawn_app_with(options).await;
    let sale = app.active_sale(3, 0, 1).await;
    let mut watch = app.watch(&sale.id).await;
    next_message(&mut watch, "snapshot").await.expect("a snapshot");
    let mut board = app.leaderboard(&sale.id, 10).await;
    next_message(&mut board, "leaderboard").await.expect("a leaderboard");
    let addr = app.addr;

    let stopped = tokio::time::timeout(Duration::from_secs(30), app.stop())
        .await
        .expect("shutdown must not wait for the open streams");
    stopped.expect("the server stops cleanly");

    // The open streams end (cleanly or with a status), they do not hang.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = watch.message().await {}
        while let Ok(Some(_)) = board.message().await {}
    })
    .await;
    assert!(ended.is_ok(), "the open WatchSale and Leaderboard streams must end at shutdown");
    assert!(TcpStream::connect(addr).await.is_err(), "nothing listens after shutdown");
}

/// A purchase whose order is waiting in the group committer when SIGTERM arrives is still made
/// durable and answered: shutdown stops taking new work, lets the work under way finish, then
/// drains the committer's queue, all within the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_under_way_at_shutdown_is_durable_and_answered() {
    let gates = Arc::new(crate::gates::Gates::default());
    let mut options = AppOptions::default();
    options.settings.shutdown_grace = Duration::from_secs(10);
    options.wrap = Some(Box::new({
        let gates = gates.clone();
        move |backends| gates.wrap(backends)
    }));
    let app = spawn_app_with(options).await;
    let data_dir = app.data_dir.clone();
    let sale = app.active_sale(5, 0, 1).await;
    let token = app.buyer_token("last-minute", "Last Minute");

    let stop = gates.arm(crate::gates::Step::Commit);
    let buying = {
        let (channel, token, sale_id) = (app.channel.clone(), token.clone(), sale.id.clone());
        tokio::spawn(async move {
            let request = pb::PurchaseRequest {
                admission_pass: String::new(),
                sale_id,
                quantity: 1,
                idempotency_key: "k".into(),
            };
            flashsale_client::pb::purchase_service_client::PurchaseServiceClient::new(channel)
                .purchase(authed(request, &token))
                .await
        })
    };
    stop.reached.await.expect("the order is in the committer");
    app.begin_shutdown();
    stop.go.send(()).unwrap();

    let answer = buying.await.unwrap().expect("the purchase under way is answered");
    let order = answer.into_inner().order.expect("with its order");
    app.stop().await.expect("a clean shutdown within the grace period");

    if !crate::helpers::production_backends() {
        // The same data directory, served again: the order is there.
        let again = spawn_app_with(AppOptions { data_dir: Some(data_dir), ..AppOptions::default() }).await;
        assert_eq!(again.get_sale(&sale.id).await.sold, 1);
        let mine = again.my_orders(&token, &sale.id).await;
        assert_eq!(mine.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), [order.id.as_str()]);
    }
}

/// With `--tls-cert`/`--tls-key` the port speaks TLS (a certificate made here, for localhost and
/// 127.0.0.1): the Rust client and grpcurl trusting it are served; plain text is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_over_tls_to_the_rust_client_and_grpcurl() {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let mut options = AppOptions::default();
    options.settings.tls = Some(flashsale::config::TlsFiles { cert: cert.clone(), key });
    let app = spawn_app_with(options).await;
    let port = app.addr.port();

    let client = flashsale_client::Client::connect_tls(format!("https://localhost:{port}"), made.cert.pem())
        .await
        .expect("a TLS connection trusting the certificate");
    let request = pb::CreateProductRequest { name: "Lamp".into(), initial_inventory: 5, ..Default::default() };
    let product = client
        .admin()
        .create_product(authed(request, &app.admin_token()))
        .await
        .expect("an admin call over TLS")
        .into_inner();
    assert_eq!(product.name, "Lamp");

    // Plain text to a TLS port: no answer.
    let plain = flashsale_client::Client::connect(format!("http://127.0.0.1:{port}")).await;
    let refused = match plain {
        Err(_) => true,
        Ok(plain) => plain.auth().login(pb::LoginRequest::default()).await.is_err(),
    };
    assert!(refused, "a plain-text client was served on the TLS port");

    // grpcurl trusting the certificate: reflection lists the services, a call is answered.
    use crate::grpcurl::grpcurl;
    let ca = cert.display().to_string();
    let target = format!("localhost:{port}");
    let listed = grpcurl(vec!["-cacert".into(), ca.clone(), target.clone(), "list".into()]).await;
    assert!(listed.success && listed.stdout.contains("flashsale.v1.PurchaseService"), "{}", listed.stderr);
    let health = grpcurl(vec!["-cacert".into(), ca, target.clone(), "grpc.health.v1.Health/Check".into()]).await;
    assert!(health.stdout.contains("SERVING"), "{}", health.stderr);
    // Without trusting it, grpcurl refuses the unknown certificate; in plain text it gets nothing.
    let untrusted = grpcurl(vec![target.clone(), "list".into()]).await;
    assert!(!untrusted.success, "grpcurl trusted a certificate nobody vouched for");
    let plaintext = grpcurl(vec!["-plaintext".into(), "-max-time".into(), "5".into(), target, "list".into()]).await;
    assert!(!plaintext.success, "grpcurl was served in plain text on the TLS port");
}
