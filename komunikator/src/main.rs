//! The `komunikator` binary: parses the command line into a [`plan::Plan`]
//! (the adapters and the services of this process), installs logging and
//! the signal handler, and hands the plan to [`services::serve`]. A
//! subcommand is a list of services: one, or all of them.

mod cli;
mod infra;
mod plan;
mod services;

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use cli::{Cli, Command, MigrateCmd};
use common::adapters::store::{Store, StoreSettings};
use common::support::problems::Problems;
use plan::Failure;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let (cli, matches) = parse(std::env::args_os().collect());
    let command = cli
        .command
        .unwrap_or_else(|| unreachable!("parse() defaults to `all`"));
    let mut problems = Problems::default();
    let traces = common::telemetry::logs::init_tracing(&cli.log, command.name())
        .map_err(|problem| problems.push(problem))
        .unwrap_or_default();
    cli::check_secrets_from_env(&matches, &mut problems);
    if let Err(report) = problems.into_result() {
        eprintln!("komunikator: {report}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("komunikator: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    runtime.spawn(cancel_on_signal(shutdown.clone()));
    let result = match command {
        Command::Api(cmd) => cmd.plan().map(Some),
        Command::Gateway(cmd) => cmd.plan().map(Some),
        Command::Persister(cmd) => cmd.plan().map(Some),
        Command::Presence(cmd) => cmd.plan().map(Some),
        Command::All(cmd) => cmd.plan().map(Some),
        Command::Migrate(cmd) => runtime.block_on(migrate(cmd)).map(|()| None),
    }
    .and_then(|plan| match plan {
        Some(plan) => runtime.block_on(services::serve(plan, shutdown)),
        None => Ok(()),
    });
    // The spans of tasks still running end here; then what is buffered is
    // exported (outside the runtime: the exporter's client blocks).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    traces.shutdown();
    exit(result)
}

/// The exit code of a run: 2 for a configuration problem, 1 for a failure.
fn exit(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(report)) => {
            eprintln!("komunikator: {report}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            tracing::error!(error = causes(&e), "komunikator stopped with an error");
            ExitCode::FAILURE
        }
    }
}

/// `komunikator migrate`: applies the migrations and checks the result.
async fn migrate(cmd: MigrateCmd) -> Result<(), Failure> {
    let (settings, data_dir) = cmd.store()?;
    if matches!(settings, StoreSettings::Sqlite { .. }) {
        common::support::data_dir::private_dir(&data_dir).context("creating the data directory")?;
    }
    let store = Store::connect(&settings)
        .await
        .with_context(|| format!("opening the store ({settings:?})"))?;
    store.migrate().await.context("migrating the database")?;
    store
        .check_schema()
        .await
        .context("checking the migrated schema")?;
    tracing::info!(store = ?settings, "database migrated");
    Ok(())
}

/// The error and its causes, each said once (many errors repeat their source
/// in their own message).
fn causes(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain().map(ToString::to_string) {
        if !out.contains(&cause) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&cause);
        }
    }
    out
}

/// Parses the arguments; no subcommand means `all`.
fn parse(mut args: Vec<OsString>) -> (Cli, clap::ArgMatches) {
    let matches = Cli::command().get_matches_from(args.clone());
    if matches.subcommand().is_none() {
        args.insert(1.min(args.len()), "all".into());
        return parse(args);
    }
    match Cli::from_arg_matches(&matches) {
        Ok(cli) => (cli, matches),
        Err(e) => e.exit(),
    }
}

/// Cancels `shutdown` on SIGINT or SIGTERM: services stop accepting, finish
/// what is in flight, and the process exits.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
    shutdown.cancel();
}
