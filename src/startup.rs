//! Builds the application from settings: database pool, migrations, the
//! service stack on one listener. Shared by `main` and the tests.

use std::future::Future;
use std::net::SocketAddr;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};

use crate::conduit::auth::{Passwords, Tokens};
use crate::conduit::{self, Ctx, error::RealWorldErrors};
use crate::config::ServeSettings;
use gateway::{ClassifyLayer, Dispatch, Gateway};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The database is unreachable or refused us.
    #[error("cannot connect to the database: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("cannot migrate the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The listen address is unusable.
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    /// An HTTP rule is malformed.
    #[error("invalid HTTP rule: {0}")]
    Route(#[from] gateway::TemplateError),
}

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Opens a pool to the database.
pub async fn connect(
    url: &str,
    max_connections: u32,
    acquire_timeout: std::time::Duration,
) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new().max_connections(max_connections).acquire_timeout(acquire_timeout).connect(url).await
}

/// A built application, listening but not yet serving.
pub struct Application {
    listener: TcpListener,
    app: axum::Router,
    db: PgPool,
}

impl Application {
    /// Connects, migrates if asked, binds the listener and assembles the stack.
    pub async fn build(settings: &ServeSettings) -> Result<Self, StartupError> {
        let db =
            connect(settings.database_url.expose(), settings.db_max_connections, settings.db_acquire_timeout).await?;
        if settings.migrate_on_start {
            MIGRATOR.run(&db).await?;
        }
        let ctx = Ctx {
            db: db.clone(),
            tokens: Tokens::new(settings.jwt_secret.expose().as_bytes(), settings.jwt_ttl),
            passwords: Passwords::new(settings.password_hash_concurrency),
        };
        let app = stack(ctx, settings)?;
        let listener =
            TcpListener::bind(settings.listen).await.map_err(|e| StartupError::Listen(settings.listen, e))?;
        Ok(Self { listener, app, db })
    }

    /// The port it listens on (useful with port 0).
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    /// The database pool.
    pub fn db(&self) -> &PgPool {
        &self.db
    }

    /// Serves until `shutdown` completes, then finishes requests in flight.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        axum::serve(nodelay(self.listener), self.app).with_graceful_shutdown(shutdown).await?;
        self.db.close().await;
        Ok(())
    }
}

/// Accepted sockets send at once (`TCP_NODELAY`): a gRPC answer is written
/// as headers, data and trailers, and Nagle's algorithm held the last write
/// until the client's delayed ACK, adding ~40 ms to every unary call.
pub fn nodelay(listener: TcpListener) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY on an accepted socket");
        }
    })
}

/// CORS for browser clients (RealWorld frontends are served from another
/// origin); tokens travel in the Authorization header, never in cookies.
fn cors(settings: &ServeSettings) -> CorsLayer {
    let origins = match &settings.cors_allowed_origins {
        None => AllowOrigin::any(),
        Some(list) => AllowOrigin::list(list.iter().cloned()),
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods(AllowMethods::mirror_request())
        .allow_headers(AllowHeaders::mirror_request())
        .max_age(std::time::Duration::from_secs(3600))
}

/// The service stack, outermost first: CORS, then classify each request by
/// RPC (so that layers added between it and the split can key on it for
/// every protocol), then split gRPC from JSON.
fn stack(ctx: Ctx, settings: &ServeSettings) -> Result<axum::Router, StartupError> {
    let (grpc, methods) = conduit::services(ctx);
    let gateway = Gateway::builder()
        .methods(methods)
        .routes(crate::pb::conduit::v1::HTTP_ROUTES)
        .renderer(RealWorldErrors)
        .body_limit(settings.body_limit)
        .build()?;
    let service = tower::ServiceBuilder::new()
        .layer(cors(settings))
        .layer(ClassifyLayer::new(gateway.clone()))
        .service(Dispatch::new(grpc.into_axum_router(), gateway));
    Ok(axum::Router::new().fallback_service(service))
}
