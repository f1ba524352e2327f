//! Shared building blocks of the chat services.
//!
//! Every service is a library with one builder, `App::build(&config)`; this crate holds what
//! they have in common: configuration from the environment (`config`, with `CommonConfig`), the
//! start-up (`cli`), logging, the JSON error body and extractors (`http`), Prometheus metrics,
//! health endpoints, graceful shutdown, JWTs (`jwt`), the clock (`time`) and secrets (`secret`).
//!
//! Clients sit behind cargo features, so a binary links only those it uses: `mongo` (the MongoDB
//! driver), `amqp` (lapin), `auth-client` (module `auth_client`: the HTTP client of
//! auth-service's username lookup); `testing` holds helpers for tests only.

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "auth-client")]
pub mod auth_client;
pub mod backoff;
pub mod bus;
pub mod cli;
pub mod config;
pub mod event;
pub mod http;
pub mod jwt;
pub mod limiter;
pub mod local;
pub mod metrics;
#[cfg(feature = "mongo")]
pub mod mongo;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
