//! Stage two of loading: [`Validator`] turns the raw structs into the typed [`Config`] —
//! presets merged, secrets resolved, URLs and header names parsed, cross-field rules checked.
//! Every problem is recorded with its field path (located in the file by `load_str`), and
//! never with a secret's value.

use super::*;

pub(super) struct Issue {
    pub(super) path: String,
    pub(super) message: String,
    pub(super) at_value: bool,
}

pub(super) struct Validator {
    pub(super) base_dir: PathBuf,
    pub(super) issues: Vec<Issue>,
    pub(super) watched: BTreeSet<PathBuf>,
}

fn join(path: &str, key: &str) -> String {
    format!("{path}.{key}")
}

impl Validator {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(Issue {
            path: path.into(),
            message: message.into(),
            at_value: true,
        });
    }

    fn key_error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(Issue {
            path: path.into(),
            message: message.into(),
            at_value: false,
        });
    }

    pub(super) fn config(&mut self, raw: RawConfig, path: &Path) -> Option<Config> {
        if raw.version != 1 {
            self.error(
                "version",
                format!(
                    "unsupported config version {} (this Outpost reads version 1)",
                    raw.version
                ),
            );
        }
        let listen = self.addr("listen", raw.listen.as_deref(), DEFAULT_LISTEN);
        let admin_listen = self.addr(
            "admin_listen",
            raw.admin_listen.as_deref(),
            DEFAULT_ADMIN_LISTEN,
        );
        let webhook_listen = self.addr(
            "webhook_listen",
            raw.webhook_listen.as_deref(),
            DEFAULT_WEBHOOK_LISTEN,
        );
        if let (Some(a), Some(b)) = (listen, admin_listen) {
            if a == b && a.port() != 0 {
                self.error("admin_listen", "admin_listen must differ from listen");
            }
        }
        let limits = self.limits(raw.limits);
        let webhook_limits = limits
            .as_ref()
            .and_then(|l| self.webhook_limits(raw.webhook_limits, l));

        let mut upstreams = Vec::new();
        let mut seen_hosts: Vec<(String, String)> = Vec::new();
        for (name, raw_up) in raw.upstreams.0 {
            let path = format!("upstreams.{name}");
            if !is_route_name(&name) {
                self.key_error(
                    &path,
                    "upstream names become the first path segment: use letters, digits, `-`, `_` or `.` (not `.` or `..` alone)",
                );
                continue;
            }
            if let Some(up) = self.upstream(&path, name.clone(), raw_up) {
                for (i, host) in up.hosts.iter().enumerate() {
                    if let Some((other, _)) = seen_hosts.iter().find(|(_, h)| h == host) {
                        self.error(
                            format!("{path}.hosts[{i}]"),
                            format!("host `{host}` is already routed to upstream `{other}`"),
                        );
                    } else {
                        seen_hosts.push((name.clone(), host.clone()));
                    }
                }
                upstreams.push(Arc::new(up));
            }
        }

        let mut webhooks = Vec::new();
        let mut seen_paths: HashSet<String> = HashSet::new();
        for (name, raw_hook) in raw.webhooks.0 {
            let path = format!("webhooks.{name}");
            if let Some(hook) = self.webhook(&path, name, raw_hook) {
                if !seen_paths.insert(hook.path.clone()) {
                    self.error(
                        join(&path, "path"),
                        format!("path `{}` is used by another webhook", hook.path),
                    );
                }
                webhooks.push(Arc::new(hook));
            }
        }
        if !webhooks.is_empty() {
            if let (Some(a), Some(w)) = (listen, webhook_listen) {
                if a == w && a.port() != 0 {
                    self.error("webhook_listen", "webhook_listen must differ from listen");
                }
            }
        }

        let capture = match raw.capture.as_ref().map(|c| c.validate()) {
            Some(Ok(capture)) => Some(Some(capture)),
            Some(Err(e)) => {
                self.error("capture", e);
                None
            }
            None => Some(None),
        };
        let inspect_listen = match super::capture::inspect_listen(raw.inspect_listen.as_deref()) {
            Ok(addr) => Some(addr),
            Err(e) => {
                self.error("inspect_listen", e);
                None
            }
        };
        if let (Some(a), Some(i), Some(Some(_))) = (listen, inspect_listen, &capture) {
            if a == i && a.port() != 0 {
                self.error("inspect_listen", "inspect_listen must differ from listen");
            }
        }

        let cassette_dir = raw.cassette_dir.map(|d| self.base_dir.join(d));
        let modes: Vec<(&str, super::capture::Mode)> = upstreams
            .iter()
            .map(|u| (u.name.as_str(), u.mode))
            .collect();
        if let Err(e) = super::capture::validate_modes(cassette_dir.as_deref(), &modes) {
            self.error("cassette_dir", e);
        }

        Some(Config {
            cassette_dir,
            capture: capture?,
            inspect_listen: inspect_listen?,
            path: path.to_path_buf(),
            listen: listen?,
            admin_listen: admin_listen?,
            webhook_listen: webhook_listen?,
            drain_timeout: raw.drain_timeout.map_or(DEFAULT_DRAIN_TIMEOUT, |d| d.0),
            limits: limits?,
            webhook_limits: webhook_limits?,
            upstreams,
            webhooks,
            watched_files: Vec::new(),
        })
    }

    fn addr(&mut self, path: &str, value: Option<&str>, default: &str) -> Option<SocketAddr> {
        let text = value.unwrap_or(default);
        match text.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.error(
                    path,
                    format!("`{text}` is not a socket address such as 127.0.0.1:8080"),
                );
                None
            }
        }
    }

    fn limits(&mut self, raw: RawLimits) -> Option<Limits> {
        let max_header_bytes = raw
            .max_header_bytes
            .map_or(DEFAULT_MAX_HEADER_BYTES, |s| s.0);
        if !(MIN_MAX_HEADER_BYTES..=16 * 1024 * 1024).contains(&max_header_bytes) {
            self.error("limits.max_header_bytes", "must be between 8KiB and 16MiB");
            return None;
        }
        let header_read_timeout = raw
            .header_read_timeout
            .map_or(DEFAULT_HEADER_READ_TIMEOUT, |d| d.0);
        if header_read_timeout.is_zero() {
            self.error("limits.header_read_timeout", "must be greater than zero");
        }
        let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            self.error("limits.max_connections", "must be at least 1");
        }
        Some(Limits {
            max_header_bytes: max_header_bytes as usize,
            header_read_timeout,
            max_connections: max_connections as usize,
            max_body_bytes: raw.max_body_bytes.map(|s| s.0),
        })
    }

    fn webhook_limits(&mut self, raw: RawWebhookLimits, app: &Limits) -> Option<WebhookLimits> {
        let max_header_bytes = raw
            .max_header_bytes
            .map_or(app.max_header_bytes as u64, |s| s.0);
        if !(MIN_MAX_HEADER_BYTES..=16 * 1024 * 1024).contains(&max_header_bytes) {
            self.error(
                "webhook_limits.max_header_bytes",
                "must be between 8KiB and 16MiB",
            );
            return None;
        }
        let header_read_timeout = raw
            .header_read_timeout
            .map_or(app.header_read_timeout, |d| d.0);
        let body_read_timeout = raw
            .body_read_timeout
            .map_or(DEFAULT_WEBHOOK_BODY_READ_TIMEOUT, |d| d.0);
        let idle_timeout = raw
            .idle_timeout
            .map_or(DEFAULT_WEBHOOK_IDLE_TIMEOUT, |d| d.0);
        for (key, value) in [
            ("header_read_timeout", header_read_timeout),
            ("body_read_timeout", body_read_timeout),
            ("idle_timeout", idle_timeout),
        ] {
            if value.is_zero() {
                self.error(format!("webhook_limits.{key}"), "must be greater than zero");
            }
        }
        let max_connections = raw
            .max_connections
            .map_or(app.max_connections, |n| n as usize);
        if max_connections == 0 {
            self.error("webhook_limits.max_connections", "must be at least 1");
        }
        Some(WebhookLimits {
            max_header_bytes: max_header_bytes as usize,
            header_read_timeout,
            body_read_timeout,
            idle_timeout,
            max_connections,
        })
    }

    fn secret(&mut self, path: &str, text: &str) -> Option<Secret> {
        let template = match SecretTemplate::parse(text) {
            Ok(t) => t,
            Err(e) => {
                self.error(path, e.to_string());
                return None;
            }
        };
        for file in template.files(&self.base_dir) {
            self.watched.insert(file);
        }
        match template.resolve(&self.base_dir) {
            Ok(secret) => Some(secret),
            Err(e) => {
                self.error(path, e.to_string());
                None
            }
        }
    }

    /// A secret that goes into a header value: must be visible ASCII (no CR/LF injection).
    fn header_secret(&mut self, path: &str, text: &str) -> Option<Secret> {
        let secret = self.secret(path, text)?;
        if secret.expose().len() > MAX_HEADER_VALUE_BYTES {
            self.error(
                path,
                format!(
                    "value is longer than {} (value not shown)",
                    units::format_size(MAX_HEADER_VALUE_BYTES as u64)
                ),
            );
            return None;
        }
        if HeaderValue::from_str(secret.expose()).is_err() {
            self.error(
                path,
                "value contains characters not allowed in an HTTP header (value not shown)",
            );
            return None;
        }
        Some(secret)
    }

    fn url(&mut self, path: &str, text: &str) -> Option<Uri> {
        let uri: Uri = match text.parse() {
            Ok(u) => u,
            Err(_) => {
                self.error(path, format!("`{text}` is not a valid URL"));
                return None;
            }
        };
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => {
                self.error(
                    path,
                    format!("`{text}` must start with http:// or https://"),
                );
                return None;
            }
        }
        match uri.authority() {
            Some(a) if !a.host().is_empty() && !a.as_str().contains('@') => {}
            Some(_) => {
                self.error(
                    path,
                    "URL must not contain user info; put credentials under `auth`",
                );
                return None;
            }
            None => {
                self.error(path, format!("`{text}` has no host"));
                return None;
            }
        }
        Some(uri)
    }

    fn upstream(&mut self, path: &str, name: String, raw: RawUpstream) -> Option<Upstream> {
        let provider = raw.preset.map_or(&preset::GENERIC, |p| p.defaults());
        let base_text = match (&raw.base_url, raw.preset) {
            (Some(text), _) => text.clone(),
            (None, Some(p)) if p.defaults().base_url.is_empty() => {
                self.key_error(
                    path,
                    format!(
                        "preset `{}` needs `base_url` (the account's or shop's own host)",
                        p.name()
                    ),
                );
                return None;
            }
            (None, Some(p)) => p.defaults().base_url.to_string(),
            (None, None) => {
                self.key_error(path, "missing `base_url` (or a `preset`)");
                return None;
            }
        };
        let base_path = join(path, "base_url");
        let base_from_token = base_text == FROM_TOKEN;
        let mut base_url = if base_from_token {
            None // the token endpoint's origin, once `auth` is read (below)
        } else {
            self.base_url(&base_path, &base_text)
        };

        let raw_auth_given = raw.auth.is_some() || raw.preset.is_some();
        let auth = match raw.auth {
            Some(mut raw_auth) => {
                let preset_type = raw.preset.map(|p| p.defaults().auth_type);
                // The preset's own auth keys, where the config leaves them out.
                if raw_auth.kind.is_none() || raw_auth.kind == preset_type {
                    let d = &provider.auth_defaults;
                    let base = base_text.trim_end_matches('/');
                    if raw_auth.token_url.is_none() {
                        raw_auth.token_url = d.token_url.map(|t| t.replace("{base}", base));
                    }
                    if raw_auth.audience.is_none() && raw_auth.service_account.is_none() {
                        raw_auth.audience = d.audience.map(str::to_string);
                    }
                    if raw_auth.password.is_none() {
                        raw_auth.password = d.password.map(str::to_string);
                    }
                    if raw_auth.name.is_none() {
                        raw_auth.name = d.header_name.map(str::to_string);
                    }
                    if raw_auth.region.is_none() {
                        raw_auth.region = d.region.map(str::to_string);
                    }
                    if raw_auth.service.is_none() {
                        raw_auth.service = d.service.map(str::to_string);
                    }
                }
                self.auth(&join(path, "auth"), raw_auth, preset_type)
            }
            None => None,
        };
        if base_from_token {
            // The API origin comes with each token (`instance_url`); until then, and for the
            // connection settings, the token endpoint's origin stands in.
            let token_url = match &auth {
                Some(Auth::OAuth2ClientCredentials(o)) => Some(&o.token_url),
                Some(Auth::OAuth2JwtBearer(j)) => Some(&j.token_url),
                Some(Auth::OAuth2RefreshToken(r)) => Some(&r.token_url),
                _ => None,
            };
            match token_url.and_then(|u| Some((u.scheme_str()?, u.authority()?))) {
                Some((scheme, authority)) => {
                    base_url = self.base_url(&base_path, &format!("{scheme}://{authority}"));
                }
                None if raw_auth_given => {
                    self.error(
                        &base_path,
                        "`base_url: from_token` takes the API origin from the token answer's `instance_url`: it needs auth type oauth2_jwt_bearer, oauth2_client_credentials or oauth2_refresh_token",
                    );
                }
                None => {}
            }
        }
        if let Some(auth) = &auth {
            if let Err(e) = forms::check_auth_secret(auth) {
                self.error(join(&join(path, "auth"), "secret"), e);
            }
        }

        let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
        for (name, value) in provider.headers {
            headers.push((
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            ));
        }
        for (name, value) in raw.headers.0 {
            let hpath = format!("{path}.headers.{name}");
            let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
                self.key_error(&hpath, format!("`{name}` is not a valid header name"));
                continue;
            };
            if is_hop_by_hop(&header)
                || header == http::header::HOST
                || header == http::header::CONTENT_LENGTH
            {
                self.key_error(
                    &hpath,
                    format!("header `{name}` is managed by the proxy and cannot be set"),
                );
                continue;
            }
            let template_has_refs = SecretTemplate::parse(&value)
                .map(|t| t.has_references())
                .unwrap_or(false);
            let Some(secret) = self.header_secret(&hpath, &value) else {
                continue;
            };
            let Ok(mut header_value) = HeaderValue::from_str(secret.expose()) else {
                continue;
            };
            header_value.set_sensitive(template_has_refs);
            headers.retain(|(n, _)| *n != header);
            headers.push((header, header_value));
        }

        let timeout = raw.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0);
        let attempt_timeout = raw
            .attempt_timeout
            .map_or(DEFAULT_ATTEMPT_TIMEOUT.min(timeout), |d| d.0);
        let connect_timeout = raw
            .connect_timeout
            .map_or(DEFAULT_CONNECT_TIMEOUT.min(attempt_timeout), |d| d.0);
        for (key, value) in [
            ("timeout", timeout),
            ("attempt_timeout", attempt_timeout),
            ("connect_timeout", connect_timeout),
        ] {
            if value.is_zero() {
                self.error(join(path, key), "must be greater than zero");
            }
        }
        if attempt_timeout > timeout {
            self.error(
                join(path, "attempt_timeout"),
                "must not be longer than `timeout` (the whole call, retries included)",
            );
        }

        let rate_limit = match raw.rate_limit {
            Some(r) => self.rate_limit(&join(path, "rate_limit"), r, provider.quota),
            // The preset's quota paces on its own, without a configured rate.
            None => provider.quota.map(|quota| RateLimit {
                requests: f64::INFINITY,
                per: Duration::from_secs(1),
                burst: DEFAULT_QUOTA_BURST,
                max_wait: DEFAULT_MAX_WAIT,
                max_in_flight: None,
                shared: None,
                quota: Some(quota),
            }),
        };
        let graphql = match raw.graphql {
            None | Some(RawGraphql::On(true)) if provider.graphql_path.is_some() => {
                provider.graphql_path.map(|p| Graphql {
                    path: p.to_string(),
                })
            }
            None | Some(RawGraphql::On(false)) => None,
            Some(RawGraphql::On(true)) => Some(Graphql {
                path: "/graphql".to_string(),
            }),
            Some(RawGraphql::Path(p)) => {
                let valid = p.path.starts_with('/')
                    && p.path.len() <= 256
                    && !p.path.contains(['?', '#'])
                    && p.path.bytes().all(|b| b.is_ascii_graphic());
                if !valid {
                    self.error(
                        join(&join(path, "graphql"), "path"),
                        "must be a path starting with `/`, without query or spaces",
                    );
                }
                valid.then(|| Graphql {
                    path: p.path.trim_end_matches('/').to_string(),
                })
            }
        };
        let retry = self.retry(&join(path, "retry"), raw.retry, provider);
        let circuit_breaker = raw.circuit_breaker.and_then(|b| {
            let consecutive_failures = b
                .consecutive_failures
                .unwrap_or(DEFAULT_CONSECUTIVE_FAILURES);
            let open_for = b.open_for.map_or(DEFAULT_OPEN_FOR, |d| d.0);
            if consecutive_failures == 0 {
                self.error(
                    format!("{path}.circuit_breaker.consecutive_failures"),
                    "must be at least 1",
                );
                return None;
            }
            if open_for.is_zero() {
                self.error(
                    format!("{path}.circuit_breaker.open_for"),
                    "must be greater than zero",
                );
                return None;
            }
            Some(CircuitBreaker {
                consecutive_failures,
                open_for,
            })
        });

        let mut hosts = Vec::new();
        for (i, host) in raw.hosts.iter().enumerate() {
            let host = host.trim().to_ascii_lowercase();
            let valid = !host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if !valid {
                self.error(
                    format!("{path}.hosts[{i}]"),
                    format!("`{host}` is not a host name (no scheme, port or path)"),
                );
            } else if hosts.contains(&host) {
                self.error(
                    format!("{path}.hosts[{i}]"),
                    format!("host `{host}` is listed twice"),
                );
            } else {
                hosts.push(host);
            }
        }

        let tls_ca_file = match raw.tls.and_then(|t| t.ca_file) {
            Some(file) => {
                let file = self.base_dir.join(file);
                let tpath = format!("{path}.tls.ca_file");
                if let Some(base) = &base_url {
                    if !base.is_https() {
                        self.error(&tpath, "`tls` is set but `base_url` is not https");
                    }
                }
                match forms::check_ca_file(&file) {
                    Ok(_) => {
                        self.watched.insert(file.clone());
                        Some(file)
                    }
                    Err(e) => {
                        self.error(&tpath, e);
                        None
                    }
                }
            }
            None => None,
        };

        let cassette = match raw.cassette.as_ref().map(|c| c.validate(&name)) {
            None => Some(super::capture::CassetteOptions::default()),
            Some(Ok(options)) => Some(options),
            Some(Err(e)) => {
                self.error(join(path, "cassette"), e);
                None
            }
        };
        Some(Upstream {
            name,
            preset: raw.preset,
            base_url: base_url?,
            base_from_token,
            auth,
            headers,
            timeout,
            attempt_timeout,
            connect_timeout,
            rate_limit,
            retry: retry?,
            circuit_breaker,
            errors: raw.errors.unwrap_or(ErrorMode::Passthrough),
            http: raw.http.unwrap_or(HttpMode::Auto),
            hosts,
            tls_ca_file,
            provider,
            mode: raw.mode.unwrap_or_default(),
            cassette: cassette?,
            graphql,
        })
    }

    fn base_url(&mut self, path: &str, text: &str) -> Option<BaseUrl> {
        let uri = self.url(path, text)?;
        if uri.query().is_some() || text.contains('#') {
            self.error(path, "base_url must not have a query string or fragment");
            return None;
        }
        let scheme = uri.scheme()?.clone();
        let authority = uri.authority()?.clone();
        let base = uri.path().trim_end_matches('/').to_string();
        if base.split('/').any(|seg| seg == "." || seg == "..") {
            self.error(path, "base_url path must not contain `.` or `..` segments");
            return None;
        }
        BaseUrl::new(scheme, authority, base)
    }

    fn auth(&mut self, path: &str, raw: RawAuth, preset_type: Option<AuthType>) -> Option<Auth> {
        let Some(kind) = raw.kind.or(preset_type) else {
            self.key_error(path, "missing `type` (bearer, basic, header, query, oauth2_client_credentials, oauth2_refresh_token, oauth2_jwt_bearer, github_app, aws_sigv4, standard_webhooks or hmac_signature)");
            return None;
        };
        let present = raw.present_fields();
        let (required, optional) = kind.fields();
        let mut ok = true;
        for field in &present {
            if !required.contains(field) && !optional.contains(field) {
                self.key_error(
                    join(path, field),
                    format!("`{field}` is not used by auth type `{}`", kind.name()),
                );
                ok = false;
            }
        }
        for field in required {
            if !present.contains(field) {
                self.key_error(path, format!("auth type `{}` needs `{field}`", kind.name()));
                ok = false;
            }
        }
        if !ok {
            return None;
        }
        let pool = |v: &mut Self,
                    one: Option<String>,
                    many: Option<Vec<String>>,
                    one_key: &str,
                    many_key: &str|
         -> Option<Vec<Secret>> {
            match (one, many) {
                (Some(_), Some(_)) => {
                    v.key_error(
                        join(path, many_key),
                        format!("use either `{one_key}` or `{many_key}`, not both"),
                    );
                    None
                }
                (None, None) => {
                    v.key_error(
                        path,
                        format!(
                            "auth type `{}` needs `{one_key}` (or `{many_key}` for a key pool)",
                            kind.name()
                        ),
                    );
                    None
                }
                (Some(text), None) => Some(vec![v.header_secret(&join(path, one_key), &text)?]),
                (None, Some(list)) if list.is_empty() => {
                    v.error(join(path, many_key), "the key pool is empty");
                    None
                }
                (None, Some(list)) => {
                    let mut out = Vec::new();
                    for (i, text) in list.iter().enumerate() {
                        out.push(v.header_secret(&format!("{path}.{many_key}[{i}]"), text));
                    }
                    out.into_iter().collect()
                }
            }
        };
        let req = |v: &mut Self, key: &str, text: Option<String>| -> Option<Secret> {
            v.header_secret(&join(path, key), text.as_deref()?)
        };
        Some(match kind {
            AuthType::Bearer => Auth::Bearer {
                tokens: pool(self, raw.token, raw.tokens, "token", "tokens")?,
            },
            AuthType::Basic => {
                let username = req(self, "username", raw.username);
                let password = req(self, "password", raw.password);
                Auth::Basic {
                    username: username?,
                    password: password?,
                }
            }
            AuthType::Header => {
                let name_text = raw.name.unwrap_or_default();
                let name = match HeaderName::from_bytes(name_text.as_bytes()) {
                    Ok(n) if !is_hop_by_hop(&n) && n != http::header::HOST => Some(n),
                    _ => {
                        self.error(
                            join(path, "name"),
                            format!("`{name_text}` cannot be used as the credential header"),
                        );
                        None
                    }
                };
                let values = pool(self, raw.value, raw.values, "value", "values");
                Auth::Header {
                    name: name?,
                    values: values?,
                }
            }
            AuthType::Query => {
                let name = raw.name.unwrap_or_default();
                if name.is_empty() {
                    self.error(
                        join(path, "name"),
                        "the query parameter name must not be empty",
                    );
                }
                let values = pool(self, raw.value, raw.values, "value", "values")?;
                if name.is_empty() {
                    return None;
                }
                Auth::Query { name, values }
            }
            AuthType::OAuth2ClientCredentials => {
                let token_url = raw
                    .token_url
                    .as_deref()
                    .and_then(|t| self.url(&join(path, "token_url"), t));
                let client_id = req(self, "client_id", raw.client_id);
                let (client_auth, client_cert) = self.client_auth(
                    path,
                    raw.client_auth,
                    raw.client_secret.is_some(),
                    raw.client_cert,
                    raw.client_key,
                )?;
                let client_secret = match (client_auth, raw.client_secret) {
                    (ClientAuth::TlsClientAuth, _) => Some(Secret::new("")),
                    (_, Some(text)) => self.secret(&join(path, "client_secret"), &text),
                    (_, None) => {
                        self.key_error(
                            path,
                            "auth type `oauth2_client_credentials` needs `client_secret` (or `client_auth: tls_client_auth` with `client_cert` and `client_key`)",
                        );
                        None
                    }
                };
                let mut params = Vec::new();
                for (k, v) in raw.params.map(|p| p.0).unwrap_or_default() {
                    if matches!(
                        k.as_str(),
                        "grant_type" | "client_id" | "client_secret" | "scope" | "audience"
                    ) {
                        self.key_error(
                            format!("{path}.params.{k}"),
                            format!("`{k}` is set by Outpost; use the auth key of that name"),
                        );
                    }
                    params.push((k, v));
                }
                Auth::OAuth2ClientCredentials(OAuth2 {
                    token_url: token_url?,
                    client_id: client_id?,
                    client_secret: client_secret?,
                    scopes: raw.scopes.unwrap_or_default(),
                    audience: raw.audience,
                    client_auth,
                    params,
                    client_cert,
                })
            }
            AuthType::AwsSigv4 => {
                let region = raw.region.unwrap_or_default();
                let service = raw.service.unwrap_or_default();
                for (key, value) in [("region", &region), ("service", &service)] {
                    if value.is_empty()
                        || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    {
                        self.error(
                            join(path, key),
                            format!("`{value}` is not a valid AWS {key}"),
                        );
                    }
                }
                let access_key_id = req(self, "access_key_id", raw.access_key_id);
                let secret_access_key = req(self, "secret_access_key", raw.secret_access_key);
                let session_token = match raw.session_token {
                    Some(t) => Some(self.header_secret(&join(path, "session_token"), &t)?),
                    None => None,
                };
                Auth::AwsSigv4(AwsSigv4 {
                    region,
                    service,
                    access_key_id: access_key_id?,
                    secret_access_key: secret_access_key?,
                    session_token,
                })
            }
            AuthType::StandardWebhooks => {
                let secret = self.secret(
                    &join(path, "secret"),
                    raw.secret.as_deref().unwrap_or_default(),
                )?;
                Auth::StandardWebhooks { secret }
            }
            AuthType::HmacSignature => {
                let header_text = raw.header.unwrap_or_default();
                let header = match HeaderName::from_bytes(header_text.as_bytes()) {
                    Ok(h) => Some(h),
                    Err(_) => {
                        self.error(
                            join(path, "header"),
                            format!("`{header_text}` is not a valid header name"),
                        );
                        None
                    }
                };
                let secret = self.secret(
                    &join(path, "secret"),
                    raw.secret.as_deref().unwrap_or_default(),
                );
                Auth::HmacSignature(HmacSignature {
                    header: header?,
                    prefix: raw.prefix.unwrap_or_default(),
                    algorithm: raw.algorithm.unwrap_or(HmacAlgorithm::Sha256),
                    encoding: raw.encoding.unwrap_or(SignatureEncoding::Hex),
                    secret: secret?,
                })
            }
            AuthType::OAuth2JwtBearer => Auth::OAuth2JwtBearer(self.jwt_bearer(path, raw)?),
            AuthType::GithubApp => {
                let app_id = raw.app_id.map(|a| a.text()).unwrap_or_default();
                if app_id.is_empty() || !app_id.chars().all(|c| c.is_ascii_alphanumeric()) {
                    self.error(
                        join(path, "app_id"),
                        "the app id (or client id) must be letters and digits",
                    );
                }
                let installation_id = match raw.installation_id.map(|i| i.text()) {
                    Some(text) => match text.parse::<u64>() {
                        Ok(id) if id > 0 => Some(id),
                        _ => {
                            self.error(
                                join(path, "installation_id"),
                                "the installation id must be a positive number",
                            );
                            None
                        }
                    },
                    None => None,
                };
                let private_key = self.private_key(
                    &join(path, "private_key"),
                    raw.private_key.as_deref().unwrap_or_default(),
                );
                if app_id.is_empty() {
                    return None;
                }
                Auth::GithubApp(GithubApp {
                    app_id,
                    private_key: private_key?,
                    installation_id: installation_id?,
                })
            }
            AuthType::OAuth2RefreshToken => {
                Auth::OAuth2RefreshToken(self.refresh_token(path, raw)?)
            }
        })
    }

    /// A PEM private key (secret reference), checked to be one the JWT signer can use (RSA,
    /// or EC P-256). The message never contains the key.
    fn private_key(&mut self, path: &str, text: &str) -> Option<Secret> {
        let key = self.secret(path, text)?;
        if let Err(e) = jwt_key_check(key.expose()) {
            self.error(path, e);
            return None;
        }
        Some(key)
    }

    /// `oauth2_jwt_bearer`: from a Google service-account key (`service_account`: its JSON),
    /// or from `issuer` + `private_key` (+ `token_url`), keys beside it overriding.
    fn jwt_bearer(&mut self, path: &str, raw: RawAuth) -> Option<JwtBearer> {
        let mut issuer = raw.issuer;
        let mut token_url_text = raw.token_url;
        let mut key_id = None;
        let private_key;
        match (&raw.service_account, &raw.private_key) {
            (Some(_), Some(_)) => {
                self.key_error(
                    join(path, "private_key"),
                    "use either `service_account` or `private_key`, not both",
                );
                return None;
            }
            (None, None) => {
                self.key_error(path, "auth type `oauth2_jwt_bearer` needs `service_account` (a Google key file) or `issuer` and `private_key`");
                return None;
            }
            (Some(text), None) => {
                let key_path = join(path, "service_account");
                let secret = self.secret(&key_path, text)?;
                let json: serde_json::Value = match serde_json::from_str(secret.expose()) {
                    Ok(json) => json,
                    Err(_) => {
                        self.error(
                            key_path,
                            "the service account key is not JSON (expected the key file Google issued)",
                        );
                        return None;
                    }
                };
                let field =
                    |name: &str| json.get(name).and_then(|v| v.as_str()).map(str::to_string);
                let (Some(email), Some(pem)) = (field("client_email"), field("private_key")) else {
                    self.error(
                        key_path,
                        "the service account key has no `client_email` or `private_key`",
                    );
                    return None;
                };
                issuer = issuer.or(Some(email));
                token_url_text = token_url_text.or(field("token_uri"));
                key_id = field("private_key_id");
                if let Err(e) = jwt_key_check(&pem) {
                    self.error(key_path, e);
                    return None;
                }
                private_key = Some(Secret::new(pem));
            }
            (None, Some(text)) => {
                private_key = self.private_key(&join(path, "private_key"), text);
            }
        }
        let Some(issuer) = issuer.filter(|i| !i.is_empty()) else {
            self.key_error(
                path,
                "auth type `oauth2_jwt_bearer` needs `issuer` (or a `service_account`)",
            );
            return None;
        };
        let Some(token_text) = token_url_text else {
            self.key_error(path, "auth type `oauth2_jwt_bearer` needs `token_url` (or a `service_account` naming its token_uri)");
            return None;
        };
        let token_url = self.url(&join(path, "token_url"), &token_text)?;
        Some(JwtBearer {
            audience: raw.audience.unwrap_or_else(|| token_text.clone()),
            token_url,
            issuer,
            subject: raw.subject,
            scopes: raw.scopes.unwrap_or_default(),
            private_key: private_key?,
            key_id,
        })
    }

    /// `client_auth` of the `oauth2_*` types (default `basic`) and, for `tls_client_auth`
    /// (RFC 8705 §2.1), the client certificate: `client_cert` and `client_key` are required
    /// there, checked to be a certificate and its key, and refused with any other mode; a
    /// `client_secret` is refused with it (the certificate is the credential).
    fn client_auth(
        &mut self,
        path: &str,
        mode: Option<ClientAuth>,
        has_secret: bool,
        cert: Option<String>,
        key: Option<String>,
    ) -> Option<(ClientAuth, Option<ClientCert>)> {
        let mode = mode.unwrap_or(ClientAuth::Basic);
        if mode != ClientAuth::TlsClientAuth {
            for (present, name) in [
                (cert.is_some(), "client_cert"),
                (key.is_some(), "client_key"),
            ] {
                if present {
                    self.key_error(
                        join(path, name),
                        format!("`{name}` is only used with `client_auth: tls_client_auth`"),
                    );
                    return None;
                }
            }
            return Some((mode, None));
        }
        if has_secret {
            self.key_error(
                join(path, "client_secret"),
                "`client_auth: tls_client_auth` authenticates with the client certificate: remove `client_secret`",
            );
            return None;
        }
        let (Some(cert), Some(key)) = (cert, key) else {
            self.key_error(
                join(path, "client_auth"),
                "`client_auth: tls_client_auth` needs `client_cert` and `client_key` (PEM, e.g. `${file:/var/run/secrets/oauth/tls.crt}`)",
            );
            return None;
        };
        let cert_pem = self.secret(&join(path, "client_cert"), &cert);
        let key_pem = self.secret(&join(path, "client_key"), &key);
        let (cert_pem, key_pem) = (cert_pem?, key_pem?);
        if let Err(message) = forms::client_identity(cert_pem.expose(), key_pem.expose()) {
            self.error(join(path, "client_cert"), message);
            return None;
        }
        Some((mode, Some(ClientCert { cert_pem, key_pem })))
    }

    /// `oauth2_refresh_token`: the token endpoint, the client, the seed refresh token and the
    /// file the rotated tokens are kept in.
    fn refresh_token(&mut self, path: &str, raw: RawAuth) -> Option<RefreshToken> {
        let store_path = join(path, "store");
        let store = match raw.store {
            Some(RawTokenStore {
                file: Some(file),
                redis_url: None,
                redis_cluster: None,
                redis_sentinel: None,
                key,
            }) if !file.as_os_str().is_empty() => {
                if key.is_some() {
                    self.key_error(
                        join(&store_path, "key"),
                        "`key` applies only to a Redis store",
                    );
                }
                Some(TokenStore::File(self.base_dir.join(file)))
            }
            Some(RawTokenStore {
                file: None,
                redis_url,
                redis_cluster,
                redis_sentinel,
                key,
            }) if redis_url.is_some() || redis_cluster.is_some() || redis_sentinel.is_some() => {
                let key_ok = key.as_deref().is_none_or(|k| {
                    let ok = !k.is_empty()
                        && k.len() <= 128
                        && k.bytes()
                            .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}');
                    if !ok {
                        self.error(
                            join(&store_path, "key"),
                            "must be 1 to 128 printable ASCII characters without spaces or braces",
                        );
                    }
                    ok
                });
                let redis =
                    self.redis_target(&store_path, redis_url, redis_cluster, redis_sentinel);
                match redis {
                    Some(redis) if key_ok => Some(TokenStore::Redis { redis, key }),
                    _ => None,
                }
            }
            Some(RawTokenStore { file: Some(f), .. }) if !f.as_os_str().is_empty() => {
                self.key_error(
                    &store_path,
                    "`store` takes `file` or one of `redis_url`, `redis_cluster`, `redis_sentinel`, not both",
                );
                None
            }
            _ => {
                self.error(
                    &store_path,
                    "`store` needs `file: PATH` (a writable file for the rotated refresh token) or a Redis (`redis_url`, `redis_cluster` or `redis_sentinel`)",
                );
                None
            }
        };
        let token_url = raw
            .token_url
            .as_deref()
            .and_then(|t| self.url(&join(path, "token_url"), t));
        let client_id = raw
            .client_id
            .as_deref()
            .and_then(|t| self.header_secret(&join(path, "client_id"), t));
        let client_secret = match raw.client_secret {
            Some(text) => Some(self.secret(&join(path, "client_secret"), &text)?),
            None => None,
        };
        let refresh_token = raw
            .refresh_token
            .as_deref()
            .and_then(|t| self.secret(&join(path, "refresh_token"), t));
        let mut params = Vec::new();
        for (k, v) in raw.params.map(|p| p.0).unwrap_or_default() {
            if matches!(
                k.as_str(),
                "grant_type" | "client_id" | "client_secret" | "scope" | "refresh_token"
            ) {
                self.key_error(
                    format!("{path}.params.{k}"),
                    format!("`{k}` is set by Outpost; use the auth key of that name"),
                );
            }
            params.push((k, v));
        }
        let (client_auth, client_cert) = self.client_auth(
            path,
            raw.client_auth,
            client_secret.is_some(),
            raw.client_cert,
            raw.client_key,
        )?;
        // A public client (no secret) sends only `client_id`, in the form.
        let client_auth = match (&client_secret, client_auth) {
            (None, ClientAuth::Basic) => ClientAuth::Body,
            (_, auth) => auth,
        };
        Some(RefreshToken {
            token_url: token_url?,
            client_id: client_id?,
            client_secret,
            refresh_token: refresh_token?,
            scopes: raw.scopes.unwrap_or_default(),
            client_auth,
            params,
            client_cert,
            store: store?,
        })
    }

    /// `redis_url | redis_cluster | redis_sentinel` under `path`: exactly one of the three.
    fn redis_target(
        &mut self,
        path: &str,
        url: Option<String>,
        cluster: Option<Vec<String>>,
        sentinel: Option<RawSentinel>,
    ) -> Option<RedisTarget> {
        let given = [url.is_some(), cluster.is_some(), sentinel.is_some()]
            .iter()
            .filter(|g| **g)
            .count();
        if given != 1 {
            self.key_error(
                path,
                "needs exactly one of `redis_url`, `redis_cluster`, `redis_sentinel`",
            );
            return None;
        }
        if let Some(url) = url {
            return self
                .redis_url(&join(path, "redis_url"), &url)
                .map(RedisTarget::Standalone);
        }
        let list = |v: &mut Self, lpath: &str, urls: &[String]| -> Option<Vec<Secret>> {
            if urls.is_empty() || urls.len() > 64 {
                v.error(lpath, "needs 1 to 64 URLs");
                return None;
            }
            let mut out = Vec::new();
            for (i, url) in urls.iter().enumerate() {
                out.push(v.redis_url(&format!("{lpath}[{i}]"), url));
            }
            out.into_iter().collect()
        };
        if let Some(urls) = cluster {
            return list(self, &join(path, "redis_cluster"), &urls).map(RedisTarget::Cluster);
        }
        let sentinel = sentinel?;
        let spath = join(path, "redis_sentinel");
        let master_ok = !sentinel.master.is_empty()
            && sentinel.master.len() <= 256
            && sentinel.master.bytes().all(|b| b.is_ascii_graphic());
        if !master_ok {
            self.error(
                join(&spath, "master"),
                "must be the master's name: 1 to 256 printable ASCII characters",
            );
        }
        let nodes = list(self, &join(&spath, "nodes"), &sentinel.nodes);
        let password = match sentinel.password {
            Some(text) => Some(self.secret(&join(&spath, "password"), &text)?),
            None => None,
        };
        if !master_ok {
            return None;
        }
        Some(RedisTarget::Sentinel(RedisSentinel {
            master: sentinel.master,
            nodes: nodes?,
            password,
        }))
    }

    /// One Redis URL (a secret: it may hold a password; messages never show it).
    fn redis_url(&mut self, path: &str, text: &str) -> Option<Secret> {
        let url = self.secret(path, text)?;
        if let Err(e) = forms::redis_url(url.expose()) {
            self.error(path, e);
            return None;
        }
        Some(url)
    }

    fn rate_limit(
        &mut self,
        path: &str,
        raw: RawRateLimit,
        preset_quota: Option<QuotaSignal>,
    ) -> Option<RateLimit> {
        let quota = match raw.quota {
            Some(RawQuota::Signal(signal)) => Some(signal),
            Some(RawQuota::Off) => None,
            None => preset_quota,
        };
        let (requests, per, key) = match (raw.requests_per_second, raw.requests_per_minute) {
            // The quota alone paces.
            (None, None) if quota.is_some() => {
                (f64::INFINITY, Duration::from_secs(1), "requests_per_second")
            }
            (Some(r), None) => (r, Duration::from_secs(1), "requests_per_second"),
            (None, Some(r)) => (r, Duration::from_secs(60), "requests_per_minute"),
            (Some(_), Some(_)) => {
                self.key_error(
                    join(path, "requests_per_minute"),
                    "use either `requests_per_second` or `requests_per_minute`, not both",
                );
                return None;
            }
            (None, None) => {
                self.key_error(
                    path,
                    "needs `requests_per_second`, `requests_per_minute` or `quota`",
                );
                return None;
            }
        };
        let configured = raw.requests_per_second.is_some() || raw.requests_per_minute.is_some();
        if configured && !(requests.is_finite() && requests > 0.0 && requests <= 1_000_000.0) {
            self.error(
                join(path, key),
                "must be a number above 0 and at most 1000000",
            );
            return None;
        }
        let burst = match raw.burst {
            Some(b) => b,
            None if requests.is_finite() => (requests.ceil() as u32).max(1),
            None => DEFAULT_QUOTA_BURST,
        };
        if burst == 0 {
            self.error(join(path, "burst"), "must be at least 1");
            return None;
        }
        if raw.max_in_flight == Some(0) {
            self.error(join(path, "max_in_flight"), "must be at least 1");
            return None;
        }
        let shared = match raw.shared {
            Some(s) => {
                let spath = join(path, "shared");
                let redis =
                    self.redis_target(&spath, s.redis_url, s.redis_cluster, s.redis_sentinel)?;
                let expected_replicas = s.expected_replicas.unwrap_or(DEFAULT_EXPECTED_REPLICAS);
                if expected_replicas == 0 {
                    self.error(join(&spath, "expected_replicas"), "must be at least 1");
                    return None;
                }
                let key_prefix = s
                    .key_prefix
                    .clone()
                    .unwrap_or_else(|| forms::DEFAULT_KEY_PREFIX.to_string());
                if key_prefix.is_empty()
                    || key_prefix.len() > 64
                    || !key_prefix.bytes().all(|b| b.is_ascii_graphic())
                {
                    self.error(
                        join(&spath, "key_prefix"),
                        "must be 1 to 64 printable ASCII characters without spaces",
                    );
                    return None;
                }
                Some(SharedLimit {
                    redis,
                    expected_replicas,
                    key_prefix,
                })
            }
            None => None,
        };
        Some(RateLimit {
            requests,
            per,
            burst,
            max_wait: raw.max_wait.map_or(DEFAULT_MAX_WAIT, |d| d.0),
            max_in_flight: raw.max_in_flight,
            shared,
            quota,
        })
    }

    fn retry(&mut self, path: &str, raw: RawRetry, provider: &PresetDefaults) -> Option<Retry> {
        let max_attempts = raw.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if max_attempts == 0 || max_attempts > 20 {
            self.error(
                join(path, "max_attempts"),
                "must be between 1 (no retries) and 20",
            );
            return None;
        }
        let base_delay = raw.base_delay.map_or(DEFAULT_BASE_DELAY, |d| d.0);
        let max_delay = raw
            .max_delay
            .map_or(DEFAULT_MAX_DELAY.max(base_delay), |d| d.0);
        if base_delay.is_zero() {
            self.error(join(path, "base_delay"), "must be greater than zero");
            return None;
        }
        if max_delay < base_delay {
            self.error(
                join(path, "max_delay"),
                "must not be shorter than `base_delay`",
            );
            return None;
        }
        let on_status = raw
            .on_status
            .unwrap_or_else(|| provider.retry_on_status.to_vec());
        for (i, status) in on_status.iter().enumerate() {
            if !(400..=599).contains(status) {
                self.error(
                    format!("{path}.on_status[{i}]"),
                    format!("{status} is not a 4xx or 5xx status"),
                );
                return None;
            }
        }
        let budget_percent = raw.budget_percent.unwrap_or(DEFAULT_BUDGET_PERCENT);
        if budget_percent > 1000 {
            self.error(join(path, "budget_percent"), "must be between 0 and 1000");
            return None;
        }
        Some(Retry {
            max_attempts,
            base_delay,
            max_delay,
            on_status,
            respect_retry_after: raw.respect_retry_after.unwrap_or(true),
            max_retry_after: raw.max_retry_after.map_or(DEFAULT_MAX_RETRY_AFTER, |d| d.0),
            idempotency_key: raw.idempotency_key.unwrap_or(provider.idempotency_key),
            budget_percent,
            min_retries_per_second: raw
                .min_retries_per_second
                .unwrap_or(DEFAULT_MIN_RETRIES_PER_SECOND),
            max_body_bytes: raw
                .max_body_bytes
                .map_or(DEFAULT_RETRY_MAX_BODY_BYTES, |s| s.0),
        })
    }

    fn webhook(&mut self, path: &str, name: String, raw: RawWebhook) -> Option<Webhook> {
        let scheme = raw.scheme;
        let hook_path = raw.path.clone();
        let path_ok = hook_path.starts_with('/')
            && !hook_path.contains(['?', '#', ' '])
            && !hook_path.split('/').any(|s| s == "." || s == "..");
        if !path_ok {
            self.error(
                join(path, "path"),
                format!("`{hook_path}` must be an absolute path such as /stripe"),
            );
        }
        if raw.secrets.is_empty() {
            self.key_error(path, "needs at least one entry in `secrets`");
        }
        let mut secrets = Vec::new();
        for (i, text) in raw.secrets.iter().enumerate() {
            let spath = format!("{path}.secrets[{i}]");
            if let Some(s) = self.secret(&spath, text) {
                // Scheme-specific shape (SendGrid public key, `whsec_` base64): caught by
                // `check`, not first at start-up.
                if let Err(e) = forms::check_webhook_secret(scheme, &s) {
                    self.error(&spath, e);
                }
                secrets.push(s);
            }
        }
        let forward_to = self.url(&join(path, "forward_to"), &raw.forward_to);
        let only = |v: &mut Self, present: bool, key: &str, allowed: bool, who: &str| {
            if present && !allowed {
                v.key_error(join(path, key), format!("`{key}` applies only to {who}"));
            }
        };
        let is_hmac = scheme == WebhookScheme::Hmac;
        only(
            self,
            raw.header.is_some(),
            "header",
            is_hmac,
            "scheme `hmac`",
        );
        only(
            self,
            raw.prefix.is_some(),
            "prefix",
            is_hmac,
            "scheme `hmac`",
        );
        only(
            self,
            raw.algorithm.is_some(),
            "algorithm",
            is_hmac,
            "scheme `hmac`",
        );
        only(
            self,
            raw.encoding.is_some(),
            "encoding",
            is_hmac,
            "scheme `hmac`",
        );
        only(
            self,
            raw.timestamp_header.is_some(),
            "timestamp_header",
            is_hmac,
            "scheme `hmac`",
        );
        only(
            self,
            raw.public_url.is_some(),
            "public_url",
            scheme == WebhookScheme::Twilio,
            "scheme `twilio`",
        );
        let header = match (&raw.header, is_hmac) {
            (Some(h), _) => match HeaderName::from_bytes(h.as_bytes()) {
                Ok(h) => Some(h),
                Err(_) => {
                    self.error(
                        join(path, "header"),
                        format!("`{h}` is not a valid header name"),
                    );
                    None
                }
            },
            (None, true) => {
                self.key_error(path, "scheme `hmac` needs `header`");
                None
            }
            (None, false) => None,
        };
        let timestamp_header = match &raw.timestamp_header {
            Some(h) => match HeaderName::from_bytes(h.as_bytes()) {
                Ok(h) => Some(h),
                Err(_) => {
                    self.error(
                        join(path, "timestamp_header"),
                        format!("`{h}` is not a valid header name"),
                    );
                    None
                }
            },
            None => None,
        };
        let public_url = match (&raw.public_url, scheme == WebhookScheme::Twilio) {
            (Some(url), _) => {
                if self.url(&join(path, "public_url"), url).is_some() && url.contains('?') {
                    self.error(join(path, "public_url"), "public_url must not include a query string (the request's own is appended)");
                }
                Some(url.clone())
            }
            (None, true) => {
                self.key_error(
                    path,
                    "scheme `twilio` needs `public_url` (the URL Twilio calls)",
                );
                None
            }
            (None, false) => None,
        };
        let max_body_bytes = raw
            .max_body_bytes
            .map_or(DEFAULT_WEBHOOK_MAX_BODY_BYTES, |s| s.0);
        if max_body_bytes == 0 {
            self.error(join(path, "max_body_bytes"), "must be greater than zero");
        }
        let shared = match raw.shared {
            Some(sh) => Some(self.redis_target(
                &join(path, "shared"),
                sh.redis_url,
                sh.redis_cluster,
                sh.redis_sentinel,
            )?),
            None => None,
        };
        Some(Webhook {
            name,
            path: hook_path,
            scheme,
            secrets,
            tolerance: raw.tolerance.map_or(DEFAULT_WEBHOOK_TOLERANCE, |d| d.0),
            max_body_bytes,
            forward_to: forward_to?,
            public_url,
            header,
            prefix: raw.prefix.unwrap_or_default(),
            algorithm: raw.algorithm.unwrap_or(HmacAlgorithm::Sha256),
            encoding: raw.encoding.unwrap_or(SignatureEncoding::Hex),
            timestamp_header,
            shared,
        })
    }
}

impl RawAuth {
    fn present_fields(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut add = |present: bool, name: &'static str| {
            if present {
                out.push(name);
            }
        };
        add(self.token.is_some(), "token");
        add(self.tokens.is_some(), "tokens");
        add(self.username.is_some(), "username");
        add(self.password.is_some(), "password");
        add(self.name.is_some(), "name");
        add(self.value.is_some(), "value");
        add(self.values.is_some(), "values");
        add(self.token_url.is_some(), "token_url");
        add(self.client_id.is_some(), "client_id");
        add(self.client_secret.is_some(), "client_secret");
        add(self.scopes.is_some(), "scopes");
        add(self.audience.is_some(), "audience");
        add(self.client_auth.is_some(), "client_auth");
        add(self.params.is_some(), "params");
        add(self.region.is_some(), "region");
        add(self.service.is_some(), "service");
        add(self.access_key_id.is_some(), "access_key_id");
        add(self.secret_access_key.is_some(), "secret_access_key");
        add(self.session_token.is_some(), "session_token");
        add(self.secret.is_some(), "secret");
        add(self.header.is_some(), "header");
        add(self.prefix.is_some(), "prefix");
        add(self.algorithm.is_some(), "algorithm");
        add(self.encoding.is_some(), "encoding");
        add(self.service_account.is_some(), "service_account");
        add(self.issuer.is_some(), "issuer");
        add(self.subject.is_some(), "subject");
        add(self.private_key.is_some(), "private_key");
        add(self.app_id.is_some(), "app_id");
        add(self.installation_id.is_some(), "installation_id");
        add(self.refresh_token.is_some(), "refresh_token");
        add(self.store.is_some(), "store");
        add(self.client_cert.is_some(), "client_cert");
        add(self.client_key.is_some(), "client_key");
        out
    }
}

fn jwt_key_check(pem: &str) -> Result<(), String> {
    forms::jwt_signing_key(pem).map(drop)
}

/// Route names are the first path segment of a request.
fn is_route_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and the proxy-only ones never forwarded.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    use http::header::*;
    name == CONNECTION
        || name == TE
        || name == TRANSFER_ENCODING
        || name == TRAILER
        || name == UPGRADE
        || name == PROXY_AUTHORIZATION
        || name == PROXY_AUTHENTICATE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}
