//! `outpost demo`: two mock upstreams (Stripe-like and SendGrid-like) on 127.0.0.1 and the
//! proxy in front of them, with an embedded config. Needs no network and no user secrets: the
//! demo keys below are the mocks' own test keys, injected by the proxy like real ones.

use std::net::SocketAddr;
use std::path::Path;

use tokio::net::TcpListener;

use crate::app::App;
use crate::config;
use crate::mock::{self, MockOptions, Profile};

const DEMO_STRIPE_KEY: &str = "sk_test_outpost_demo";
const DEMO_SENDGRID_KEY: &str = "SG.outpost_demo";

/// The demo's config; `{stripe}`, `{sendgrid}`, `{listen}` and `{admin}` are filled in at start.
const DEMO_CONFIG: &str = r#"
version: 1
listen: {listen}
admin_listen: {admin}
drain_timeout: 2s
upstreams:
  stripe:
    preset: stripe
    base_url: http://{stripe}
    auth: { token: sk_test_outpost_demo }
    headers: { Stripe-Version: "2024-06-20" }
    timeout: 10s
  sendgrid:
    preset: sendgrid
    base_url: http://{sendgrid}
    auth: { token: SG.outpost_demo }
"#;

async fn bind_or_any(preferred: SocketAddr) -> std::io::Result<TcpListener> {
    match TcpListener::bind(preferred).await {
        Ok(l) => Ok(l),
        Err(_) => TcpListener::bind(SocketAddr::new(preferred.ip(), 0)).await,
    }
}

pub async fn run(
    listen: SocketAddr,
    admin: SocketAddr,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut mocks = Vec::new();
    for (profile, key) in [
        (Profile::Stripe, DEMO_STRIPE_KEY),
        (Profile::Sendgrid, DEMO_SENDGRID_KEY),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut opts = MockOptions::new(profile);
        opts.api_key = Some(key.to_string());
        let mut rx = stop_rx.clone();
        tokio::spawn(mock::serve(listener, opts, async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
        mocks.push(addr);
    }
    // Probe the preferred ports so a busy 8080 falls back to a free one.
    let app_port = bind_or_any(listen).await?.local_addr()?;
    let admin_port = bind_or_any(admin).await?.local_addr()?;
    let text = DEMO_CONFIG
        .replace("{stripe}", &mocks[0].to_string())
        .replace("{sendgrid}", &mocks[1].to_string())
        .replace("{listen}", &app_port.to_string())
        .replace("{admin}", &admin_port.to_string());
    let config = config::load_str(&text, Path::new("<demo>/proxy.yaml"))?;
    let app = App::start(config).await?;
    let p = app.app_addr;
    let a = app.admin_addr;
    println!(
        r#"Outpost demo is running.
  proxy   http://{p}      (Stripe-like mock at {stripe}, SendGrid-like mock at {sendgrid})
  admin   http://{a}/metrics

The application holds no key: Outpost injects the mocks' test keys. Try:

  curl -s http://{p}/stripe/v1/customers -d email=jenny@example.com -d name=Jenny
  curl -s http://{p}/stripe/v1/customers
  curl -s http://{p}/stripe/v1/charges -d amount=2000 -d currency=usd -d source=tok_visa
  curl -si http://{p}/sendgrid/v3/mail/send -H 'content-type: application/json' \
    -d '{{"personalizations":[{{"to":[{{"email":"a@example.com"}}]}}],"from":{{"email":"b@example.com"}},"subject":"hi","content":[{{"type":"text/plain","value":"hello"}}]}}'
  curl -si http://{p}/stripe/v1/customers -H 'X-Mock-Fault: status=503'     # upstream error, passed through
  curl -si http://{p}/nope/v1/x                                              # unknown_upstream JSON error
  curl -s  http://{a}/metrics | grep outpost_requests_total

Press Ctrl-C to stop."#,
        stripe = mocks[0],
        sendgrid = mocks[1],
    );
    let _ = tokio::signal::ctrl_c().await;
    app.shutdown().await;
    let _ = stop_tx.send(true);
    Ok(())
}
