//! Shared building blocks of the chat services.
//!
//! Every service is a library exposing `router(state)` and `run(listener, state, shutdown)`; this
//! crate holds what they have in common: environment configuration, logging, the JSON error body
//! and extractors, Prometheus metrics, health endpoints, graceful shutdown and JWT handling.

pub mod bus;
pub mod cli;
pub mod config;
pub mod directory;
pub mod event;
pub mod http;
pub mod jwt;
pub mod metrics;
pub mod mongo;
pub mod shutdown;
pub mod telemetry;
pub mod testing;
pub mod time;
