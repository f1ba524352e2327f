//! Shared building blocks of the chat services.
//!
//! Every service is a library exposing `router(state)` and `run(listener, state, shutdown)`; this
//! crate holds what they have in common: environment configuration, logging, the JSON error body
//! and extractors, Prometheus metrics, health endpoints, graceful shutdown and JWT handling.

//!
//! Clients sit behind cargo features, so a binary links only those it uses: `mongo` (the MongoDB
//! driver), `amqp` (lapin), `directory` (the HTTP client of auth-service's username lookup);
//! `testing` holds helpers for tests only.

#[cfg(feature = "amqp")]
pub mod amqp;
pub mod backoff;
pub mod bus;
pub mod cli;
pub mod config;
#[cfg(feature = "directory")]
pub mod directory;
pub mod event;
pub mod http;
pub mod jwt;
pub mod local;
pub mod metrics;
#[cfg(feature = "mongo")]
pub mod mongo;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
