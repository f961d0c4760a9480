//! The build: compiles the protos with `protox` (no system `protoc`), then
//! writes the prost messages and tonic services, the proto3-JSON serde, the
//! gateway tables, the descriptor set and, when asked, the OpenAPI document.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::{env, fs};

use prost::Message as _;

use crate::openapi::{self, OpenApi};
use crate::{BuildError, SHIPPED_PROTOS, generate};

/// Compiles the protos of one directory tree.
#[derive(Debug, Clone)]
pub struct Builder {
    root: PathBuf,
    includes: Vec<PathBuf>,
    out_dir: Option<PathBuf>,
    descriptor_name: String,
    emit_defaults: bool,
    null_for_unset: bool,
    proto_names: bool,
    clients: bool,
    client_transport: bool,
    gateway_crate: String,
    openapi: Option<OpenApi>,
}

/// Packages whose files are definitions the generated code gets elsewhere
/// (the gateway's well-known types and options, googleapis' annotations,
/// protovalidate's rules): imported, never compiled as the API's own.
const IMPORT_ONLY_PACKAGES: [&str; 5] = ["google.protobuf", "google.api", "google.rpc", "buf.validate", "gateway.v1"];

impl Builder {
    /// Compiles every `.proto` under `root`, except files of packages that
    /// are only imported (`google.protobuf`, `google.api`, `google.rpc`,
    /// `buf.validate`, `gateway.v1`), wherever they are vendored.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            includes: Vec::new(),
            out_dir: None,
            descriptor_name: "descriptor.bin".to_owned(),
            emit_defaults: false,
            null_for_unset: false,
            proto_names: false,
            clients: true,
            client_transport: false,
            gateway_crate: "::gateway".to_owned(),
            openapi: None,
        }
    }

    /// Adds an import directory (the root always is one).
    pub fn include(mut self, dir: impl Into<PathBuf>) -> Self {
        self.includes.push(dir.into());
        self
    }

    /// Writes into `dir` instead of `OUT_DIR`.
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out_dir = Some(dir.into());
        self
    }

    /// File name of the encoded descriptor set (default `descriptor.bin`).
    pub fn descriptor_name(mut self, name: impl Into<String>) -> Self {
        self.descriptor_name = name.into();
        self
    }

    /// JSON output includes fields at their default value (`0`, `""`,
    /// `false`, `[]`), which proto3 JSON leaves out by default.
    pub fn emit_defaults(mut self, on: bool) -> Self {
        self.emit_defaults = on;
        self
    }

    /// JSON output writes unset fields that have presence (`optional`
    /// scalars, messages, wrappers) as `null` instead of leaving them out,
    /// for APIs whose contract declares such fields nullable and always
    /// present. Oneof members stay out when unset. Input then accepts `null`
    /// for those fields only, as the OpenAPI document says; without it,
    /// `null` reads as "unset" for every field (the ProtoJSON rule).
    pub fn null_for_unset(mut self, on: bool) -> Self {
        self.null_for_unset = on;
        self
    }

    /// JSON output uses the proto field names (`tag_list`) instead of
    /// lowerCamelCase (`tagList`). Input accepts both either way.
    pub fn proto_names(mut self, on: bool) -> Self {
        self.proto_names = on;
        self
    }

    /// Also writes `openapi.json` into the output directory: an OpenAPI 3.1
    /// document of the JSON API of every package compiled (see [`OpenApi`]).
    pub fn openapi(mut self, document: OpenApi) -> Self {
        self.openapi = Some(document);
        self
    }

    /// Whether tonic clients are generated too (default yes).
    pub fn clients(mut self, on: bool) -> Self {
        self.clients = on;
        self
    }

    /// Whether the tonic clients get their `connect(url)` constructor, which
    /// needs tonic's `channel` feature (default no: clients are built on
    /// any channel with `Client::new`).
    pub fn client_transport(mut self, on: bool) -> Self {
        self.client_transport = on;
        self
    }

    /// The path the generated code names the `gateway` crate by (default
    /// `::gateway`), for a dependency renamed in `Cargo.toml`
    /// (`gw = { package = "gateway", … }` → `"::gw"`).
    pub fn gateway_crate(mut self, path: impl Into<String>) -> Self {
        self.gateway_crate = path.into();
        self
    }

    /// Compiles and writes everything.
    pub fn compile(self) -> Result<(), BuildError> {
        let krate = &self.gateway_crate;
        let out = match &self.out_dir {
            Some(dir) => dir.clone(),
            None => PathBuf::from(env::var("OUT_DIR")?),
        };
        fs::create_dir_all(&out)?;
        println!("cargo:rerun-if-changed={}", self.root.display());

        // The shipped protos are importable by their usual paths; a copy
        // vendored under the root or an include wins.
        let shipped_dir = out.join("gateway-include");
        for (path, text) in SHIPPED_PROTOS {
            let file = shipped_dir.join(path);
            fs::create_dir_all(file.parent().expect("a shipped proto is in a folder"))?;
            fs::write(file, text)?;
        }

        let mut sources = Vec::new();
        collect_protos(&self.root, &mut sources)?;
        let sources: Vec<PathBuf> =
            sources.into_iter().filter_map(|p| p.strip_prefix(&self.root).ok().map(Path::to_path_buf)).collect();

        let mut includes = vec![self.root.clone()];
        includes.extend(self.includes.iter().cloned());
        includes.push(shipped_dir);
        let mut compiler = protox::Compiler::new(includes)?;
        compiler.include_imports(true).include_source_info(true);
        compiler.open_files(&sources)?;
        // The encoded set keeps custom options (google.api.http and ours);
        // `file_descriptor_set()` would drop them.
        let encoded = compiler.encode_file_descriptor_set();
        fs::write(out.join(&self.descriptor_name), &encoded)?;

        let opened: HashSet<&str> = compiler.files().filter(|f| !f.is_import()).map(|f| f.name()).collect();
        let fds = prost_types::FileDescriptorSet::decode(encoded.as_slice())?;
        let own_files: HashSet<String> = fds
            .file
            .iter()
            .filter(|f| opened.contains(f.name()) && !IMPORT_ONLY_PACKAGES.contains(&f.package()))
            .map(|f| f.name().to_owned())
            .collect();
        let packages: BTreeSet<String> =
            fds.file.iter().filter(|f| own_files.contains(f.name())).map(|f| f.package().to_owned()).collect();

        let pool = prost_reflect::DescriptorPool::decode(encoded.as_slice())?;
        // Check every rule before generating anything: a conflict names both methods.
        let mut operations = Vec::new();
        let tables: Vec<(String, String)> = packages
            .iter()
            .map(|p| generate::package(&pool, p, &own_files, &mut operations).map(|code| (p.clone(), code)))
            .collect::<Result<_, _>>()?;
        if let Some(document) = &self.openapi {
            let settings = openapi::JsonSettings {
                proto_names: self.proto_names,
                emit_defaults: self.emit_defaults,
                null_for_unset: self.null_for_unset,
            };
            fs::write(out.join("openapi.json"), openapi::document(&pool, document, settings, &operations)?)?;
        }

        // prost needs the imported files too (to know the types it refers
        // to); the Rust it writes for them is simply not included.
        tonic_prost_build::configure()
            .out_dir(&out)
            .build_client(self.clients)
            .build_transport(self.client_transport)
            .compile_well_known_types(true)
            // Requests are validated as they are decoded (gateway::validate).
            .codec_path(format!("{krate}::validate::ValidatingCodec"))
            .extern_path(".google.protobuf", format!("{krate}::wkt"))
            .extern_path(".google.protobuf.Timestamp", format!("{krate}::wkt::Timestamp"))
            .compile_fds(fds)?;

        let json = crate::json::JsonOptions {
            emit_defaults: self.emit_defaults,
            null_for_unset: self.null_for_unset,
            proto_names: self.proto_names,
        };
        for package in &packages {
            let code = crate::json::package(&pool, package, &own_files, json)?;
            fs::write(out.join(format!("{package}.serde.rs")), self.naming_the_gateway(code))?;
        }

        for (package, code) in tables {
            fs::write(out.join(format!("{package}.gateway.rs")), self.naming_the_gateway(code))?;
        }
        Ok(())
    }
}

impl Builder {
    /// The generated code with the gateway crate named as configured: the
    /// generators write `::gateway::` and only for the crate.
    fn naming_the_gateway(&self, code: String) -> String {
        if self.gateway_crate == "::gateway" {
            code
        } else {
            code.replace("::gateway::", &format!("{}::", self.gateway_crate))
        }
    }
}

fn collect_protos(dir: &Path, into: &mut Vec<PathBuf>) -> Result<(), BuildError> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        if path.is_dir() {
            collect_protos(&path, into)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            into.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Compiles one scratch proto (as `<package path>/<file>`) with the
    /// repository's vendored imports and an OpenAPI document, then removes
    /// it; the text files it wrote, by name.
    fn compile_scratch(name: &str, file: &str, proto: &str) -> Result<HashMap<String, String>, BuildError> {
        compile_scratch_with(name, file, proto, |builder| builder)
    }

    /// [`compile_scratch`] with the builder configured by `configure`.
    fn compile_scratch_with(
        name: &str,
        file: &str,
        proto: &str,
        configure: fn(Builder) -> Builder,
    ) -> Result<HashMap<String, String>, BuildError> {
        let dir = env::temp_dir().join(format!("gateway-build-{name}-{}", std::process::id()));
        let path = dir.join("protos").join(file);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, proto).unwrap();
        let document = OpenApi { title: name.into(), version: "1".into(), description: String::new(), security: None };
        let builder = Builder::new(dir.join("protos"))
            .include(concat!(env!("CARGO_MANIFEST_DIR"), "/../proto"))
            .out_dir(dir.join("out"))
            .openapi(document);
        let result = configure(builder).compile().map(|()| {
            let entries = fs::read_dir(dir.join("out")).unwrap().filter_map(Result::ok);
            entries
                .filter_map(|e| Some((e.file_name().into_string().ok()?, fs::read_to_string(e.path()).ok()?)))
                .collect()
        });
        fs::remove_dir_all(&dir).ok();
        result
    }

    #[test]
    fn the_document_and_the_checks_state_the_same_rules() {
        let proto = r#"syntax = "proto3";
package same.v1;
import "buf/validate/validate.proto";
import "google/api/annotations.proto";
message Req {
  string name = 1 [(buf.validate.field).string = {min_len: 3, max_len: 9, email: true}];
  repeated string tags = 2 [(buf.validate.field).repeated = {max_items: 4, unique: true, items: {string: {max_len: 5}}}];
  int32 size = 3 [(buf.validate.field).int32 = {gte: 1, lt: 50}];
  string note = 4 [(buf.validate.field).required = true];
}
service Same { rpc Put(Req) returns (Req) { option (google.api.http) = {post: "/v1/things" body: "*"}; } }
"#;
        let out = compile_scratch("same", "same/v1/same.proto", proto).expect("the rules are supported");
        let document: serde_json::Value = serde_json::from_str(&out["openapi.json"]).unwrap();
        let schema = &document["components"]["schemas"]["Req"];
        let field = |name: &str| &schema["properties"][name];
        assert_eq!((field("name")["minLength"].as_u64(), field("name")["maxLength"].as_u64()), (Some(3), Some(9)));
        assert_eq!(field("name")["format"], "email");
        assert_eq!((field("tags")["maxItems"].as_u64(), field("tags")["uniqueItems"].as_bool()), (Some(4), Some(true)));
        assert_eq!(field("tags")["items"]["maxLength"].as_u64(), Some(5));
        assert_eq!(
            (field("size")["minimum"].as_i64(), field("size")["exclusiveMaximum"].as_i64()),
            (Some(1), Some(50))
        );
        let required: Vec<&str> = schema["required"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
        assert_eq!(required, ["name", "note"], "a minimum length or `required` makes a field required");

        let checks = &out["same.v1.gateway.rs"];
        for expected in [
            "required: false, min_len: Some(3), max_len: Some(9), email: true",
            "min_items: None, max_items: Some(4), unique: true",
            "required: false, min_len: None, max_len: Some(5), email: false",
            "gt: None, gte: Some(1), lt: Some(50), lte: None",
            "StringRules { required: true, ..",
        ] {
            assert!(checks.contains(expected), "the generated checks lack `{expected}`:\n{checks}");
        }
    }

    #[test]
    fn conflicting_rules_fail_the_build_naming_both_methods() {
        let proto = r#"syntax = "proto3";
package clash.v1;
import "google/api/annotations.proto";
message Req { string id = 1; string name = 2; }
service Clash {
  rpc GetById(Req) returns (Req) { option (google.api.http) = {get: "/v1/things/{id}"}; }
  rpc GetByName(Req) returns (Req) { option (google.api.http) = {get: "/v1/things/{name}"}; }
}
"#;
        let error = compile_scratch("clash", "clash/v1/clash.proto", proto).expect_err("two rules match").to_string();
        assert!(error.contains("clash.v1.Clash.GetById") && error.contains("clash.v1.Clash.GetByName"), "{error}");
    }

    #[test]
    fn an_unsupported_validation_rule_fails_the_build_naming_field_and_rule() {
        let proto = r#"syntax = "proto3";
package strict.v1;
import "buf/validate/validate.proto";
message Req { string code = 1 [(buf.validate.field).string.pattern = "^[A-Z]+$"]; }
"#;
        let error = compile_scratch("rules", "strict/v1/strict.proto", proto).expect_err("unsupported").to_string();
        assert!(error.contains("strict.v1.Req.code") && error.contains("string.pattern"), "{error}");
    }

    /// What google/api/http.proto forbids fails the build, naming the
    /// method, the rule and what is wrong.
    #[test]
    fn rules_http_proto_forbids_fail_the_build_naming_method_and_rule() {
        let cases = [
            (
                r#"get: "/v1/at/{at}""#,
                "GET /v1/at/{at}",
                "variable at must be a non-repeated field of a primitive type",
            ),
            (r#"get: "/v1/w/{wrapped}""#, "GET /v1/w/{wrapped}", "not google.protobuf.Int32Value"),
            (r#"get: "/v1/i/{inner}""#, "GET /v1/i/{inner}", "not nested.v1.Inner"),
            (r#"get: "/v1/t/{tags}""#, "GET /v1/t/{tags}", "not repeated string"),
            (r#"post: "/v1/b" body: "inner.label""#, "POST /v1/b", "body inner.label must name a top-level field"),
            (
                r#"get: "/v1/r" response_body: "inner.label""#,
                "GET /v1/r",
                "response_body inner.label must name a top-level field",
            ),
            (
                r#"get: "/v1/a" additional_bindings { get: "/v1/b" additional_bindings { get: "/v1/c" } }"#,
                "GET /v1/b",
                "additional_bindings cannot hold additional_bindings",
            ),
            (r#"body: "*""#, "nested.v1.Svc.Call", "sets no pattern"),
        ];
        for (rule, names, reason) in cases {
            let proto = format!(
                r#"syntax = "proto3";
package nested.v1;
import "google/api/annotations.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";
message Inner {{ string label = 1; }}
message Req {{
  google.protobuf.Timestamp at = 1;
  google.protobuf.Int32Value wrapped = 2;
  Inner inner = 3;
  repeated string tags = 4;
}}
service Svc {{ rpc Call(Req) returns (Req) {{ option (google.api.http) = {{ {rule} }}; }} }}
"#
            );
            let error = compile_scratch("forbidden", "nested/v1/svc.proto", &proto).expect_err(rule).to_string();
            assert!(
                error.contains("nested.v1.Svc.Call") && error.contains(names) && error.contains(reason),
                "{rule}: {error}"
            );
        }
    }

    /// A package under a `google/` folder is the API's own like any other
    /// (only the packages the gateway supplies are import-only), and the
    /// generated code names the gateway crate as configured.
    #[test]
    fn any_package_compiles_and_the_gateway_crate_may_be_renamed() {
        let proto = r#"syntax = "proto3";
package google.example.v1;
import "google/api/annotations.proto";
import "google/protobuf/empty.proto";
message Req { string id = 1; }
service Things {
  rpc Get(Req) returns (google.protobuf.Empty) { option (google.api.http) = {get: "/v1/things/{id}"}; }
}
"#;
        let out = compile_scratch_with("renamed", "google/example/v1/things.proto", proto, |b| b.gateway_crate("::gw"))
            .expect("compiles");
        let tables = &out["google.example.v1.gateway.rs"];
        assert!(tables.contains("\"/google.example.v1.Things/Get\""), "{tables}");
        for name in ["google.example.v1.rs", "google.example.v1.serde.rs", "google.example.v1.gateway.rs"] {
            let code = &out[name];
            assert!(code.contains("::gw::") && !code.contains("::gateway::"), "{name} names the crate ::gw:\n{code}");
        }
        assert!(!out.contains_key("google.api.gateway.rs"), "google.api is imported, not the API's own");
    }
}
