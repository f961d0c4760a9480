//! The gateway against a test-only API (`proto/gatewaytest/v1/lab.proto`)
//! whose service answers with what it was sent: the `google.api.http`
//! grammar, the proto3 JSON mapping, field presence and update masks,
//! server streaming over NDJSON, SSE, Connect, gRPC and gRPC-Web, and a
//! layer that sees every protocol. Expected values come from
//! `google/api/http.proto` and the protobuf JSON mapping.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use gateway::{ClassifyLayer, Dispatch, Gateway, Protocol, RpcMethod};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tonic::{Code, Status};

use gateway_tests::gatewaytest::common::v1 as common;
use gateway_tests::pb;

mod protojson;

/// What the service saw of streams.
#[derive(Default)]
struct Seen {
    /// Ticks handed to the transport.
    produced: AtomicUsize,
    /// Streams whose consumer went away before the end.
    cancelled: AtomicUsize,
}

struct Lab {
    seen: Arc<Seen>,
}

type TickStream = futures_util::stream::BoxStream<'static, Result<pb::Tick, Status>>;
type ThingStream = futures_util::stream::BoxStream<'static, Result<pb::Thing, Status>>;

#[tonic::async_trait]
impl pb::lab_server::Lab for Lab {
    async fn echo(&self, request: tonic::Request<pb::Thing>) -> Result<tonic::Response<pb::Thing>, Status> {
        Ok(tonic::Response::new(request.into_inner()))
    }

    async fn echo_note(&self, request: tonic::Request<pb::Thing>) -> Result<tonic::Response<pb::Thing>, Status> {
        Ok(tonic::Response::new(request.into_inner()))
    }

    async fn update_thing(
        &self,
        request: tonic::Request<pb::UpdateThingRequest>,
    ) -> Result<tonic::Response<pb::UpdateThingRequest>, Status> {
        Ok(tonic::Response::new(request.into_inner()))
    }

    async fn nothing(
        &self,
        _: tonic::Request<gateway::wkt::Empty>,
    ) -> Result<tonic::Response<gateway::wkt::Empty>, Status> {
        Ok(tonic::Response::new(gateway::wkt::Empty {}))
    }

    async fn fail(&self, request: tonic::Request<pb::FailRequest>) -> Result<tonic::Response<pb::Thing>, Status> {
        let code = Code::from_i32(request.into_inner().code);
        if code == Code::InvalidArgument {
            return Err(gateway::invalid_field("name", "must not be blank".into()));
        }
        Err(Status::new(code, "failed as asked"))
    }

    type CountStream = TickStream;

    async fn count(&self, request: tonic::Request<pb::CountRequest>) -> Result<tonic::Response<TickStream>, Status> {
        let r = request.into_inner();
        let interval = r.interval.map(|d| Duration::new(d.seconds as u64, d.nanos as u32)).unwrap_or_default();
        let pad = "x".repeat(r.pad.max(0) as usize);
        // One message in flight: the transport's pace is the producer's pace.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let seen = self.seen.clone();
        tokio::spawn(async move {
            for n in 1..=r.to {
                let item = if r.fail_after > 0 && n > r.fail_after {
                    Err(Status::failed_precondition(format!("stopped after {}", r.fail_after)))
                } else {
                    Ok(pb::Tick { n, pad: pad.clone() })
                };
                let last = item.is_err();
                if tx.send(item).await.is_err() {
                    seen.cancelled.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                seen.produced.fetch_add(1, Ordering::SeqCst);
                if last {
                    return;
                }
                if !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        Ok(tonic::Response::new(stream.boxed()))
    }

    async fn upload(
        &self,
        request: tonic::Request<tonic::Streaming<pb::Thing>>,
    ) -> Result<tonic::Response<pb::Thing>, Status> {
        let mut things = request.into_inner();
        let mut last = pb::Thing::default();
        while let Some(thing) = things.next().await {
            last = thing?;
        }
        Ok(tonic::Response::new(last))
    }

    async fn stamp(&self, request: tonic::Request<pb::parcel::Label>) -> Result<tonic::Response<common::Note>, Status> {
        let label = request.into_inner();
        let part = |number| common::note::Part { number, text: label.text.clone() };
        Ok(tonic::Response::new(common::Note {
            text: label.text.clone(),
            parts: (1..=label.copies).map(part).collect(),
        }))
    }

    async fn first_part(
        &self,
        request: tonic::Request<common::Note>,
    ) -> Result<tonic::Response<common::note::Part>, Status> {
        let note = request.into_inner();
        note.parts
            .into_iter()
            .next()
            .map(tonic::Response::new)
            .ok_or_else(|| Status::not_found("the note has no parts"))
    }

    type ChatStream = ThingStream;

    async fn chat(
        &self,
        request: tonic::Request<tonic::Streaming<pb::Thing>>,
    ) -> Result<tonic::Response<ThingStream>, Status> {
        Ok(tonic::Response::new(request.into_inner().boxed()))
    }
}

/// The lab on a real socket, with a layer between classification and
/// dispatch that records the (rpc, protocol) of every request.
struct LabServer {
    port: u16,
    seen: Arc<Seen>,
    recorded: Arc<Mutex<BTreeSet<(String, &'static str)>>>,
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

async fn lab() -> LabServer {
    lab_with(false).await
}

/// The lab, ignoring unknown JSON fields (`true`) or refusing them.
async fn lab_with(ignore_unknown_fields: bool) -> LabServer {
    let seen = Arc::new(Seen::default());
    let service = Arc::new(Lab { seen: seen.clone() });
    let conformance = Arc::new(protojson::Conformance);
    let gateway = Gateway::builder()
        .methods(pb::lab_gateway_methods(service.clone()))
        .methods(pb::conformance_gateway_methods(conformance.clone()))
        .routes(pb::HTTP_ROUTES)
        .any_types(pb::ANY_TYPES)
        .ignore_unknown_fields(ignore_unknown_fields)
        .build()
        .expect("the lab's rules are valid");
    let grpc = tonic::service::Routes::new(pb::lab_server::LabServer::from_arc(service))
        .add_service(pb::conformance_server::ConformanceServer::from_arc(conformance))
        .into_axum_router();
    let recorded = Arc::new(Mutex::new(BTreeSet::new()));
    let record = recorded.clone();
    let recorder = tower::util::MapRequestLayer::new(move |req: http::Request<Body>| {
        let rpc = req.extensions().get::<RpcMethod>().map(|r| r.0.to_owned()).unwrap_or_default();
        let protocol = req.extensions().get::<Protocol>().map(|p| p.as_str()).unwrap_or("none");
        record.lock().unwrap().insert((rpc, protocol));
        req
    });
    let app = tower::ServiceBuilder::new()
        .layer(ClassifyLayer::new(gateway.clone()))
        .layer(recorder)
        .service(Dispatch::new(grpc, gateway));
    let app = axum::Router::new().fallback_service(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // HTTP/1.1 and HTTP/2 with prior knowledge on one listener, as a service
    // would; answers are sent at once (no Nagle delay on gRPC's last write).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    LabServer { port, seen, recorded, http: Client::builder(TokioExecutor::new()).build_http() }
}

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl LabServer {
    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Answer {
        let mut builder = http::Request::builder().method(method).uri(format!("http://127.0.0.1:{}{path}", self.port));
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let response = self.http.request(builder.body(Full::new(body.into())).unwrap()).await.expect("sent");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = tokio::time::timeout(Duration::from_secs(20), response.into_body().collect())
            .await
            .expect("the body ends")
            .unwrap()
            .to_bytes();
        Answer { status, headers, body }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, &[], Bytes::new()).await
    }

    async fn post_json(&self, path: &str, body: Value) -> Answer {
        self.send("POST", path, &[("content-type", "application/json")], serde_json::to_vec(&body).unwrap()).await
    }
}

#[tokio::test]
async fn templates_bind_variables_verbs_and_additional_bindings() {
    let lab = lab().await;
    let cases: &[(&str, &str, &str, Value)] = &[
        ("POST", "/v1/things/a%20b", r#"{"id":"ignored","name":"n"}"#, json!({"id": "a b", "name": "n"})),
        ("GET", "/v1/things/t1", "", json!({"id": "t1"})),
        ("GET", "/v1/shelves/1/books/2", "", json!({"name": "shelves/1/books/2"})),
        ("POST", "/v1/things/t2:cancel", r#""a note""#, json!({"id": "t2", "note": "a note"})),
        ("GET", "/v1/files/a/b/c.txt", "", json!({"path": "a/b/c.txt"})),
        ("GET", "/v1/nested/lbl/x", "", json!({"inner": {"label": "lbl"}})),
    ];
    for (method, path, body, expected) in cases {
        let answer = lab.send(method, path, &[("content-type", "application/json")], body.to_string()).await;
        assert_eq!(answer.status, 200, "{method} {path}: {}", answer.text());
        let got = answer.json();
        for (key, value) in expected.as_object().unwrap() {
            assert_eq!(&got[key], value, "{method} {path} field {key}: {got}");
        }
    }
    // A custom method kind (HEAD) from `custom`.
    assert_eq!(lab.send("HEAD", "/v1/things/t1", &[], Bytes::new()).await.status, 200);
    // response_body picks one field: a JSON string here.
    let note = lab.get("/v1/things/t1/note?note=hello").await;
    assert_eq!(note.json(), json!("hello"));
    let wrong = lab.send("PUT", "/v1/things/t1", &[], Bytes::new()).await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.headers["allow"], "POST, GET, HEAD, PATCH");
    assert_eq!(lab.get("/v1/nowhere").await.status, 404);
}

/// Request and response types may be nested messages and messages of other
/// packages (google/api/http.proto puts no limit on them): every protocol
/// serves them.
#[tokio::test]
async fn methods_take_nested_messages_and_messages_of_other_packages() {
    use prost::Message as _;
    let lab = lab().await;
    let stamped = lab.send("POST", "/v1/parcels/fragile:stamp", &[], r#"{"copies": 2}"#).await;
    assert_eq!(stamped.status, 200, "{}", stamped.text());
    assert_eq!(
        stamped.json(),
        json!({"text": "fragile", "parts": [{"number": 1, "text": "fragile"}, {"number": 2, "text": "fragile"}]})
    );
    let note = json!({"text": "n", "parts": [{"number": 7, "text": "seven"}]});
    let first = lab.post_json("/v1/notes:first-part", note.clone()).await;
    assert_eq!(first.json(), json!({"number": 7, "text": "seven"}));
    let connect = lab.post_json("/gatewaytest.v1.Lab/FirstPart", note).await;
    assert_eq!((connect.status, connect.json()), (200, json!({"number": 7, "text": "seven"})));
    let label = pb::parcel::Label { text: "x".into(), copies: 1 };
    let proto = lab
        .send("POST", "/gatewaytest.v1.Lab/Stamp", &[("content-type", "application/proto")], label.encode_to_vec())
        .await;
    assert_eq!(common::Note::decode(proto.body).unwrap().parts.len(), 1);
}

#[tokio::test]
async fn query_parameters_set_every_kind_of_unbound_field() {
    let lab = lab().await;
    let query = "name=x+y&big=-9007199254740993&ubig=18446744073709551615&small=-3&ratio=NaN&flag=true\
                 &blob=-_8%3D&color=GREEN&colors=RED&colors=2&tags=a&tags=b&inner.size=4&maybe=&wrapped=w\
                 &wrappedInt=7&at=2024-02-29T12:00:00%2B01:00&took=1.5s&mask=a.b,cD&fraction=0.5";
    let got = lab.get(&format!("/v1/things/t?{query}")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let got = got.json();
    let expected = json!({
        "id": "t", "name": "x y", "big": "-9007199254740993", "ubig": "18446744073709551615", "small": -3,
        "ratio": "NaN", "flag": true, "blob": "+/8=", "color": "GREEN", "colors": ["RED", "GREEN"],
        "tags": ["a", "b"], "inner": {"size": 4}, "maybe": "", "wrapped": "w", "wrappedInt": 7,
        "at": "2024-02-29T11:00:00.000Z", "took": "1.500s", "mask": "a.b,cD", "fraction": 0.5,
    });
    for (key, value) in expected.as_object().unwrap() {
        assert_eq!(&got[key], value, "field {key}: {got}");
    }
    for (query, field) in [
        ("small=3000000000", "small"),
        ("big=1.5", "big"),
        ("flag=maybe", "flag"),
        ("color=PURPLE", "color"),
        ("inner=x", "inner"),
        ("at=yesterday", "at"),
    ] {
        let answer = lab.get(&format!("/v1/things/t?{query}")).await;
        assert_eq!(answer.status, 400, "{query}: {}", answer.text());
        assert_eq!(answer.json()["details"][0]["fieldViolations"][0]["field"], field, "{query}");
    }
}

/// Query parameters set what the path and body leave unset, siblings of a
/// path-bound field included; a parameter naming a bound field or no field
/// is refused (as unknown JSON fields are) unless unknown fields are
/// ignored, and one that is not UTF-8 once percent-decoded is refused. A
/// rule for every method (`custom: {kind: "*"}`) takes them all.
#[tokio::test]
async fn query_parameters_bind_beside_the_path_and_refuse_what_they_cannot_set() {
    let lab = lab().await;
    let got = lab.get("/v1/nested/lbl/x?inner.size=4").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["inner"], json!({"label": "lbl", "size": 4}));
    // A wrapper's `value` names the wrapper itself.
    let got = lab.get("/v1/things/t?wrappedInt.value=5&wrapped.value=w&maybe=m").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!((&got.json()["wrappedInt"], &got.json()["wrapped"]), (&json!(5), &json!("w")));
    for (path, field) in [
        ("/v1/things/t?id=other", "id"),
        ("/v1/nested/lbl/x?inner.label=z", "inner.label"),
        ("/v1/nested/lbl/x?inner=z", "inner"),
        ("/v1/things/t?nope=1", "nope"),
        ("/v1/things/t?inner.nope=1", "inner.nope"),
        ("/v1/things/t?name=%FF", "name"),
        // Only wrappers have a `value` to name.
        ("/v1/things/t?small.value=1", "small.value"),
        ("/v1/things/t?maybe.value=1", "maybe.value"),
        // A path segment that is not UTF-8 once decoded is named by its field.
        ("/v1/things/%C3%28", "id"),
        ("/v1/nested/%FF/x", "inner.label"),
    ] {
        let answer = lab.get(path).await;
        assert_eq!(answer.status, 400, "{path}: {}", answer.text());
        assert_eq!(answer.json()["details"][0]["fieldViolations"][0]["field"], field, "{path}");
    }
    // `custom: {kind: "*"}` takes every method.
    for method in ["GET", "POST", "DELETE", "PATCH", "OPTIONS"] {
        let answer = lab.send(method, "/v1/any/a1?name=n", &[], Bytes::new()).await;
        assert_eq!(answer.status, 200, "{method}: {}", answer.text());
        assert_eq!((&answer.json()["id"], &answer.json()["name"]), (&json!("a1"), &json!("n")), "{method}");
    }
    let lenient = lab_with(true).await;
    let got = lenient.get("/v1/things/t?id=other&nope=1&name=n").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!((&got.json()["id"], &got.json()["name"]), (&json!("t"), &json!("n")));
}

#[tokio::test]
async fn json_bodies_follow_the_proto3_mapping_both_ways() {
    // Unknown fields ignored: refusing them is the default (see protojson).
    let lab = lab_with(true).await;
    let sent = json!({
        "big": 5, "ubig": "7", "ratio": "-Infinity", "blob": "-_8", "color": 2, "colors": ["RED", 1],
        "maybe": "", "wrapped": "", "wrappedInt": null, "at": "1970-01-01T00:00:01.5Z", "took": "-0.25s",
        "extra": {"a": [1, "two", null, {"b": true}]}, "anything": 3.5, "counts": {"x": 1},
        "inner": {}, "unknownField": "ignored", "tag_list_is_not_here": 1,
    });
    let got = lab.post_json("/v1/things/j", sent).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let got = got.json();
    let expected = json!({
        "id": "j", "big": "5", "ubig": "7", "ratio": "-Infinity", "blob": "+/8=", "color": "GREEN",
        "colors": ["RED", "RED"], "maybe": "", "wrapped": "", "at": "1970-01-01T00:00:01.500Z", "took": "-0.250s",
        "extra": {"a": [1.0, "two", null, {"b": true}]}, "anything": 3.5, "counts": {"x": 1}, "inner": {},
    });
    for (key, value) in expected.as_object().unwrap() {
        assert_eq!(&got[key], value, "field {key}: {got}");
    }
    // Unset optional, wrapper and message fields stay absent; set-to-empty ones are present.
    for absent in ["wrappedInt", "mask", "name"] {
        assert!(got.get(absent).is_none(), "{absent} should be absent: {got}");
    }
    // Any: the packed message's fields beside "@type", or a well-known
    // type's own JSON under "value"; 64-bit wrappers as strings.
    let packed = json!([
        {"@type": "type.googleapis.com/gatewaytest.v1.Inner", "label": "in", "size": 2},
        {"@type": "type.googleapis.com/google.protobuf.Timestamp", "value": "2024-01-02T03:04:05.500Z"},
        {"@type": "type.googleapis.com/google.protobuf.Int64Value", "value": "-9007199254740993"},
    ]);
    let sent = json!({"packed": packed, "wrappedBig": 9007199254740993u64, "list": [1, "a", null]});
    let got = lab.post_json("/v1/things/any", sent).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let got = got.json();
    assert_eq!(got["packed"], packed);
    assert_eq!((&got["wrappedBig"], &got["list"]), (&json!("9007199254740993"), &json!([1.0, "a", null])));
    // Over Connect's protobuf codec the same Any holds the Inner's bytes.
    let proto = lab
        .send(
            "POST",
            "/gatewaytest.v1.Lab/Echo",
            &[("content-type", "application/proto")],
            prost::Message::encode_to_vec(&pb::Thing {
                packed: vec![gateway::wkt::Any {
                    type_url: "type.googleapis.com/gatewaytest.v1.Inner".into(),
                    value: prost::Message::encode_to_vec(&pb::Inner { label: "p".into(), size: 1 }).into(),
                }],
                ..Default::default()
            }),
        )
        .await;
    let thing: pb::Thing = prost::Message::decode(proto.body).unwrap();
    assert_eq!(thing.packed[0].type_url, "type.googleapis.com/gatewaytest.v1.Inner");
    // An Any of a type the server does not know is a 400 naming it.
    let unknown = json!({"packed": [{"@type": "type.googleapis.com/acme.Secret", "x": 1}]});
    let refused = lab.post_json("/v1/things/any", unknown).await;
    assert_eq!(refused.status, 400);
    assert!(refused.text().contains("acme.Secret"), "{}", refused.text());

    // Empty as request and as response.
    let nothing = lab.post_json("/v1/nothing", json!({})).await;
    assert_eq!(nothing.status, 204);
    assert!(nothing.body.is_empty());
}

#[tokio::test]
async fn partial_updates_get_an_update_mask_from_the_body_keys() {
    let lab = lab().await;
    let got = lab
        .send(
            "PATCH",
            "/v1/things/t9",
            &[("content-type", "application/json")],
            r#"{"name":"n","tags":[],"maybe":null,"inner":{"size":2},"extra":{"k":1}}"#,
        )
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let got = got.json();
    assert_eq!(got["thing"]["id"], "t9");
    assert_eq!(got["thing"]["name"], "n");
    let mut paths: Vec<&str> = got["updateMask"].as_str().unwrap().split(',').collect();
    paths.sort_unstable();
    // `[]` and `null` are in the mask (clear them); fields left out are not (keep them).
    assert_eq!(paths, ["extra", "inner.size", "maybe", "name", "tags"]);

    let whole = lab
        .send("PUT", "/v1/all-things", &[("content-type", "application/json")], r#"{"thing":{"name":"x","tags":[]}}"#)
        .await
        .json();
    assert_eq!(whole["updateMask"], "thing.name,thing.tags");
    // A mask the client sends is kept.
    let explicit = lab
        .send(
            "PUT",
            "/v1/all-things",
            &[("content-type", "application/json")],
            r#"{"thing":{"name":"x"},"updateMask":"thing.note"}"#,
        )
        .await
        .json();
    assert_eq!(explicit["updateMask"], "thing.note");
}

#[tokio::test]
async fn errors_use_the_status_table_in_json_and_connect() {
    let lab = lab().await;
    for (code, http) in [(5, 404), (7, 403), (16, 401), (14, 503), (8, 429), (4, 504), (10, 409)] {
        let json = lab.get(&format!("/v1/fail/{code}")).await;
        assert_eq!(json.status, http, "code {code}");
        assert_eq!(json.json()["code"], code);
        let connect = lab.post_json("/gatewaytest.v1.Lab/Fail", json!({"code": code})).await;
        assert_eq!(connect.status, http, "connect code {code}");
        assert_eq!(connect.json()["code"], gateway::connect_code(Code::from_i32(code)));
        assert_eq!(connect.json()["message"], "failed as asked");
    }
    // Field violations travel as details: google.rpc.BadRequest, base64 in Connect.
    let connect = lab.post_json("/gatewaytest.v1.Lab/Fail", json!({"code": 3})).await;
    assert_eq!(connect.status, 400);
    assert_eq!(connect.json()["details"][0]["type"], "google.rpc.BadRequest");
    assert!(connect.json()["details"][0]["value"].as_str().is_some_and(|v| !v.is_empty()));
}

#[tokio::test]
async fn connect_serves_json_proto_get_and_streams() {
    use prost::Message as _;
    let lab = lab().await;
    let thing = pb::Thing { id: "c1".into(), big: 9, ..Default::default() };
    let json = lab.post_json("/gatewaytest.v1.Lab/Echo", json!({"id": "c1", "big": "9"})).await;
    assert_eq!((json.status, json.headers["content-type"].to_str().unwrap()), (200, "application/json"));
    assert_eq!(json.json()["big"], "9");
    let proto = lab
        .send("POST", "/gatewaytest.v1.Lab/Echo", &[("content-type", "application/proto")], thing.encode_to_vec())
        .await;
    assert_eq!(proto.status, 200);
    assert_eq!(pb::Thing::decode(proto.body).unwrap(), thing);
    // GET for NO_SIDE_EFFECTS methods, plain and base64.
    let get = lab.get("/gatewaytest.v1.Lab/Echo?connect=v1&encoding=json&message=%7B%22id%22%3A%22g%22%7D").await;
    assert_eq!(get.json()["id"], "g");
    let b64 = base64_url(&thing.encode_to_vec());
    let get = lab.get(&format!("/gatewaytest.v1.Lab/Echo?encoding=proto&base64=1&message={b64}")).await;
    assert_eq!(pb::Thing::decode(get.body).unwrap(), thing);
    let not_get = lab.get("/gatewaytest.v1.Lab/Fail?encoding=json&message=%7B%7D").await;
    assert_eq!(not_get.status, 405);
    let wrong_type = lab.send("POST", "/gatewaytest.v1.Lab/Echo", &[("content-type", "text/plain")], "x").await;
    assert_eq!(wrong_type.status, 415);
    // Timeouts: a stream slower than its deadline ends with deadline_exceeded.
    let request = pb::CountRequest {
        to: 50,
        interval: Some(gateway::wkt::Duration { seconds: 0, nanos: 100_000_000 }),
        ..Default::default()
    };
    let slow = lab
        .send(
            "POST",
            "/gatewaytest.v1.Lab/Count",
            &[("content-type", "application/connect+proto"), ("connect-timeout-ms", "250")],
            envelope(0, &request.encode_to_vec()),
        )
        .await;
    let slow = frames(slow.body);
    let (flags, end) = slow.last().unwrap();
    assert_eq!(*flags, 2);
    let end: Value = serde_json::from_slice(end).unwrap();
    assert_eq!(end["error"]["code"], "deadline_exceeded");
    assert!(slow.len() >= 2 && slow.len() < 50, "some ticks, then the end: {}", slow.len());

    // A server stream over Connect JSON, ending in an error after two messages.
    let request = serde_json::to_vec(&json!({"to": 5, "failAfter": 2})).unwrap();
    let stream = lab
        .send(
            "POST",
            "/gatewaytest.v1.Lab/Count",
            &[("content-type", "application/connect+json")],
            envelope(0, &request),
        )
        .await;
    assert_eq!(stream.status, 200);
    let frames = frames(stream.body);
    let messages: Vec<Value> = frames.iter().map(|(_, b)| serde_json::from_slice(b).unwrap()).collect();
    assert_eq!(frames.iter().map(|(f, _)| *f).collect::<Vec<_>>(), [0, 0, 2]);
    assert_eq!(messages[0]["n"], 1);
    assert_eq!(messages[1]["n"], 2);
    assert_eq!(messages[2]["error"]["code"], "failed_precondition");
}

fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn envelope(flags: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(flags);
    out.put_u32(payload.len() as u32);
    out.put_slice(payload);
    out.freeze()
}

/// Splits enveloped frames (Connect streams, gRPC-Web bodies).
fn frames(mut body: Bytes) -> Vec<(u8, Bytes)> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let flags = body.get_u8();
        let len = body.get_u32() as usize;
        out.push((flags, body.split_to(len)));
    }
    assert!(body.is_empty(), "trailing bytes after the frames");
    out
}

#[tokio::test]
async fn server_streams_arrive_as_ndjson_or_server_sent_events() {
    let lab = lab().await;
    let ndjson = lab.get("/v1/count?to=3").await;
    assert_eq!(ndjson.headers["content-type"], "application/x-ndjson");
    assert_eq!(ndjson.text(), "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n");
    let failing = lab.get("/v1/count?to=5&failAfter=1").await;
    let lines: Vec<Value> = failing.text().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["error"]["code"], 9);
    let sse = lab.send("GET", "/v1/count?to=2&failAfter=1", &[("accept", "text/event-stream")], Bytes::new()).await;
    assert_eq!(sse.headers["content-type"], "text/event-stream");
    assert_eq!(sse.headers["cache-control"], "no-cache");
    let text = sse.text();
    assert!(text.starts_with("id: 1\ndata: {\"n\":1}\n\nevent: error\ndata: {\"error\":{"), "{text}");
    assert!(text.ends_with("}}\n\n"), "{text}");
}

#[tokio::test]
async fn a_slow_reader_slows_the_stream_and_a_gone_one_cancels_it() {
    let lab = lab().await;
    let request = http::Request::get(format!("http://127.0.0.1:{}/v1/count?to=2000&pad=65536", lab.port))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = lab.http.request(request).await.unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    // Not reading: the producer stops once socket buffers are full.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let produced = lab.seen.produced.load(Ordering::SeqCst);
    assert!(produced < 1000, "2000 ticks of 64 KiB are not buffered: {produced} produced");
    drop(body);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while lab.seen.cancelled.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the service never saw its stream closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn streaming_requests_are_grpc_only_and_answer_501_over_http() {
    let lab = lab().await;
    let http = lab.post_json("/v1/upload", json!({})).await;
    assert_eq!(http.status, 501);
    assert!(http.json()["message"].as_str().unwrap().contains("gatewaytest.v1.Lab/Upload"), "{}", http.text());
    // Connect relays them to gRPC with the protobuf codec only: JSON needs
    // typed messages the relay does not have.
    let connect = lab.post_json("/gatewaytest.v1.Lab/Chat", json!({})).await;
    assert_eq!(connect.json()["code"], "unimplemented");
    assert!(connect.json()["message"].as_str().unwrap().contains("protobuf codec only"), "{}", connect.text());
    // Over gRPC they work.
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", lab.port))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = pb::lab_client::LabClient::new(channel);
    let things = futures_util::stream::iter([
        pb::Thing { id: "1".into(), ..Default::default() },
        pb::Thing { id: "2".into(), ..Default::default() },
    ]);
    assert_eq!(client.upload(things).await.unwrap().into_inner().id, "2");
}

#[tokio::test]
async fn grpc_web_streams_over_http1_and_http2() {
    use prost::Message as _;
    let lab = lab().await;
    let request = pb::CountRequest { to: 3, ..Default::default() };
    let body = envelope(0, &request.encode_to_vec());
    let answer = lab
        .send(
            "POST",
            "/gatewaytest.v1.Lab/Count",
            &[("content-type", "application/grpc-web+proto"), ("x-grpc-web", "1")],
            body.clone(),
        )
        .await;
    assert_eq!(answer.status, 200);
    let frames = frames(answer.body);
    let ticks: Vec<i32> =
        frames.iter().filter(|(f, _)| *f == 0).map(|(_, b)| pb::Tick::decode(b.clone()).unwrap().n).collect();
    assert_eq!(ticks, [1, 2, 3]);
    let trailer = String::from_utf8_lossy(&frames.last().unwrap().1).to_lowercase();
    assert_eq!(frames.last().unwrap().0, 0x80);
    assert!(trailer.contains("grpc-status:0"), "{trailer}");

    // The text variant (base64) over HTTP/2.
    let h2: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let text_body = base64_std(&body);
    let request = http::Request::post(format!("http://127.0.0.1:{}/gatewaytest.v1.Lab/Count", lab.port))
        .header("content-type", "application/grpc-web-text")
        .header("accept", "application/grpc-web-text")
        .body(Full::new(Bytes::from(text_body)))
        .unwrap();
    let response = h2.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let text = response.into_body().collect().await.unwrap().to_bytes();
    assert!(!text.is_empty() && text.iter().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(b)));
}

#[tokio::test]
async fn connect_streams_requests_through_the_grpc_service() {
    use prost::Message as _;
    let lab = lab().await;
    let thing = |id: &str| pb::Thing { id: id.into(), ..Default::default() };
    let body: Vec<u8> = [thing("1"), thing("2")].iter().flat_map(|t| envelope(0, &t.encode_to_vec())).collect();
    let connect_proto = [("content-type", "application/connect+proto")];

    let chat = lab.send("POST", "/gatewaytest.v1.Lab/Chat", &connect_proto, body.clone()).await;
    assert_eq!((chat.status, chat.headers["content-type"].to_str().unwrap()), (200, "application/connect+proto"));
    let chat = frames(chat.body);
    assert_eq!(chat.iter().map(|(f, _)| *f).collect::<Vec<_>>(), [0, 0, 2]);
    assert_eq!(pb::Thing::decode(chat[1].1.clone()).unwrap(), thing("2"));
    assert_eq!(serde_json::from_slice::<Value>(&chat[2].1).unwrap(), json!({}));

    let upload = frames(lab.send("POST", "/gatewaytest.v1.Lab/Upload", &connect_proto, body).await.body);
    assert_eq!(upload.len(), 2);
    assert_eq!(pb::Thing::decode(upload[0].1.clone()).unwrap(), thing("2"));

    // A message that is not a Thing: the gRPC status (the client's mistake)
    // becomes the end-of-stream error.
    let bad = lab.send("POST", "/gatewaytest.v1.Lab/Chat", &connect_proto, envelope(0, &[0xff, 0xff])).await;
    let bad = frames(bad.body);
    let (flags, end) = bad.last().unwrap();
    assert_eq!(*flags, 2);
    assert_eq!(serde_json::from_slice::<Value>(end).unwrap()["error"]["code"], "invalid_argument", "{end:?}");
}

/// The Connect protocol's edge cases, as connectrpc.com/docs/protocol states
/// them: a codec the server lacks is 415 on GET as on POST; what is wrong
/// in a stream's headers arrives, as any stream error, in the end-of-stream
/// message of an HTTP 200; an unsupported compression is `unimplemented`
/// listing the supported ones; an unknown procedure answers in the Connect
/// error shape.
#[tokio::test]
async fn connect_edge_cases_answer_as_the_protocol_says() {
    use prost::Message as _;
    let lab = lab().await;
    let get = lab.get("/gatewaytest.v1.Lab/Echo?encoding=xml&message=x").await;
    assert_eq!(get.status, 415, "{}", get.text());
    assert!(get.json()["message"].as_str().unwrap().contains("\"xml\""), "{}", get.text());

    let count = envelope(0, &pb::CountRequest { to: 2, ..Default::default() }.encode_to_vec());
    let chat = envelope(0, &pb::Thing::default().encode_to_vec());
    let streams = [
        ("/gatewaytest.v1.Lab/Count", "connect-protocol-version", "2", "invalid_argument", &count),
        ("/gatewaytest.v1.Lab/Count", "connect-timeout-ms", "-5", "invalid_argument", &count),
        ("/gatewaytest.v1.Lab/Count", "connect-timeout-ms", "12345678901", "invalid_argument", &count),
        ("/gatewaytest.v1.Lab/Count", "connect-content-encoding", "gzip", "unimplemented", &count),
        // Streams relayed to the gRPC service answer the same way.
        ("/gatewaytest.v1.Lab/Chat", "connect-protocol-version", "2", "invalid_argument", &chat),
        ("/gatewaytest.v1.Lab/Chat", "connect-timeout-ms", "soon", "invalid_argument", &chat),
        ("/gatewaytest.v1.Lab/Chat", "connect-content-encoding", "br", "unimplemented", &chat),
    ];
    for (path, header, value, code, body) in streams {
        let answer = lab
            .send("POST", path, &[("content-type", "application/connect+proto"), (header, value)], body.clone())
            .await;
        let case = format!("{path} {header}: {value}");
        assert_eq!(answer.status, 200, "{case}");
        assert_eq!(answer.headers["content-type"], "application/connect+proto", "{case}");
        let frames = frames(answer.body);
        assert_eq!(frames.len(), 1, "{case}: only the end-of-stream message");
        assert_eq!(frames[0].0, 2, "{case}");
        let end: Value = serde_json::from_slice(&frames[0].1).unwrap();
        assert_eq!(end["error"]["code"], code, "{case}: {end}");
        if code == "unimplemented" {
            assert!(end["error"]["message"].as_str().unwrap().contains("supported compression: identity"), "{end}");
        }
    }
    // Unary: the same mistakes are unary errors with their HTTP status.
    let unary = lab
        .send(
            "POST",
            "/gatewaytest.v1.Lab/Echo",
            &[("content-type", "application/json"), ("content-encoding", "gzip")],
            "{}",
        )
        .await;
    assert_eq!((unary.status, &unary.json()["code"]), (501, &json!("unimplemented")));
    assert!(unary.json()["message"].as_str().unwrap().contains("supported compression: identity"));
    let get = lab.get("/gatewaytest.v1.Lab/Echo?encoding=json&message=%7B%7D&compression=gzip").await;
    assert_eq!((get.status, &get.json()["code"]), (501, &json!("unimplemented")));

    // Unknown procedures: 404 in the Connect error shape, by any Connect client.
    for (method, path, headers) in [
        (
            "POST",
            "/gatewaytest.v1.Lab/Nope",
            vec![("content-type", "application/json"), ("connect-protocol-version", "1")],
        ),
        ("POST", "/gatewaytest.v1.Nowhere/Echo", vec![("content-type", "application/proto")]),
        ("POST", "/gatewaytest.v1.Lab/Nope", vec![("content-type", "application/connect+json")]),
        ("GET", "/gatewaytest.v1.Lab/Nope?encoding=json&message=%7B%7D", vec![]),
    ] {
        let answer = lab.send(method, path, &headers, Bytes::new()).await;
        assert_eq!(answer.status, 404, "{method} {path}");
        assert_eq!(answer.headers["content-type"], "application/json", "{method} {path}");
        assert_eq!(answer.json()["code"], "unimplemented", "{method} {path}: {}", answer.text());
    }
    // A JSON/HTTP request to a path no rule has keeps the JSON API's 404.
    assert_eq!(lab.get("/v1/nowhere").await.status, 404);
}

/// A message that does not decode — here a string field holding bytes that
/// are not UTF-8 — is the client's mistake on every protocol:
/// INVALID_ARGUMENT over gRPC and gRPC-Web as over Connect, 400 over JSON.
#[tokio::test]
async fn undecodable_messages_are_invalid_arguments_on_every_protocol() {
    let lab = lab().await;
    // Thing.id (field 1, length-delimited) = the single byte 0xFF.
    let not_utf8 = envelope(0, &[0x0a, 0x01, 0xff]);
    let h2: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    for content_type in ["application/grpc", "application/grpc-web+proto"] {
        let request = http::Request::post(format!("http://127.0.0.1:{}/gatewaytest.v1.Lab/Echo", lab.port))
            .header("content-type", content_type)
            .header("te", "trailers")
            .body(Full::new(not_utf8.clone()))
            .unwrap();
        let response = h2.request(request).await.unwrap();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap();
        let trailers = body.trailers().cloned().unwrap_or_default();
        // gRPC-Web sends trailers as a last frame (flag 0x80) when not in the headers.
        let framed: Vec<(u8, Bytes)> = frames(body.to_bytes());
        let in_frame =
            framed.iter().find(|(flags, _)| flags & 0x80 != 0).map(|(_, t)| String::from_utf8_lossy(t).into_owned());
        let status = headers
            .get("grpc-status")
            .or_else(|| trailers.get("grpc-status"))
            .map(|s| s.to_str().unwrap().to_owned())
            .or_else(|| {
                in_frame
                    .as_deref()
                    .and_then(|t| t.lines().find_map(|l| l.strip_prefix("grpc-status:")).map(|s| s.trim().to_owned()))
            });
        assert_eq!(status.as_deref(), Some("3"), "{content_type}: {headers:?} {trailers:?} {in_frame:?}");
    }
    let connect = lab
        .send(
            "POST",
            "/gatewaytest.v1.Lab/Echo",
            &[("content-type", "application/proto")],
            Bytes::from_static(&[0x0a, 0x01, 0xff]),
        )
        .await;
    assert_eq!((connect.status, &connect.json()["code"]), (400, &json!("invalid_argument")));
}

/// A request body that sends `first` and then stays open.
fn open_body(first: Bytes) -> http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible> {
    let frames = futures_util::stream::once(async move { Ok(http_body::Frame::data(first)) })
        .chain(futures_util::stream::pending());
    BodyExt::boxed(http_body_util::StreamBody::new(frames))
}

#[tokio::test]
async fn client_deadlines_end_calls_over_grpc_and_connect() {
    use prost::Message as _;
    let lab = lab().await;
    let h2: Client<_, http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>> =
        Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let thing = envelope(0, &pb::Thing::default().encode_to_vec());
    // An upload whose client never finishes: only the deadline ends it.
    for (content_type, deadline) in
        [("application/grpc", ("grpc-timeout", "200m")), ("application/connect+proto", ("connect-timeout-ms", "200"))]
    {
        let request = http::Request::post(format!("http://127.0.0.1:{}/gatewaytest.v1.Lab/Upload", lab.port))
            .header("content-type", content_type)
            .header("te", "trailers")
            .header(deadline.0, deadline.1)
            .body(open_body(thing.clone()))
            .unwrap();
        let bound = Duration::from_secs(10);
        let response =
            tokio::time::timeout(bound, h2.request(request)).await.expect("answered at the deadline").unwrap();
        let headers = response.headers().clone();
        let body = tokio::time::timeout(bound, response.into_body().collect()).await.expect("ends").unwrap();
        if content_type == "application/grpc" {
            let trailers = body.trailers().cloned().unwrap_or_default();
            let status = headers.get("grpc-status").or_else(|| trailers.get("grpc-status"));
            assert_eq!(status.map(|s| s.to_str().unwrap()), Some("4"), "{headers:?} {trailers:?}");
        } else {
            let frames = frames(body.to_bytes());
            let end: Value = serde_json::from_slice(&frames.last().unwrap().1).unwrap();
            assert_eq!(end["error"]["code"], "deadline_exceeded", "{end}");
        }
    }
}

#[tokio::test]
async fn grpc_web_with_the_json_codec_is_served_by_the_gateway() {
    let lab = lab().await;
    let headers = [("content-type", "application/grpc-web+json"), ("x-grpc-web", "1")];
    let echo = lab.send("POST", "/gatewaytest.v1.Lab/Echo", &headers, envelope(0, br#"{"id":"w1","big":"7"}"#)).await;
    assert_eq!((echo.status, echo.headers["content-type"].to_str().unwrap()), (200, "application/grpc-web+json"));
    let echo = frames(echo.body);
    assert_eq!(echo.iter().map(|(f, _)| *f).collect::<Vec<_>>(), [0, 0x80]);
    let message: Value = serde_json::from_slice(&echo[0].1).unwrap();
    assert_eq!((&message["id"], &message["big"]), (&json!("w1"), &json!("7")));
    assert!(String::from_utf8_lossy(&echo[1].1).contains("grpc-status:0\r\n"));

    let count =
        lab.send("POST", "/gatewaytest.v1.Lab/Count", &headers, envelope(0, br#"{"to":3,"failAfter":2}"#)).await;
    let count = frames(count.body);
    let ns: Vec<Value> =
        count[..2].iter().map(|(_, b)| serde_json::from_slice::<Value>(b).unwrap()["n"].clone()).collect();
    assert_eq!(ns, [1, 2]);
    let trailer = String::from_utf8_lossy(&count[2].1).into_owned();
    assert_eq!(count[2].0, 0x80);
    assert!(trailer.contains("grpc-status:9\r\n") && trailer.contains("grpc-message:stopped%20after%202"), "{trailer}");

    // Failing before any message: trailers-only, the status in the headers.
    let fail = lab.send("POST", "/gatewaytest.v1.Lab/Fail", &headers, envelope(0, br#"{"code":5}"#)).await;
    assert_eq!((fail.status, fail.headers["grpc-status"].to_str().unwrap()), (200, "5"));
    assert!(fail.body.is_empty());
    // A body that is not one enveloped message.
    let bad = lab.send("POST", "/gatewaytest.v1.Lab/Echo", &headers, "{}").await;
    assert_eq!(bad.headers["grpc-status"].to_str().unwrap(), "3");
}

fn base64_std(bytes: &[u8]) -> String {
    base64_url(bytes).replace('-', "+").replace('_', "/") + &"=".repeat((3 - bytes.len() % 3) % 3)
}

#[tokio::test]
async fn a_layer_above_the_split_sees_every_protocol_by_rpc() {
    use prost::Message as _;
    let lab = lab().await;
    lab.get("/v1/things/x").await;
    lab.post_json("/gatewaytest.v1.Lab/Echo", json!({})).await;
    lab.send(
        "POST",
        "/gatewaytest.v1.Lab/Echo",
        &[("content-type", "application/grpc-web+proto")],
        envelope(0, &pb::Thing::default().encode_to_vec()),
    )
    .await;
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", lab.port))
        .unwrap()
        .connect()
        .await
        .unwrap();
    pb::lab_client::LabClient::new(channel).echo(pb::Thing::default()).await.unwrap();
    let recorded = lab.recorded.lock().unwrap().clone();
    let expected: BTreeSet<(String, &str)> = ["json", "connect", "grpc-web", "grpc"]
        .into_iter()
        .map(|p| ("/gatewaytest.v1.Lab/Echo".to_owned(), p))
        .collect();
    assert_eq!(recorded, expected);
}

/// "Using the gateway in another service" (docs/architecture.md) is the
/// `gateway-example` crate: the page quotes its files verbatim, and the
/// crate serves its one method over JSON/HTTP, Connect, gRPC-Web and gRPC.
#[tokio::test]
async fn the_documented_example_is_the_example_crate_and_it_serves_every_protocol() {
    use prost::Message as _;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let page = std::fs::read_to_string(format!("{root}/docs/architecture.md")).unwrap();
    let section = page.split("## Using the gateway in another service").nth(1).expect("the page has the section");
    let section = section.split("\n## ").next().unwrap();
    let mut quoted = 0;
    for block in section.split("```").skip(1).step_by(2) {
        // Each block opens with its language and the file it quotes: `// gateway-example/src/lib.rs`.
        let mut lines = block.lines().skip(1);
        let file = lines.next().unwrap().trim_start_matches(['/', '#', ' ']);
        let excerpt: Vec<&str> = lines.collect();
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            text.contains(&excerpt.join("\n")),
            "docs/architecture.md's excerpt of {file} is not in the file:\n{}",
            excerpt.join("\n")
        );
        quoted += 1;
    }
    assert!(quoted >= 4, "the page quotes Cargo.toml, build.rs, the proto and the service: {quoted}");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, gateway_example::app().unwrap()).await });
    let http: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let call = |method: &str, path: &str, content_type: &str, body: Bytes| {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:{port}{path}"))
            .header("content-type", content_type)
            .body(Full::new(body))
            .unwrap();
        let sent = http.request(request);
        async move {
            let response = sent.await.unwrap();
            let status = response.status().as_u16();
            (status, response.into_body().collect().await.unwrap().to_bytes())
        }
    };
    let hello = |body: &[u8]| serde_json::from_slice::<Value>(body).unwrap()["message"].clone();
    let (status, body) = call("GET", "/v1/hello/world", "", Bytes::new()).await;
    assert_eq!((status, hello(&body)), (200, json!("Hello, world!")));
    let (status, body) =
        call("POST", "/greeter.v1.GreeterService/SayHello", "application/json", r#"{"name":"c"}"#.into()).await;
    assert_eq!((status, hello(&body)), (200, json!("Hello, c!")));
    let request = envelope(0, &gateway_example::pb::SayHelloRequest { name: "web".into() }.encode_to_vec());
    let (status, body) =
        call("POST", "/greeter.v1.GreeterService/SayHello", "application/grpc-web+proto", request).await;
    let reply = gateway_example::pb::SayHelloResponse::decode(frames(body)[0].1.clone()).unwrap();
    assert_eq!((status, reply.message.as_str()), (200, "Hello, web!"));

    let channel =
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await.unwrap();
    let mut client = gateway_example::pb::greeter_service_client::GreeterServiceClient::new(channel);
    let reply = client.say_hello(gateway_example::pb::SayHelloRequest { name: "grpc".into() }).await.unwrap();
    assert_eq!(reply.into_inner().message, "Hello, grpc!");
}

/// Every input the fuzz targets keep (`fuzz/seeds`, and in
/// `fuzz/regressions` the inputs that once found a crash, a hang or a
/// broken invariant) replays cleanly.
#[test]
fn the_inputs_kept_by_fuzzing_replay() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let targets: [(&str, fn(&[u8])); 4] = [
        ("binding", gateway_tests::fuzz::binding),
        ("protojson", gateway_tests::fuzz::protojson),
        ("connect", gateway_tests::fuzz::connect),
        ("grpc_web", gateway_tests::fuzz::grpc_web),
    ];
    for (target, run) in targets {
        let mut replayed = 0;
        for kept in ["seeds", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(kept).join(target)) else { continue };
            for entry in entries {
                let path = entry.unwrap().path();
                let input = std::fs::read(&path).unwrap();
                if std::panic::catch_unwind(|| run(&input)).is_err() {
                    panic!("{} breaks an invariant of {target}", path.display());
                }
                replayed += 1;
            }
        }
        assert!(replayed > 0, "no input kept for {target}");
    }
}
