//! The proxy in-process (part of the shared test harness; see `mod.rs`).

use super::*;

/// Outpost started in this process from inline YAML, on `127.0.0.1:0`.
pub struct Proxy {
    app: Option<App>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub client: HttpClient,
    pub dir: TempDir,
}

impl Proxy {
    /// Start from YAML (indentation removed). Unless the text sets `version:`, the harness
    /// prepends `version: 1`, `listen: 127.0.0.1:0` and `admin_listen: 127.0.0.1:0`.
    pub async fn start(yaml: &str) -> Proxy {
        let dir = TempDir::new("proxy");
        let mut text = dedent(yaml);
        if !text.lines().any(|l| l.starts_with("version:")) {
            text = format!("version: 1\nlisten: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n{text}");
        }
        let path = dir.path.join("proxy.yaml");
        let config = outpost::config::load_str(&text, &path)
            .unwrap_or_else(|e| panic!("test config is invalid:\n{e}\n---\n{text}"));
        let app = App::start(config).await.expect("App::start");
        Proxy {
            addr: app.app_addr,
            admin: app.admin_addr,
            app: Some(app),
            client: http1_client(),
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn app(&self) -> &App {
        self.app.as_ref().expect("running")
    }

    /// `GET path` through the proxy.
    pub async fn get(&self, path: &str) -> Answer {
        let req = Request::get(self.url(path)).body(empty()).unwrap();
        send(&self.client, req).await
    }

    /// A request through the proxy: method, path, headers, body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        send(&self.client, self.build(method, path, headers, full(body))).await
    }

    /// Build (but do not send) a request to the proxy.
    pub fn build(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: TestBody,
    ) -> Request<TestBody> {
        let mut req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(self.url(path));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(body).unwrap()
    }

    /// The metrics exposition as `/metrics` renders it.
    pub fn metrics(&self) -> String {
        self.app().metrics.render()
    }

    pub async fn shutdown(mut self) {
        if let Some(app) = self.app.take() {
            guard("proxy shutdown", app.shutdown()).await;
        }
    }
}
