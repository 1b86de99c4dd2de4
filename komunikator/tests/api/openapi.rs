//! The OpenAPI document (`docs/openapi.yaml`, served as
//! `GET /api/openapi.json`) against the server: every route the server has
//! is documented and every documented route exists; and schemathesis (a
//! property-based API tester nobody here wrote) runs the document against
//! `komunikator all` and against the distributed services behind nginx,
//! finding no 5xx, no answer that breaks the document's schema, no status
//! code it does not list.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Backend, Options, TestApp, User};

/// The files that declare routes: the API's router, the web client's, and
/// every process's operational endpoints.
const ROUTE_FILES: [&str; 3] = [
    include_str!("../../../api/src/router.rs"),
    include_str!("../../../api/src/web.rs"),
    include_str!("../../../common/src/edge/ops.rs"),
];

/// Every `(METHOD, path)` the route files declare: `.route("<path>",
/// <method>(...))`, the method being the first word after the path.
fn declared_routes() -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for source in ROUTE_FILES {
        for (i, _) in source.match_indices(".route(") {
            let rest = &source[i + ".route(".len()..];
            let Some(start) = rest.find('"') else {
                continue;
            };
            let rest = &rest[start + 1..];
            let Some(end) = rest.find('"') else { continue };
            let path = &rest[..end];
            let after = rest[end + 1..].trim_start_matches([',', ' ', '\n']);
            let method: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect();
            routes.insert((method.to_uppercase(), path.to_owned()));
        }
    }
    routes
}

/// Every `(METHOD, path)` the document has.
fn documented_routes(document: &Value) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (path, operations) in document["paths"].as_object().expect("paths") {
        for method in operations.as_object().expect("operations").keys() {
            routes.insert((method.to_uppercase(), path.clone()));
        }
    }
    routes
}

#[tokio::test]
async fn every_route_is_documented_and_every_documented_route_exists() {
    let app = TestApp::start(Backend::Embedded).await;
    let res = app.get("/api/openapi.json", None).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.body["openapi"], "3.1.0");
    let declared = declared_routes();
    let documented = documented_routes(&res.body);
    assert!(
        declared.len() > 20,
        "routes not found in the sources: {declared:?}"
    );
    let undocumented: Vec<_> = declared.difference(&documented).collect();
    let phantom: Vec<_> = documented.difference(&declared).collect();
    assert!(
        undocumented.is_empty() && phantom.is_empty(),
        "undocumented routes {undocumented:?}; documented but not served {phantom:?}"
    );
    // The server agrees: no documented route is unknown to it.
    for (method, path) in &documented {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let res = app
            .request(method.clone(), path, None)
            .send()
            .await
            .expect("an answer");
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert!(
            !(status == 405 || (status == 404 && body["error"] == "Not found")),
            "{method} {path}: {status} {body}"
        );
    }
}

/// Runs schemathesis against the document `base` serves, for `budget`
/// seconds of generated requests (its examples, then its coverage of each
/// operation's boundaries, then random and stateful sequences: register,
/// log in, create a room, read it), authenticated as `user` where the
/// document asks for a token. Its checks: no 5xx, every status code and
/// header documented, every answer in its documented type and schema.
/// (Left out: whether every schema-valid request is accepted and every
/// other refused. JSON Schema counts `8095.0` as an integer, which the
/// protocol refuses as an id; a blank string is a missing field; unknown
/// query parameters are ignored, as HTTP APIs do.)
async fn schemathesis(base: &str, user: &User, budget: Duration) {
    let python = std::env::var("KOM_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let st = std::path::Path::new(&python).with_file_name("schemathesis");
    let out = tokio::process::Command::new(&st)
        .arg("run")
        .arg(format!("{base}/api/openapi.json"))
        .args(["--url", base])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
        ])
        .args(["--max-time", &budget.as_secs().to_string()])
        // One worker: with two, Hypothesis describing strategies in both
        // threads at once trips CPython 3.11's parser ("AST constructor
        // recursion depth mismatch"), a runtime error of the tool's own.
        .args(["--workers", "1", "--request-timeout", "10"])
        .args(["--header", &format!("Authorization: Bearer {}", user.token)])
        .args(["--seed", "20261207"])
        .env("NO_COLOR", "1")
        // It keeps a cache and reports in its working directory.
        .current_dir(std::env::temp_dir())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{} (scripts/test.sh installs it): {e}", st.display()));
    let report = String::from_utf8_lossy(&out.stdout);
    let tail: Vec<&str> = report.lines().rev().take(12).collect();
    eprintln!(
        "schemathesis against {base}:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn schemathesis_finds_nothing_against_komunikator_all() {
    let app = TestApp::start(Backend::Embedded).await;
    let user = app.user("st").await;
    schemathesis(&app.base, &user, Duration::from_secs(60)).await;
}

#[tokio::test]
async fn schemathesis_finds_nothing_against_the_services_behind_nginx() {
    let proxied =
        crate::nginx::Proxied::start(Options::default().with("TRUSTED_PROXIES", "127.0.0.1")).await;
    let user = proxied.app.user("st").await;
    schemathesis(&proxied.nginx.url, &user, Duration::from_secs(60)).await;
}
