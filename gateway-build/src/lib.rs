//! Build-time half of the `gateway` crate, called from a `build.rs` as
//! `tonic-prost-build` is.
//!
//! It compiles `.proto` files with a pure-Rust compiler (no system `protoc`)
//! and writes, into `OUT_DIR`, per package:
//! - `<package>.rs`: prost messages, tonic clients and servers;
//! - `<package>.serde.rs`: proto3-JSON serde implementations (pbjson);
//! - `<package>.gateway.rs`: a [`gateway::MethodSpec`] per RPC, a
//!   `<service>_gateway_methods(Arc<impl Service>)` function per service that
//!   gives the gateway its typed in-process handlers, the package's
//!   `HTTP_ROUTES` (one `RouteSpec` per `google.api.http` binding, additional
//!   bindings included) and the field tables used to bind path and query
//!   parameters;
//!
//! and one encoded descriptor set with custom options kept (for reflection
//! and documentation). Well-known types map to `::gateway::wkt`.
//!
//! Rules are checked here, so a mistake fails the build: a malformed
//! template, a variable or body naming no field, two rules that would match
//! the same requests (the message names both methods).
//!
//! ```no_run
//! // build.rs
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     gateway_build::Builder::new("proto").emit_defaults(true).compile()
//! }
//! ```
//!
//! [`gateway::MethodSpec`]: https://docs.rs/gateway

#[path = "../../gateway/src/rule/template.rs"]
#[allow(dead_code, unreachable_pub)]
mod template;

#[path = "../../gateway/src/rule/router.rs"]
#[allow(dead_code, unreachable_pub)]
mod router;

mod generate;
mod openapi;
mod validation;

pub use openapi::OpenApi;

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::{env, fs};

use prost::Message as _;

/// The gateway's own options (`gateway/v1/options.proto`), importable by
/// every API compiled with this builder.
pub const OPTIONS_PROTO: &str = include_str!("../../gateway/proto/gateway/v1/options.proto");

/// What a build failed on.
pub type BuildError = Box<dyn std::error::Error>;

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
    openapi: Option<OpenApi>,
}

impl Builder {
    /// Compiles every `.proto` under `root` except vendored `google/` files,
    /// which are imports only.
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
    /// present. Oneof members stay out when unset.
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

    /// Compiles and writes everything.
    pub fn compile(self) -> Result<(), BuildError> {
        let out = match &self.out_dir {
            Some(dir) => dir.clone(),
            None => PathBuf::from(env::var("OUT_DIR")?),
        };
        fs::create_dir_all(&out)?;
        println!("cargo:rerun-if-changed={}", self.root.display());

        // The gateway's options are importable as gateway/v1/options.proto.
        let options_dir = out.join("gateway-include");
        fs::create_dir_all(options_dir.join("gateway/v1"))?;
        fs::write(options_dir.join("gateway/v1/options.proto"), OPTIONS_PROTO)?;

        let mut sources = Vec::new();
        collect_protos(&self.root, &mut sources)?;
        let sources: Vec<PathBuf> = sources
            .into_iter()
            .filter_map(|p| p.strip_prefix(&self.root).ok().map(Path::to_path_buf))
            // Vendored imports (google.api, buf.validate) are not compiled as the API's own.
            .filter(|p| !p.starts_with("google") && !p.starts_with("buf"))
            .collect();

        let mut includes = vec![self.root.clone()];
        includes.extend(self.includes.iter().cloned());
        includes.push(options_dir);
        let mut compiler = protox::Compiler::new(includes)?;
        compiler.include_imports(true).include_source_info(true);
        compiler.open_files(&sources)?;
        // The encoded set keeps custom options (google.api.http and ours);
        // `file_descriptor_set()` would drop them.
        let encoded = compiler.encode_file_descriptor_set();
        fs::write(out.join(&self.descriptor_name), &encoded)?;

        let own_files: HashSet<String> =
            compiler.files().filter(|f| !f.is_import()).map(|f| f.name().to_owned()).collect();
        let fds = prost_types::FileDescriptorSet::decode(encoded.as_slice())?;
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
            .compile_well_known_types(true)
            // Requests are validated as they are decoded (gateway::validate).
            .codec_path("::gateway::validate::ValidatingCodec")
            .extern_path(".google.protobuf", "::gateway::wkt")
            .extern_path(".google.protobuf.Timestamp", "::gateway::wkt::Timestamp")
            .compile_fds(fds)?;

        let prefixes: Vec<String> = packages.iter().map(|p| format!(".{p}")).collect();
        let mut json = pbjson_build::Builder::new();
        json.register_descriptors(&encoded)?
            .out_dir(&out)
            .extern_path(".google.protobuf", "::gateway::wkt")
            .extern_path(".google.protobuf.Timestamp", "::gateway::wkt::Timestamp")
            .ignore_unknown_fields();
        if self.emit_defaults {
            json.emit_fields();
        }
        if self.proto_names {
            json.preserve_proto_field_names();
        }
        json.build(&prefixes)?;
        if self.null_for_unset {
            for package in &packages {
                let path = out.join(format!("{package}.serde.rs"));
                fs::write(&path, generate::null_for_unset(&fs::read_to_string(&path)?))?;
            }
        }

        for (package, code) in tables {
            fs::write(out.join(format!("{package}.gateway.rs")), code)?;
        }
        Ok(())
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
    use super::*;

    /// Compiles one scratch proto (as `<package path>/<file>`) with the
    /// repository's vendored imports, then removes it.
    fn compile_scratch(name: &str, file: &str, proto: &str) -> Result<(), BuildError> {
        let dir = env::temp_dir().join(format!("gateway-build-{name}-{}", std::process::id()));
        let path = dir.join("protos").join(file);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, proto).unwrap();
        let result = Builder::new(dir.join("protos"))
            .include(concat!(env!("CARGO_MANIFEST_DIR"), "/../proto"))
            .out_dir(dir.join("out"))
            .compile();
        fs::remove_dir_all(&dir).ok();
        result
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
}
