//! The shape every service binary shares: logging, `--help`, configuration from the environment
//! (exit code 2 with the offending variable named), then run and report.

use std::{future::Future, process::ExitCode};

use crate::config::{ConfigError, Env, Vars};

/// Runs a service binary: `parse` reads its configuration, `run` serves with it.
pub async fn main<C, Fut>(
    service: &str,
    help: &str,
    parse: impl FnOnce(&Vars<Env>) -> Result<C, ConfigError>,
    run: impl FnOnce(C) -> Fut,
) -> ExitCode
where
    Fut: Future<Output = anyhow::Result<()>>,
{
    crate::telemetry::init();
    if std::env::args()
        .nth(1)
        .is_some_and(|a| a == "--help" || a == "-h")
    {
        println!("{service}: {help}");
        return ExitCode::SUCCESS;
    }
    let config = match parse(&Vars(Env)) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("invalid configuration: {e}");
            eprintln!("{service}: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("{service}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
