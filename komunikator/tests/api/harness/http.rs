//! HTTP as a client speaks it: requests to a deployment's REST API, and
//! its answers as status, headers and JSON body.

use serde_json::Value;

use super::TestApp;

/// An HTTP answer: status and JSON body (`Value::Null` when not JSON).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Resp {
    /// The `error` text of an error body.
    pub fn error(&self) -> &str {
        self.body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error in {self:?}"))
    }

    #[track_caller]
    pub fn expect(&self, status: u16, error: &str) {
        assert_eq!((self.status, self.error()), (status, error), "{self:?}");
    }

    /// Asserts `status` with some error text, whatever it says; `what`
    /// names the request in a failure.
    #[track_caller]
    pub fn expect_refused(&self, status: u16, what: &str) {
        assert_eq!(self.status, status, "{what}: {self:?}");
        assert!(!self.error().is_empty());
    }

    #[track_caller]
    pub fn expect_message(&self, message: &str) {
        assert_eq!(
            (self.status, self.body["message"].as_str()),
            (200, Some(message)),
            "{self:?}"
        );
    }

    /// The body, a JSON list, after asserting a 200.
    #[track_caller]
    pub fn list(&self) -> Vec<Value> {
        assert_eq!(self.status, 200, "{self:?}");
        self.body.as_array().cloned().expect("a list")
    }

    /// The `chat_id`s of a list of messages, in order.
    #[track_caller]
    pub fn chat_ids(&self) -> Vec<i64> {
        self.body
            .as_array()
            .unwrap_or_else(|| panic!("not a list: {self:?}"))
            .iter()
            .map(|m| m["chat_id"].as_i64().expect("chat_id"))
            .collect()
    }
}

/// The body of a GET of `url` (a process's `/metrics`, a NATS server's
/// monitoring endpoints).
pub async fn text(url: &str) -> String {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// The Prometheus text a process serves at `<base>/metrics`.
pub async fn metrics(base: &str) -> String {
    text(&format!("{base}/metrics")).await
}

/// The value of the unlabelled metric `name` a process serves at
/// `<base>/metrics` (`komunikator_…_total`, …); `None` when it has none.
pub async fn metric(base: &str, name: &str) -> Option<f64> {
    metric_in(&metrics(base).await, name)
}

/// The value of the unlabelled metric `name` in the Prometheus `text` of
/// [`metrics`], for reading several from one scrape.
pub fn metric_in(text: &str, name: &str) -> Option<f64> {
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request; a 5xx answer fails the test with the warnings and
    /// errors the deployment logged.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let res = req.send().await.expect("request sent");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.expect("response body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status >= 500 {
            let errors: Vec<String> = self
                .logs()
                .lines()
                .filter(|l| l.contains("\"ERROR\"") || l.contains("\"WARN\""))
                .map(str::to_owned)
                .collect();
            panic!(
                "server error {status}: {}\nwarnings and errors logged:\n{}",
                String::from_utf8_lossy(&bytes),
                errors.join("\n")
            );
        }
        Resp {
            status,
            body,
            headers,
        }
    }

    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.send(self.request(reqwest::Method::GET, path, token))
            .await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.send(self.request(reqwest::Method::POST, path, token).json(&body))
            .await
    }
}
