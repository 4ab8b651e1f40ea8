//! The `outpost` command line: a thin layer over the library (see `lib.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// jemalloc instead of the C library's allocator: glibc keeps what a burst freed in its
/// per-thread arenas (1 000 stalled 1 MiB downloads left ~58 MiB resident for good), and musl's
/// allocator, in the static image, is slow under a multi-threaded load. Its options are built
/// in (`JEMALLOC_SYS_WITH_MALLOC_CONF` in `.cargo/config.toml` and `deploy/Dockerfile`): a
/// background thread returns freed pages to the OS after about a second, also when the
/// process then goes idle.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Outpost: the outbound-API sidecar. Your application calls
/// http://127.0.0.1:8080/<upstream>/<path> with no secret; Outpost forwards to the configured
/// third-party API with the credentials injected, rate limits, retries safely and exports metrics.
#[derive(Parser)]
#[command(name = "outpost", version, about, long_about = None, after_help = "Start with `outpost demo`, then write a proxy.yaml and run `outpost check`.")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Args, Clone)]
struct ConfigArg {
    /// Config file [default: $OUTPOST_CONFIG, then ./proxy.yaml]
    #[arg(
        short = 'c',
        long = "config",
        env = "OUTPOST_CONFIG",
        global = true,
        value_name = "FILE"
    )]
    file: Option<PathBuf>,
}

impl ConfigArg {
    fn path(&self) -> PathBuf {
        self.file
            .clone()
            .unwrap_or_else(|| PathBuf::from("proxy.yaml"))
    }
}

#[derive(Args, Default)]
struct RunArgs {
    /// Record every upstream's answers into cassettes in DIR (mode: record for all)
    #[arg(long, value_name = "DIR", conflicts_with = "replay")]
    record: Option<PathBuf>,
    /// Answer every upstream call from the cassettes in DIR, never the network (mode: replay)
    #[arg(long, value_name = "DIR")]
    replay: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default): app listener, admin listener (/metrics /healthz /readyz), webhooks.
    /// SIGTERM drains in-flight requests and exits 0; SIGHUP reloads the config.
    Run(RunArgs),
    /// Validate the config and that every secret resolves (never printing one); print the
    /// integration summary. Exit 0 when valid, 1 with `file:line:col: message` errors.
    Check,
    /// Run the proxy in front of built-in Stripe-like and SendGrid-like mocks on 127.0.0.1,
    /// with no secrets and no network needed, and print curl commands to try.
    Demo {
        /// Proxy listen address (a free port is used if it is busy).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Admin listen address (a free port is used if it is busy).
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: SocketAddr,
    },
    /// Run one mock upstream alone (for demos and your own tests).
    Mock(outpost::mock::MockArgs),
    /// Sign a webhook body as a provider would, or verify a captured delivery.
    Webhook {
        #[command(subcommand)]
        command: outpost::webhook::cli::WebhookCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _log_guard = outpost::telemetry::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outpost: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Run(RunArgs::default())) {
            Command::Run(args) => {
                use outpost::capture::Mode;
                match (args.record, args.replay) {
                    (Some(dir), _) => outpost::config::set_mode_override(Mode::Record, dir),
                    (None, Some(dir)) => outpost::config::set_mode_override(Mode::Replay, dir),
                    (None, None) => {}
                }
                outpost::app::run(&cli.config.path()).await
            }
            Command::Check => check(&cli.config.path()),
            Command::Demo { listen, admin } => report(outpost::demo::run(listen, admin).await),
            Command::Mock(args) => report(outpost::mock::run(args).await),
            Command::Webhook { command } => outpost::webhook::cli::run(command),
        }
    });
    ExitCode::from(code as u8)
}

fn check(path: &std::path::Path) -> i32 {
    match outpost::config::load(path) {
        Ok(config) => {
            print!("{}", outpost::check::summary(&config));
            0
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: invalid ({} error{})",
                path.display(),
                errors.0.len(),
                if errors.0.len() == 1 { "" } else { "s" }
            );
            1
        }
    }
}

fn report(result: Result<(), Box<dyn std::error::Error + Send + Sync>>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("outpost: {e}");
            1
        }
    }
}
