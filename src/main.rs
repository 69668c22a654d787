//! The `braid` binary: parses the command line, loads the configuration, and runs the chosen command.

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use braid::cli_client::CliClient;
use braid::config::{Config, ServeArgs};
use braid::server::{Server, StartOptions};

/// braid: a DTM-compatible distributed transaction manager.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default command).
    Serve(ServeArgs),
    /// Create or upgrade the store schema, then exit.
    Migrate(ServeArgs),
    /// Print the TransactionPolicy CustomResourceDefinition as YAML (`braid crd | kubectl apply -f -`).
    Crd,
    /// Show a transaction and its branches (asks a running server).
    Query {
        /// The global transaction id.
        gid: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List transactions, newest first (asks a running server).
    List {
        /// Only this status (prepared, submitted, aborting, succeed, failed).
        #[arg(long)]
        status: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Continue after this position (the `next_position` of the previous page).
        #[arg(long)]
        position: Option<String>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Mark an unfinished transaction failed without calling its branches (use with caution).
    ForceStop {
        /// The global transaction id.
        gid: String,
        #[command(flatten)]
        server: ServerArg,
    },
}

/// Which server the admin commands talk to.
#[derive(Debug, clap::Args)]
struct ServerArg {
    /// Base URL of a running braid server.
    #[arg(long, env = "BRAID_SERVER", default_value = "http://127.0.0.1:36789")]
    server: String,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("braid: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("braid: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs an admin command and prints the server's answer as pretty JSON.
async fn admin(command: Command) -> anyhow::Result<()> {
    let answer = match command {
        Command::Query { gid, server } => CliClient::new(&server.server)?.query(&gid).await?,
        Command::List {
            status,
            limit,
            position,
            server,
        } => {
            CliClient::new(&server.server)?
                .list(status.as_deref(), limit, position.as_deref())
                .await?
        }
        Command::ForceStop { gid, server } => {
            CliClient::new(&server.server)?.force_stop(&gid).await?
        }
        Command::Serve(_) | Command::Migrate(_) | Command::Crd => {
            anyhow::bail!("not an admin command")
        }
    };
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let (command, args) = match cli.command {
        None => ("serve", cli.serve),
        Some(Command::Serve(a)) => ("serve", a),
        Some(Command::Migrate(a)) => ("migrate", a),
        Some(Command::Crd) => {
            let yaml = braid::kube::policy::crd_yaml().context("rendering the CRD")?;
            print!("{yaml}");
            return Ok(());
        }
        Some(other) => return admin(other).await,
    };
    let config = Config::load(&args)?;
    braid::telemetry::init(&config.log.level, config.log.format)?;
    match command {
        "migrate" => {
            let cancel = tokio_util::sync::CancellationToken::new();
            let store = braid::server::open_store(&config.store_dsn(), &cancel).await?;
            tracing::info!(kind = store.kind(), "migrations applied");
            Ok(())
        }
        _ => {
            let server = Server::start(&config, StartOptions::default())
                .await
                .context("starting the server")?;
            let cancel = server.cancel_token();
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("shutdown requested");
                cancel.cancel();
            });
            server.run_until_stopped().await;
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
