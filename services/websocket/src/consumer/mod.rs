//! Consuming events (`new_message`, `read`, `typing`), and the channel typing events go out on.
//!
//! From RabbitMQ: each replica declares its own server-named, exclusive, auto-delete queue bound
//! to the fanout exchange, consumes it with manual acks and a prefetch window, and acks each event
//! once it has been handed to the sockets. When the connection drops, the supervisor reconnects
//! with backoff and declares a *fresh* queue (lapin's recovery would re-declare the old
//! server-named queue, which the broker deleted). Open sockets stay open meanwhile; what was
//! published while no queue was bound (and what was prefetched but not yet handed over, lost with
//! the old queue) never reaches this replica, so once the fresh queue is bound every open socket
//! catches up from the store ([`Hub::events_interrupted`]).
//!
//! From the in-process bus (standalone stack): a subscription that never drops an event.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use chat_common::bus::LocalBus;

use crate::{hub::Hub, signals::SignalBus};

#[cfg(feature = "amqp")]
mod amqp;

/// Where events come from.
#[derive(Clone, Debug)]
pub enum EventSource {
    #[cfg(feature = "amqp")]
    Amqp {
        url: String,
        exchange: String,
        prefetch: u16,
    },
    Local(LocalBus),
}

impl EventSource {
    /// Where typing events go: where events come from.
    pub fn signal_bus(&self) -> SignalBus {
        match self {
            #[cfg(feature = "amqp")]
            Self::Amqp { exchange, .. } => SignalBus::amqp(exchange),
            Self::Local(bus) => SignalBus::local(bus.clone()),
        }
    }
}

/// Consumes `source` into `hub` until `stop` is set; `ready` tells whether events flow.
pub async fn run(
    source: EventSource,
    signals: SignalBus,
    hub: Arc<Hub>,
    ready: Arc<AtomicBool>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    match source {
        EventSource::Local(bus) => {
            drop(signals); // It publishes to `bus` itself.
            let mut rx = bus.subscribe();
            drop(bus);
            let mut stop = stop;
            ready.store(true, Ordering::Release);
            loop {
                let received = tokio::select! {
                    _ = stop.changed() => break,
                    r = rx.recv() => r,
                };
                match received {
                    Some(payload) => hub.handle(&payload),
                    None => break,
                }
            }
            ready.store(false, Ordering::Release);
        }
        #[cfg(feature = "amqp")]
        EventSource::Amqp {
            url,
            exchange,
            prefetch,
        } => {
            amqp::consume(&url, &exchange, prefetch, &hub, &signals, &ready, stop).await;
        }
    }
}
