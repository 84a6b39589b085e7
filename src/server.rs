//! Wires the service onto bound listeners: tonic with grpc-web (HTTP/1.1 accepted) and CORS,
//! reflection v1 and v1alpha, grpc.health.v1, the auth interceptor, message size limits, and
//! Prometheus metrics on their own HTTP port. Shutdown is one cancellation token; open streams
//! end at once and draining is bounded by `Settings::shutdown_grace`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use http::{header::HeaderName, Method};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Routes;
use tonic::transport::Server;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::backends::Backends;
use crate::clock::Clock;
use crate::config::Settings;
use crate::grpc::{authenticate, AdminApi, AuthApi, FeedsApi, OrdersApi, PurchaseApi, RateLimits};
use crate::pb;
use crate::pb::admin_service_server::AdminServiceServer;
use crate::pb::auth_service_server::AuthServiceServer;
use crate::pb::feeds_service_server::FeedsServiceServer;
use crate::pb::orders_service_server::OrdersServiceServer;
use crate::pb::purchase_service_server::PurchaseServiceServer;
use crate::service::App;

/// The sockets the server serves on, bound by the caller (tests bind port 0).
pub struct Listeners {
    /// gRPC and grpc-web.
    pub grpc: TcpListener,
    /// Prometheus `GET /metrics`; none to serve no metrics endpoint.
    pub metrics: Option<TcpListener>,
}

fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::mirror_request())
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers(
            ["content-type", "x-grpc-web", "x-user-agent", "grpc-timeout", "authorization"]
                .map(HeaderName::from_static),
        )
        .expose_headers(["grpc-status", "grpc-message", "grpc-status-details-bin"].map(HeaderName::from_static))
        .max_age(Duration::from_secs(24 * 3600))
}

/// The TLS identity of `files` (rustls, through tonic). Clients negotiate HTTP/2 (ALPN `h2`):
/// gRPC clients, grpcurl and browsers (grpc-web over HTTPS) all do; a client that offers only
/// `http/1.1` is refused (plain text serves HTTP/1.1 grpc-web as before).
fn tls_config(files: &crate::config::TlsFiles) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("reading the TLS file {}", path.display()))
    };
    let identity = tonic::transport::Identity::from_pem(read(&files.cert)?, read(&files.key)?);
    // A connection that never finishes its handshake is closed instead of kept for ever.
    Ok(tonic::transport::ServerTlsConfig::new().identity(identity).timeout(Duration::from_secs(10)))
}

/// Opens the backends the settings name, then serves until `shutdown` is cancelled and drains
/// for at most the grace period.
pub async fn run(
    listeners: Listeners,
    settings: Settings,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let backends = Backends::open(&settings).await?;
    run_with(listeners, settings, backends, clock, shutdown).await
}

/// Serves on the given backends (tests pass their own) until `shutdown` is cancelled, then
/// drains for at most the grace period.
pub async fn run_with(
    listeners: Listeners,
    settings: Settings,
    backends: Backends,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = crate::metrics::handle();
    let secret = crate::auth::load_or_create_secret(settings.jwt_secret.as_deref(), &settings.data_dir)?;
    let keys = crate::auth::JwtKeys::new(&secret);
    let app = App::start(backends, keys, &settings, clock.clone(), shutdown.clone()).await?;
    let limits = Arc::new(RateLimits::new(&settings));
    let max = settings.max_message_bytes;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AuthServiceServer<AuthApi>>().await;
    health.set_serving::<AdminServiceServer<AdminApi>>().await;
    health.set_serving::<PurchaseServiceServer<PurchaseApi>>().await;
    health.set_serving::<FeedsServiceServer<FeedsApi>>().await;
    health.set_serving::<OrdersServiceServer<OrdersApi>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc.ErrorInfo and friends, so grpcurl can print error details.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };

    let auth =
        AuthServiceServer::new(AuthApi { app: app.clone(), limits: limits.clone() }).max_decoding_message_size(max);
    let admin = AdminServiceServer::new(AdminApi { app: app.clone() }).max_decoding_message_size(max);
    let purchase = PurchaseServiceServer::new(PurchaseApi { app: app.clone(), limits: limits.clone() })
        .max_decoding_message_size(max);
    let orders = OrdersServiceServer::new(OrdersApi { app: app.clone() }).max_decoding_message_size(max);
    let feeds = FeedsServiceServer::new(FeedsApi { app: app.clone(), clock }).max_decoding_message_size(max);
    let interceptor = authenticate(std::sync::Arc::new(app.keys().clone()));

    let mut routes = Routes::builder();
    routes
        .add_service(health_service)
        .add_service(reflection().build_v1().context("building reflection v1")?)
        .add_service(reflection().build_v1alpha().context("building reflection v1alpha")?)
        .add_service(auth)
        .add_service(InterceptedService::new(admin, interceptor.clone()))
        .add_service(InterceptedService::new(purchase, interceptor.clone()))
        .add_service(InterceptedService::new(orders, interceptor))
        .add_service(feeds);
    // Plain HTTP routes (the browser page) share the port with gRPC and grpc-web.
    // grpc-web wraps the gRPC routes only: it answers 400 to any other HTTP/1.1 request, the page's GETs included.
    // Inside grpc-web, so that its translation applies to the explained refusals too.
    let router = routes
        .routes()
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(max, crate::grpc::explain_refusals))
        .layer(tonic_web::GrpcWebLayer::new())
        .merge(crate::web::router());

    let mut server = Server::builder();
    if let Some(files) = &settings.tls {
        server = server.tls_config(tls_config(files)?).context("setting up TLS")?;
        tracing::info!(cert = %files.cert.display(), "serving over TLS");
    }
    let grpc = server.accept_http1(true).layer(cors()).add_routes(Routes::from(router)).serve_with_incoming_shutdown(
        TcpListenerStream::new(listeners.grpc),
        {
            let shutdown = shutdown.clone();
            let health = health.clone();
            async move {
                shutdown.cancelled().await;
                health.set_not_serving::<PurchaseServiceServer<PurchaseApi>>().await;
            }
        },
    );

    let metrics_server = async {
        let Some(listener) = listeners.metrics else { return Ok(()) };
        // Live figures (units in flight per sale) are read from the hot state at each scrape.
        let app = app.clone();
        let scrape = move || {
            let (app, metrics) = (app.clone(), metrics.clone());
            async move {
                app.report_live_metrics().await;
                metrics.render()
            }
        };
        let router = axum::Router::new().route("/metrics", axum::routing::get(scrape));
        axum::serve(listener, router).with_graceful_shutdown(shutdown.clone().cancelled_owned()).await
    };

    let housekeeping = {
        let (limits, shutdown) = (limits.clone(), shutdown.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {
                        limits.forget_idle();
                        crate::metrics::handle().run_upkeep();
                    }
                }
            }
        }
    };
    let chores = tokio_util::task::TaskTracker::new();
    chores.spawn(housekeeping);
    chores.close();

    let serving = async {
        let (grpc, metrics) = tokio::join!(grpc, metrics_server);
        grpc.context("gRPC server failed")?;
        metrics.context("metrics server failed")
    };
    tokio::pin!(serving);
    tokio::select! {
        served = &mut serving => return served, // failed before any shutdown
        _ = shutdown.cancelled() => {}
    }
    // Draining, within the grace period: open streams end, answers go out, and purchases whose
    // callers went away finish settling.
    let deadline = tokio::time::Instant::now() + settings.shutdown_grace;
    match tokio::time::timeout_at(deadline, serving).await {
        Ok(served) => served?,
        Err(_) => {
            tracing::warn!(grace = ?settings.shutdown_grace, "connections still open after the grace period; stopping anyway")
        }
    }
    // Then the work requests started and the background tasks, then the committer's queue.
    if !app.drain(deadline.saturating_duration_since(tokio::time::Instant::now())).await {
        tracing::warn!("work still running after the grace period; stopping anyway");
    }
    let _ = tokio::time::timeout_at(deadline, chores.wait()).await;
    tracing::info!("server stopped");
    Ok(())
}
