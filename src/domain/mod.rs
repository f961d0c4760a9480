//! The Conduit domain: the RealWorld services over Postgres.
//!
//! Knows nothing of HTTP: services take typed requests with metadata and
//! return typed responses or [`error::ConduitError`] (as `tonic::Status`).
//! The gateway reaches them through the routes generated from the protos.

pub mod articles;
pub mod auth;
pub mod comments;
pub mod context;
pub mod error;
pub mod idempotent;
pub mod notifications;
pub mod profiles;
pub mod users;
pub mod validate;

pub use context::{Ctx, Exports};

use std::sync::Arc;

use crate::pb::conduit::v1 as pb;
use gateway::Method;

/// The job handlers of the domain.
pub fn job_handlers() -> crate::postgres::jobs::Handlers {
    let mut handlers = crate::postgres::jobs::Handlers::new();
    notifications::register(&mut handlers);
    handlers
}

/// The tonic services and the gateway's handlers of the whole API, over one
/// context; notification watches go through `hub`. gRPC messages larger
/// than `message_limit` bytes are refused, as JSON and Connect bodies are
/// (one setting for every protocol).
pub fn services(
    ctx: Ctx,
    message_limit: usize,
    hub: notifications::Hub,
    exports: Exports,
) -> (tonic::service::Routes, Vec<Method>) {
    let users = Arc::new(users::Users::new(ctx.clone()));
    let profiles = Arc::new(profiles::Profiles::new(ctx.clone()));
    let articles = Arc::new(articles::Articles::new(ctx.clone(), exports));
    let notifications = Arc::new(notifications::Notifications::new(ctx.clone(), hub));
    let comments = Arc::new(comments::Comments::new(ctx.clone()));
    let tags = Arc::new(articles::Tags::new(ctx));

    let mut http = Vec::new();
    http.extend(pb::users_gateway_methods(users.clone()));
    http.extend(pb::profiles_gateway_methods(profiles.clone()));
    http.extend(pb::articles_gateway_methods(articles.clone()));
    http.extend(pb::comments_gateway_methods(comments.clone()));
    http.extend(pb::tags_gateway_methods(tags.clone()));
    http.extend(pb::notifications_gateway_methods(notifications.clone()));

    // Each server: the message limit, and gzip messages accepted and sent
    // to clients that offer it (`grpc-accept-encoding`).
    macro_rules! server {
        ($server:ty, $service:expr) => {
            <$server>::from_arc($service)
                .max_decoding_message_size(message_limit)
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
                .send_compressed(tonic::codec::CompressionEncoding::Gzip)
        };
    }
    let grpc = tonic::service::Routes::new(server!(pb::users_server::UsersServer<_>, users))
        .add_service(server!(pb::profiles_server::ProfilesServer<_>, profiles))
        .add_service(server!(pb::articles_server::ArticlesServer<_>, articles))
        .add_service(server!(pb::comments_server::CommentsServer<_>, comments))
        .add_service(server!(pb::tags_server::TagsServer<_>, tags))
        .add_service(server!(pb::notifications_server::NotificationsServer<_>, notifications));
    (grpc, http)
}
