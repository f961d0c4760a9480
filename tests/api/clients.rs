//! Clients nobody here wrote, against the real app: buf curl, grpcurl, a
//! grpcio client generated from proto/, and Connect-Web in headless Chromium.
//! The scripts and their tools live in tests/clients; `bash
//! tests/clients/install.sh` installs the tools.

use std::path::PathBuf;
use std::process::Command;

use crate::helpers::spawn_app;

const INSTALL: &str = "run `bash tests/clients/install.sh` first";

/// Runs `program tests/clients/<script> <app URL>` against a new app, killed
/// after `limit_secs`, and fails with everything it printed unless it succeeds.
async fn run_client(tools: &[&str], program: &str, script: &str, limit_secs: u32) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    for tool in tools {
        // An absolute tool path stays as it is.
        assert!(dir.join(tool).exists(), "{tool} is not installed: {INSTALL}");
    }
    let app = spawn_app().await;
    let url = app.url("");
    let mut command = Command::new("timeout");
    command.arg("--kill-after=10").arg(limit_secs.to_string()).arg(program).arg(dir.join(script)).arg(&url);
    command.current_dir(&dir);
    // tokio has no "process" feature here: wait on a blocking thread while
    // this runtime goes on serving the app.
    let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().expect("`timeout` runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} against {url} failed ({}; 124 is a time-out after {limit_secs} s; a missing tool means: {INSTALL})\n\
         --- stdout\n{stdout}--- stderr\n{stderr}",
        output.status
    );
    print!("{stdout}");
}

#[tokio::test]
async fn buf_curl_calls_every_protocol_through_reflection_alone() {
    run_client(&["node_modules/.bin/buf", ".venv/bin/grpcurl"], "bash", "buf-curl.sh", 180).await;
}

#[tokio::test]
async fn grpcurl_lists_describes_and_checks_health_through_reflection_v1alpha() {
    run_client(&[".venv/bin/grpcurl"], "bash", "grpcurl.sh", 120).await;
}

#[tokio::test]
async fn python_grpcio_client_generated_from_the_protos_writes_reads_and_sees_status_codes() {
    run_client(&[".venv/bin/python"], "bash", "python-client.sh", 180).await;
}

#[tokio::test]
async fn the_served_openapi_document_passes_a_third_party_openapi_3_1_validator() {
    run_client(&[".venv/bin/python"], ".venv/bin/python", "openapi-validate.py", 120).await;
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_undocumented_status_schema_break_or_accepted_invalid_input() {
    run_client(&[".venv/bin/schemathesis"], "bash", "schemathesis.sh", 300).await;
}

#[tokio::test]
async fn the_docs_page_works_offline_in_chromium_and_calls_the_api_with_a_token() {
    run_client(&["node_modules/playwright-core"], "node", "docs.mjs", 180).await;
}

#[tokio::test]
async fn chromium_calls_json_grpc_web_and_connect_from_another_origin() {
    let tools = ["node_modules/playwright-core", "node_modules/esbuild", "node_modules/.bin/buf", "/usr/bin/chromium"];
    run_client(&tools, "node", "browser.mjs", 300).await;
}
