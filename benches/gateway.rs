//! The gateway alone, without network or database: route matching (Conduit's
//! rules, then 10 and 1,000 synthetic rules), proto3 JSON decode and encode
//! of Conduit-sized messages, and whole requests through the gateway to a
//! stub service that answers a canned article, beside the same call through
//! tonic's own gRPC path; and the cost of the generated validation. `cargo bench --bench gateway`.
#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;

use axum::body::Body;
use bytes::{BufMut, Bytes, BytesMut};
use conduit::pb::conduit::v1::{self as pb, articles_server};
use criterion::{Criterion, criterion_group, criterion_main};
use gateway::{Dispatch, Gateway, Router};
use http_body_util::BodyExt;
use tonic::{Request, Response, Status};
use tower::ServiceExt;

/// Answers every read and write with the same article, as fast as it can.
struct Stub {
    article: pb::SingleArticleResponse,
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl articles_server::Articles for Stub {
    async fn list_articles(&self, _: Request<pb::ListArticlesRequest>) -> Answer<pb::MultipleArticlesResponse> {
        Err(Status::unimplemented("stub"))
    }
    async fn feed_articles(&self, _: Request<pb::FeedArticlesRequest>) -> Answer<pb::MultipleArticlesResponse> {
        Err(Status::unimplemented("stub"))
    }
    async fn get_article(&self, _: Request<pb::GetArticleRequest>) -> Answer<pb::SingleArticleResponse> {
        Ok(Response::new(self.article.clone()))
    }
    async fn create_article(&self, r: Request<pb::CreateArticleRequest>) -> Answer<pb::SingleArticleResponse> {
        black_box(r);
        Ok(Response::new(self.article.clone()))
    }
    async fn update_article(&self, _: Request<pb::UpdateArticleRequest>) -> Answer<pb::SingleArticleResponse> {
        Err(Status::unimplemented("stub"))
    }
    async fn delete_article(&self, _: Request<pb::DeleteArticleRequest>) -> Answer<pb::DeleteArticleResponse> {
        Err(Status::unimplemented("stub"))
    }
    async fn favorite_article(&self, _: Request<pb::FavoriteArticleRequest>) -> Answer<pb::SingleArticleResponse> {
        Err(Status::unimplemented("stub"))
    }
    async fn unfavorite_article(&self, _: Request<pb::UnfavoriteArticleRequest>) -> Answer<pb::SingleArticleResponse> {
        Err(Status::unimplemented("stub"))
    }
    type ExportArticlesStream = futures_util::stream::BoxStream<'static, Result<pb::Article, Status>>;
    async fn export_articles(&self, _: Request<pb::ExportArticlesRequest>) -> Answer<Self::ExportArticlesStream> {
        Err(Status::unimplemented("stub"))
    }
}

/// About 1.5 KB of Markdown, as a typical RealWorld article body.
fn body_text() -> String {
    "Dragons are *not* to be trained lightly. ".repeat(36)
}

fn article() -> pb::SingleArticleResponse {
    let time = gateway::wkt::Timestamp { seconds: 1_764_000_000, nanos: 123_000_000 };
    pb::SingleArticleResponse {
        article: Some(pb::Article {
            slug: "how-to-train-your-dragon-1a2b3c".into(),
            title: "How to train your dragon".into(),
            description: "Ever wonder how?".into(),
            body: body_text(),
            tag_list: vec!["dragons".into(), "training".into(), "fantasy".into()],
            created_at: Some(time),
            updated_at: Some(time),
            favorited: true,
            favorites_count: 42,
            author: Some(pb::Profile {
                username: "jake".into(),
                bio: Some("I work at statefarm".into()),
                image: Some("https://i.stack.imgur.com/xHWG8.jpg".into()),
                following: false,
            }),
        }),
    }
}

fn create_body() -> Bytes {
    serde_json::to_vec(&serde_json::json!({"article": {
        "title": "How to train your dragon",
        "description": "Ever wonder how?",
        "body": body_text(),
        "tagList": ["dragons", "training", "fantasy"],
    }}))
    .unwrap()
    .into()
}

fn routing(c: &mut Criterion) {
    let mut conduit = Router::new();
    for route in pb::HTTP_ROUTES {
        conduit.add(route.http_method.parse().unwrap(), route.template).unwrap();
    }
    let mut group = c.benchmark_group("route_match");
    group.bench_function("conduit: GET /api/articles/{slug}/comments", |b| {
        b.iter(|| conduit.find(&http::Method::GET, black_box("/api/articles/how-to-train-your-dragon/comments")))
    });
    // Synthetic APIs: resources with nested collections and custom verbs.
    for size in [10usize, 1_000] {
        let mut router = Router::new();
        for i in 0..size {
            router.add(http::Method::GET, &format!("/v1/shelves{i}/{{shelf}}/books/{{book}}")).unwrap();
            router.add(http::Method::POST, &format!("/v1/shelves{i}/{{shelf}}/books/{{book}}:archive")).unwrap();
        }
        let last = format!("/v1/shelves{}/s1/books/b2:archive", size - 1);
        group.bench_function(format!("{} rules: POST …:archive (last added)", 2 * size), |b| {
            b.iter(|| router.find(&http::Method::POST, black_box(&last)))
        });
    }
    group.finish();
}

fn json(c: &mut Criterion) {
    let body = create_body();
    let answer = article();
    let mut group = c.benchmark_group("json");
    group.bench_function(format!("decode CreateArticleRequest ({} B)", body.len()), |b| {
        b.iter(|| serde_json::from_slice::<pb::CreateArticleRequest>(black_box(&body)).unwrap())
    });
    let request: pb::CreateArticleRequest = serde_json::from_slice(&body).unwrap();
    group.bench_function("validate CreateArticleRequest (buf.validate rules, generated)", |b| {
        b.iter(|| gateway::validate::Validate::validate(black_box(&request)).unwrap())
    });
    let size = serde_json::to_vec(&answer).unwrap().len();
    group.bench_function(format!("encode SingleArticleResponse ({size} B)"), |b| {
        b.iter(|| serde_json::to_vec(black_box(&answer)).unwrap())
    });
    group.finish();
}

fn framed(message: &impl prost::Message) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(0);
    out.put_u32(message.encoded_len() as u32);
    message.encode(&mut out).unwrap();
    out.freeze()
}

fn requests(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let stub = Arc::new(Stub { article: article() });
    let gateway =
        Gateway::builder().methods(pb::articles_gateway_methods(stub.clone())).routes(pb::HTTP_ROUTES).build().unwrap();
    let grpc = tonic::service::Routes::new(articles_server::ArticlesServer::from_arc(stub.clone())).into_axum_router();
    let dispatch = Dispatch::new(grpc, gateway);
    let create = create_body();
    let get = framed(&pb::GetArticleRequest { slug: "how-to-train-your-dragon-1a2b3c".into() });

    async fn send(service: Dispatch<axum::Router>, request: http::Request<Body>) -> Bytes {
        let response: Result<_, Infallible> = service.oneshot(request).await;
        let response = response.unwrap();
        assert!(response.status().is_success());
        response.into_body().collect().await.unwrap().to_bytes()
    }

    let mut group = c.benchmark_group("request");
    group.bench_function("stub service call alone (GetArticle)", |b| {
        b.to_async(&runtime).iter(|| {
            let stub = stub.clone();
            async move {
                let request = Request::new(pb::GetArticleRequest { slug: "s".into() });
                articles_server::Articles::get_article(&*stub, request).await.unwrap()
            }
        })
    });
    group.bench_function("JSON GET /api/articles/{slug} (route, bind, call, encode)", |b| {
        b.to_async(&runtime).iter(|| {
            let request =
                http::Request::get("/api/articles/how-to-train-your-dragon-1a2b3c").body(Body::empty()).unwrap();
            send(dispatch.clone(), request)
        })
    });
    group.bench_function("JSON POST /api/articles (route, decode 1.5 KB, call, encode)", |b| {
        b.to_async(&runtime).iter(|| {
            let request = http::Request::post("/api/articles")
                .header("content-type", "application/json")
                .body(Body::from(create.clone()))
                .unwrap();
            send(dispatch.clone(), request)
        })
    });
    group.bench_function("Connect proto GetArticle", |b| {
        b.to_async(&runtime).iter(|| {
            let request = http::Request::post("/conduit.v1.Articles/GetArticle")
                .header("content-type", "application/proto")
                .body(Body::from(get.slice(5..)))
                .unwrap();
            send(dispatch.clone(), request)
        })
    });
    group.bench_function("gRPC GetArticle through tonic (the reference)", |b| {
        b.to_async(&runtime).iter(|| {
            let request = http::Request::post("/conduit.v1.Articles/GetArticle")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Body::from(get.clone()))
                .unwrap();
            send(dispatch.clone(), request)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = routing, json, requests
}
criterion_main!(benches);
