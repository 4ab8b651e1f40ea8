//! `outpost webhook sign` and `outpost webhook verify`: the schemes of this module on the
//! command line, for testing receivers and checking captured deliveries.
//!
//! Secrets may be given literally or as `${env:NAME}` / `${file:/path}` references (resolved
//! like the config's, so the key need not appear in `ps` or the shell history).

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::{now_unix, provider_headers, SignInput, Spec, Verifier};
use crate::config::{HmacAlgorithm, Secret, SecretTemplate, SignatureEncoding, WebhookScheme};

#[derive(Subcommand)]
pub enum WebhookCommand {
    /// Print the signature header lines (`Name: value`) a provider would send with the body read
    /// from stdin. Use them to test your own receiver, or Outpost's.
    #[command(after_help = SIGN_HELP)]
    Sign(SignArgs),
    /// Check a captured delivery: body on stdin, headers with -H. Exit 0 and print `valid`, or
    /// exit 1 with the reason (2 for a usage error).
    #[command(after_help = VERIFY_HELP)]
    Verify(VerifyArgs),
}

const SIGN_HELP: &str = "\
Secrets: stripe `whsec_…` as is; standard_webhooks `whsec_<base64>`; sendgrid a P-256 private key
as base64 DER PKCS#8 or PEM (the matching verification key is printed on stderr); others the
secret text. `${env:NAME}` and `${file:/path}` are resolved.

Examples:
  printf '%s' '{\"id\":\"evt_1\"}' | outpost webhook sign --scheme stripe --secret whsec_test
  outpost webhook sign --scheme twilio --secret \"$TOKEN\" --url 'https://example.com/sms?x=1' < form.txt
  outpost webhook sign --scheme hmac --header X-Signature --prefix sha256= --secret k < body.json";

const VERIFY_HELP: &str = "\
Secrets: as for `sign`, except sendgrid takes the verification (public) key, base64 DER
SubjectPublicKeyInfo as SendGrid shows it. Give --secret several times to try each (rotation).

Example:
  outpost webhook verify --scheme github --secret \"$SECRET\" \\
      -H 'X-Hub-Signature-256: sha256=757107…' < body.json";

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SchemeArg {
    Stripe,
    Github,
    #[value(
        name = "standard_webhooks",
        alias = "standard-webhooks",
        alias = "svix"
    )]
    StandardWebhooks,
    Slack,
    Shopify,
    Twilio,
    Sendgrid,
    Hmac,
}

impl From<SchemeArg> for WebhookScheme {
    fn from(s: SchemeArg) -> Self {
        match s {
            SchemeArg::Stripe => WebhookScheme::Stripe,
            SchemeArg::Github => WebhookScheme::Github,
            SchemeArg::StandardWebhooks => WebhookScheme::StandardWebhooks,
            SchemeArg::Slack => WebhookScheme::Slack,
            SchemeArg::Shopify => WebhookScheme::Shopify,
            SchemeArg::Twilio => WebhookScheme::Twilio,
            SchemeArg::Sendgrid => WebhookScheme::Sendgrid,
            SchemeArg::Hmac => WebhookScheme::Hmac,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum AlgorithmArg {
    Sha1,
    Sha256,
    Sha512,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum EncodingArg {
    Hex,
    Base64,
}

/// Options of the generic `hmac` scheme.
#[derive(Args, Debug)]
pub struct HmacArgs {
    /// hmac: the signature header name, e.g. X-Signature.
    #[arg(long, value_name = "NAME")]
    header: Option<String>,
    /// hmac: text before the encoded MAC, e.g. `sha256=`.
    #[arg(long, default_value = "")]
    prefix: String,
    /// hmac: MAC algorithm.
    #[arg(long, value_enum, default_value = "sha256")]
    algorithm: AlgorithmArg,
    /// hmac: MAC encoding.
    #[arg(long, value_enum, default_value = "hex")]
    encoding: EncodingArg,
    /// hmac: header carrying a Unix timestamp; the signed bytes are then "{timestamp}.{body}".
    #[arg(long, value_name = "NAME")]
    timestamp_header: Option<String>,
}

#[derive(Args, Debug)]
pub struct SignArgs {
    /// The provider's signature scheme.
    #[arg(long, value_enum)]
    scheme: SchemeArg,
    /// Signing secret (or `${env:NAME}` / `${file:/path}`).
    #[arg(long)]
    secret: String,
    /// Unix timestamp to sign [default: now].
    #[arg(long)]
    timestamp: Option<i64>,
    /// Delivery id: standard_webhooks `webhook-id` [default: msg_<uuid>]; github
    /// `X-GitHub-Delivery`; shopify `X-Shopify-Webhook-Id`.
    #[arg(long)]
    id: Option<String>,
    /// twilio: the full URL Twilio calls, query string included.
    #[arg(long)]
    url: Option<String>,
    /// twilio: sign a JSON body the way Twilio does (bodySHA256 added to --url, which is
    /// printed on stderr).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    hmac: HmacArgs,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The provider's signature scheme.
    #[arg(long, value_enum)]
    scheme: SchemeArg,
    /// Secret to try; repeat for several (or `${env:NAME}` / `${file:/path}`).
    #[arg(long, required = true)]
    secret: Vec<String>,
    /// A request header as captured, `Name: value`; repeat for each.
    #[arg(short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// twilio: the full URL Twilio called, query string included.
    #[arg(long)]
    url: Option<String>,
    /// Timestamp tolerance, both directions (e.g. 5m, 300s), or `off` for old captures.
    #[arg(long, default_value = "5m", value_parser = parse_tolerance)]
    tolerance: Tolerance,
    #[command(flatten)]
    hmac: HmacArgs,
}

#[derive(Clone, Copy, Debug)]
pub struct Tolerance(Option<Duration>);

fn parse_tolerance(s: &str) -> Result<Tolerance, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Tolerance(None));
    }
    crate::config::units::parse_duration(s).map(|d| Tolerance(Some(d)))
}

/// Run a `webhook` subcommand; returns the exit code.
pub fn run(command: WebhookCommand) -> i32 {
    let mut body = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut body) {
        eprintln!("outpost: cannot read the body from stdin: {e}");
        return 2;
    }
    let result = match command {
        WebhookCommand::Sign(args) => sign(args, &body),
        WebhookCommand::Verify(args) => verify(args, &body),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("outpost: {e}");
            2
        }
    }
}

fn resolve(text: &str) -> Result<Secret, String> {
    SecretTemplate::parse(text)
        .and_then(|t| t.resolve(Path::new(".")))
        .map_err(|e| format!("--secret: {e}"))
}

fn spec(scheme: SchemeArg, secrets: &[String], hmac: &HmacArgs) -> Result<Spec, String> {
    let scheme = WebhookScheme::from(scheme);
    let secrets = secrets
        .iter()
        .map(|s| resolve(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut spec = Spec::new(scheme, secrets);
    let name = |flag: &str, text: &str| {
        HeaderName::from_bytes(text.as_bytes())
            .map_err(|_| format!("{flag}: `{text}` is not a header name"))
    };
    spec.header = hmac
        .header
        .as_deref()
        .map(|h| name("--header", h))
        .transpose()?;
    spec.timestamp_header = hmac
        .timestamp_header
        .as_deref()
        .map(|h| name("--timestamp-header", h))
        .transpose()?;
    spec.prefix = hmac.prefix.clone();
    spec.algorithm = match hmac.algorithm {
        AlgorithmArg::Sha1 => HmacAlgorithm::Sha1,
        AlgorithmArg::Sha256 => HmacAlgorithm::Sha256,
        AlgorithmArg::Sha512 => HmacAlgorithm::Sha512,
    };
    spec.encoding = match hmac.encoding {
        EncodingArg::Hex => SignatureEncoding::Hex,
        EncodingArg::Base64 => SignatureEncoding::Base64,
    };
    if scheme == WebhookScheme::Hmac && spec.header.is_none() {
        return Err("scheme hmac needs --header NAME".into());
    }
    Ok(spec)
}

fn sign(args: SignArgs, body: &[u8]) -> Result<i32, String> {
    let spec = spec(args.scheme, std::slice::from_ref(&args.secret), &args.hmac)?;
    let mut url = args.url.clone();
    if args.json {
        let base = url.as_deref().ok_or("--json needs --url")?;
        let with_hash = super::twilio::url_with_body_hash(base, body);
        eprintln!("url: {with_hash}");
        url = Some(with_hash);
    }
    let input = SignInput {
        body,
        timestamp: args.timestamp.unwrap_or_else(now_unix),
        id: args.id.as_deref(),
        url: url.as_deref(),
    };
    let lines = provider_headers(&spec, &input)?;
    if spec.scheme == WebhookScheme::Sendgrid {
        if let Ok(public) = super::sendgrid::public_key_of(spec.secrets[0].expose()) {
            eprintln!("verification key: {public}");
        }
    }
    let mut out = std::io::stdout().lock();
    for (name, value) in lines {
        writeln!(out, "{name}: {value}").map_err(|e| e.to_string())?;
    }
    Ok(0)
}

fn verify(args: VerifyArgs, body: &[u8]) -> Result<i32, String> {
    let mut spec = spec(args.scheme, &args.secret, &args.hmac)?;
    spec.tolerance = args.tolerance.0;
    let (public_url, query) = match args.url.as_deref() {
        Some(url) => match url.split_once('?') {
            Some((base, q)) => (Some(base.to_string()), Some(q.to_string())),
            None => (Some(url.to_string()), None),
        },
        None => (None, None),
    };
    if spec.scheme == WebhookScheme::Twilio && public_url.is_none() {
        return Err("scheme twilio needs --url (the full URL Twilio called)".into());
    }
    spec.public_url = public_url;
    let mut headers = HeaderMap::new();
    for line in &args.headers {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("-H `{line}`: expected `Name: value`"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("-H: `{}` is not a header name", name.trim()))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("-H {name}: the value is not valid in a header"))?;
        headers.append(name, value);
    }
    let verifier = Verifier::new(spec)?;
    match verifier.verify(&headers, body, query.as_deref(), now_unix()) {
        Ok(_) => {
            println!("valid");
            Ok(0)
        }
        Err(rejection) => {
            eprintln!("invalid: {rejection} ({})", rejection.kind());
            Ok(1)
        }
    }
}
