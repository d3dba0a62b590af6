//! `calldesk`: the server (`calldesk serve`), the client subcommands (`calldesk call`, `watch`,
//! ...; see `calldesk::client`) and `calldesk token` to mint bearer tokens.

use std::{
    io::{IsTerminal, Read},
    process::ExitCode,
};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use sha2::{Digest, Sha256};

/// The most each library that logs what may not reach the logs may log, whatever RUST_LOG
/// says: the SIP stack (rsipstack) logs whole messages (SDP bodies, Authorization headers)
/// below WARN; the PostgreSQL client (tokio-postgres) logs every statement's parameters at
/// DEBUG (a call's stored dialogs with their SDP, events with `custom_fields`, secrets).
const LOG_CAPS: [&str; 2] = ["rsipstack=warn", "tokio_postgres=info"];

/// Start outbound calls for contact-center agents and follow each call through its life.
#[derive(Debug, Parser)]
#[command(name = "calldesk", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the calldesk gRPC server.
    Serve(Box<calldesk::server::config::Config>),
    /// Print a new random bearer token for an agent and the line to add to --auth-tokens.
    Token(TokenArgs),
    /// Measure a running server: StartCall beside Health/Check, or watch fan-out.
    Bench(Box<calldesk::client::bench::BenchArgs>),
    #[command(flatten)]
    Client(Box<calldesk::client::Command>),
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// The agent the token names.
    #[arg(value_name = "AGENT_ID")]
    agent_id: String,
}

/// Threads for blocking work: store reads (at most 4 at once, store/sqlite), start-up checks,
/// shutdown. Tokio's default of 512 let a busy server keep 60 to 500 of them (a thread that
/// has just finished is not yet idle when the next read comes, so another is made), each with
/// its stack and malloc arena: RSS grew with call volume (BENCHMARKS.md, memory).
const BLOCKING_THREADS: usize = 16;

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("calldesk: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let (Command::Serve(config), Some(("serve", serve))) =
        (&mut cli.command, matches.subcommand())
    {
        // Again through Config, which notes the flags the user gave (not defaulted).
        match calldesk::server::config::Config::from_matches(serve) {
            Ok(noted) => **config = noted,
            Err(e) => e.exit(),
        }
    }
    match cli.command {
        Command::Serve(config) => serve(*config).await,
        Command::Token(args) => token(&args.agent_id),
        Command::Bench(args) => match calldesk::client::bench::run(*args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Client(command) => {
            let json = command.options().json;
            match calldesk::client::run(*command).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    if json {
                        println!("{}", e.to_json());
                    }
                    eprintln!("error: {e}");
                    ExitCode::from(e.exit_code() as u8)
                }
            }
        }
    }
}

async fn serve(config: calldesk::server::config::Config) -> ExitCode {
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, Layer};
    let filter = LOG_CAPS.iter().fold(
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        |filter, cap| filter.add_directive(cap.parse().expect("a valid directive")),
    );
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // The filter is the log's own (not global): the OTLP exporter sees the spans it needs
    // whatever RUST_LOG says, and the logs do not pay for spans only the exporter wants.
    let logs = match config.log_format {
        calldesk::server::config::LogFormat::Json => logs.json().with_filter(filter).boxed(),
        // No colour codes in log files and journald.
        calldesk::server::config::LogFormat::Text => logs
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
            .boxed(),
    };
    let exporter = match config.otlp_endpoint.as_deref() {
        None => None,
        Some(endpoint) => match calldesk::server::otlp::Exporter::start(endpoint) {
            Ok(exporter) => Some(exporter),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(exporter.as_ref().map(|exporter| exporter.layer()))
        .init();
    let outcome = calldesk::server::serve(config).await;
    if let Some(exporter) = exporter {
        // Off the runtime's worker: the provider waits (a second at most) for the last batch.
        let _ = tokio::task::spawn_blocking(move || exporter.shutdown()).await;
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `calldesk token AGENT_ID`: 32 random bytes from the OS as 64 hex digits; the file line is
/// `AGENT_ID SHA256_HEX` of the token's text.
fn token(agent_id: &str) -> ExitCode {
    if agent_id.is_empty() || agent_id.chars().any(|c| c.is_whitespace() || c == '#') {
        eprintln!("error: AGENT_ID must be non-empty, without spaces or '#'");
        return ExitCode::from(2);
    }
    let mut bytes = [0u8; 32];
    if let Err(e) = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)) {
        eprintln!("error: cannot read random bytes: {e}");
        return ExitCode::FAILURE;
    }
    let token = hex(&bytes);
    let hash = hex(&Sha256::digest(token.as_bytes()));
    println!("token: {token}");
    println!("add to the --auth-tokens file:");
    println!("{agent_id} {hash}");
    ExitCode::SUCCESS
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
