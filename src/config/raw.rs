//! Stage one of loading: the raw structs serde fills from the YAML (`deny_unknown_fields`,
//! durations and sizes as strings, everything optional that has a default). Stage two,
//! `validate.rs`, turns them into the typed config of `model.rs`.

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) version: u32,
    pub(super) listen: Option<String>,
    pub(super) admin_listen: Option<String>,
    pub(super) webhook_listen: Option<String>,
    pub(super) drain_timeout: Option<Dur>,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) webhook_limits: RawWebhookLimits,
    #[serde(default)]
    pub(super) upstreams: UniqueMap<RawUpstream>,
    #[serde(default)]
    pub(super) webhooks: UniqueMap<RawWebhook>,
    /// Issue 13: the capture ring and the inspector (`capture: {}` = the defaults).
    pub(super) capture: Option<super::capture::RawCapture>,
    pub(super) inspect_listen: Option<String>,
    /// Where cassettes live (one file per upstream); needed by any mode but `live`.
    pub(super) cassette_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_header_bytes: Option<Size>,
    pub(super) header_read_timeout: Option<Dur>,
    pub(super) max_connections: Option<u32>,
    /// Extension: largest request body accepted on the app listener (413 above).
    pub(super) max_body_bytes: Option<Size>,
}

/// Limits of the webhook listener (public: reachable from outside the pod). The three keys it
/// shares with `limits` default to their values there.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhookLimits {
    pub(super) max_header_bytes: Option<Size>,
    pub(super) header_read_timeout: Option<Dur>,
    pub(super) max_connections: Option<u32>,
    pub(super) body_read_timeout: Option<Dur>,
    pub(super) idle_timeout: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) preset: Option<Preset>,
    pub(super) base_url: Option<String>,
    pub(super) auth: Option<RawAuth>,
    #[serde(default)]
    pub(super) headers: UniqueMap<String>,
    pub(super) timeout: Option<Dur>,
    pub(super) attempt_timeout: Option<Dur>,
    pub(super) connect_timeout: Option<Dur>,
    pub(super) rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    pub(super) retry: RawRetry,
    pub(super) circuit_breaker: Option<RawBreaker>,
    pub(super) errors: Option<ErrorMode>,
    pub(super) http: Option<HttpMode>,
    #[serde(default)]
    pub(super) hosts: Vec<String>,
    pub(super) tls: Option<RawTls>,
    /// Issue 13: `live` (default) | `record` | `replay` | `replay_or_record`.
    pub(super) mode: Option<super::capture::Mode>,
    pub(super) cassette: Option<super::capture::RawCassetteOptions>,
    pub(super) graphql: Option<RawGraphql>,
}

/// `graphql: true | false | {path: /graphql}`.
#[derive(Debug)]
pub(super) enum RawGraphql {
    On(bool),
    Path(RawGraphqlPath),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGraphqlPath {
    pub(super) path: String,
}

impl<'de> Deserialize<'de> for RawGraphql {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawGraphql;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`true`, `false` or `{path: /graphql}`")
            }
            fn visit_bool<E>(self, v: bool) -> Result<RawGraphql, E> {
                Ok(RawGraphql::On(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawGraphql, A::Error> {
                RawGraphqlPath::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawGraphql::Path)
            }
        }
        d.deserialize_any(V)
    }
}

/// `rate_limit.quota`: a signal, or `off` to drop a preset's.
#[derive(Debug, Clone, Copy)]
pub(super) enum RawQuota {
    Signal(QuotaSignal),
    Off,
}

impl<'de> Deserialize<'de> for RawQuota {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ok(match text.as_str() {
            "x-ratelimit" => RawQuota::Signal(QuotaSignal::XRateLimit),
            "shopify" => RawQuota::Signal(QuotaSignal::Shopify),
            "hubspot" => RawQuota::Signal(QuotaSignal::Hubspot),
            "salesforce" => RawQuota::Signal(QuotaSignal::Salesforce),
            "ietf" => RawQuota::Signal(QuotaSignal::Ietf),
            "off" => RawQuota::Off,
            _ => {
                return Err(serde::de::Error::custom(
                    "unknown quota signal: expected x-ratelimit, shopify, hubspot, salesforce, ietf or off",
                ))
            }
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    #[serde(rename = "type")]
    pub(super) kind: Option<AuthType>,
    pub(super) token: Option<String>,
    pub(super) tokens: Option<Vec<String>>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) name: Option<String>,
    pub(super) value: Option<String>,
    pub(super) values: Option<Vec<String>>,
    pub(super) token_url: Option<String>,
    pub(super) client_id: Option<String>,
    pub(super) client_secret: Option<String>,
    pub(super) scopes: Option<Vec<String>>,
    pub(super) audience: Option<String>,
    pub(super) client_auth: Option<ClientAuth>,
    pub(super) params: Option<UniqueMap<String>>,
    pub(super) region: Option<String>,
    pub(super) service: Option<String>,
    pub(super) access_key_id: Option<String>,
    pub(super) secret_access_key: Option<String>,
    pub(super) session_token: Option<String>,
    pub(super) secret: Option<String>,
    pub(super) header: Option<String>,
    pub(super) prefix: Option<String>,
    pub(super) algorithm: Option<HmacAlgorithm>,
    pub(super) encoding: Option<SignatureEncoding>,
    pub(super) service_account: Option<String>,
    pub(super) issuer: Option<String>,
    pub(super) subject: Option<String>,
    pub(super) private_key: Option<String>,
    pub(super) app_id: Option<Scalar>,
    pub(super) installation_id: Option<Scalar>,
    pub(super) refresh_token: Option<String>,
    pub(super) store: Option<RawTokenStore>,
    pub(super) client_cert: Option<String>,
    pub(super) client_key: Option<String>,
}

/// A YAML scalar that may be written as a string or a number (`app_id: 12345`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Scalar {
    Text(String),
    Number(u64),
}

impl Scalar {
    pub(super) fn text(&self) -> String {
        match self {
            Scalar::Text(t) => t.clone(),
            Scalar::Number(n) => n.to_string(),
        }
    }
}

/// `auth.store` of `oauth2_refresh_token`: where rotated refresh tokens are kept.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTokenStore {
    pub(super) file: Option<PathBuf>,
    pub(super) redis_url: Option<String>,
    pub(super) redis_cluster: Option<Vec<String>>,
    pub(super) redis_sentinel: Option<RawSentinel>,
    /// The Redis key's name inside its hash tag (default: the upstream's name).
    pub(super) key: Option<String>,
}

/// `redis_sentinel`: the master's name as the sentinels know it, and the sentinels.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSentinel {
    pub(super) master: String,
    pub(super) nodes: Vec<String>,
    /// Password of the master (and its replicas); the sentinels' own is in their URLs.
    pub(super) password: Option<String>,
}

/// A webhook's `shared`: where its replay guard is kept.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhookShared {
    pub(super) redis_url: Option<String>,
    pub(super) redis_cluster: Option<Vec<String>>,
    pub(super) redis_sentinel: Option<RawSentinel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    pub(super) requests_per_second: Option<f64>,
    pub(super) requests_per_minute: Option<f64>,
    pub(super) burst: Option<u32>,
    pub(super) max_wait: Option<Dur>,
    pub(super) max_in_flight: Option<u32>,
    pub(super) shared: Option<RawShared>,
    pub(super) quota: Option<RawQuota>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShared {
    pub(super) redis_url: Option<String>,
    pub(super) redis_cluster: Option<Vec<String>>,
    pub(super) redis_sentinel: Option<RawSentinel>,
    /// When Redis is unreachable each replica limits itself to `rate / expected_replicas`.
    pub(super) expected_replicas: Option<u32>,
    /// Prefix of the Redis keys (default `outpost:rl:`): lets several deployments share one
    /// Redis without sharing budgets, or deliberately share one under a common prefix.
    pub(super) key_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    pub(super) max_attempts: Option<u32>,
    pub(super) base_delay: Option<Dur>,
    pub(super) max_delay: Option<Dur>,
    pub(super) on_status: Option<Vec<u16>>,
    pub(super) respect_retry_after: Option<bool>,
    pub(super) max_retry_after: Option<Dur>,
    pub(super) idempotency_key: Option<IdempotencyKeyMode>,
    pub(super) budget_percent: Option<u32>,
    pub(super) min_retries_per_second: Option<u32>,
    pub(super) max_body_bytes: Option<Size>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBreaker {
    pub(super) consecutive_failures: Option<u32>,
    pub(super) open_for: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    pub(super) path: String,
    pub(super) scheme: WebhookScheme,
    #[serde(default)]
    pub(super) secrets: Vec<String>,
    pub(super) tolerance: Option<Dur>,
    pub(super) max_body_bytes: Option<Size>,
    pub(super) forward_to: String,
    pub(super) public_url: Option<String>,
    pub(super) header: Option<String>,
    pub(super) prefix: Option<String>,
    pub(super) algorithm: Option<HmacAlgorithm>,
    pub(super) encoding: Option<SignatureEncoding>,
    pub(super) timestamp_header: Option<String>,
    pub(super) shared: Option<RawWebhookShared>,
}

/// A YAML mapping that keeps its order and rejects duplicate keys (serde's maps keep the last).
#[derive(Debug)]
pub struct UniqueMap<V>(pub Vec<(String, V)>);

impl<V> Default for UniqueMap<V> {
    fn default() -> Self {
        UniqueMap(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V2<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V2<V> {
            type Value = UniqueMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(UniqueMap(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(String, V)> = Vec::new();
                // A set, not a scan of `out`: 60 000 upstreams must not take 60 000² steps.
                let mut seen: HashSet<String> = HashSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(serde::de::Error::custom(format!("duplicate key `{key}`")));
                    }
                    let value = map.next_value()?;
                    out.push((key, value));
                }
                Ok(UniqueMap(out))
            }
        }
        d.deserialize_any(V2(PhantomData))
    }
}
