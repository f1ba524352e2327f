//! Logging through `tracing`: human-readable by default, JSON lines with `LOG_FORMAT=json`,
//! filtered by `RUST_LOG` (default `info`).

use tracing_subscriber::{EnvFilter, fmt};

/// `LOG_FORMAT=json`: JSON lines instead of text.
pub const LOG_FORMAT: &str = "LOG_FORMAT";

/// The variables logging reads from the process environment (not through
/// [`crate::config::Vars`]), so that a deployment's list of variables can be checked against
/// what the binaries read.
pub const VARS: [&str; 2] = [LOG_FORMAT, EnvFilter::DEFAULT_ENV];

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tower_http=warn,mongodb=warn,lapin=warn"));
    let json = std::env::var(LOG_FORMAT).is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = fmt().with_env_filter(filter).with_target(true);
    let result = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.try_init()
    };
    drop(result);
}
