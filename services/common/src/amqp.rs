//! RabbitMQ: the connection and the exchange, as the original declared it (feature `amqp`).

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind, PublisherConfirm,
    options::{BasicPublishOptions, ExchangeDeclareOptions},
    types::FieldTable,
};

/// Opens an AMQP connection on the tokio runtime, named for the management UI.
pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    Connection::connect(
        url,
        ConnectionProperties::default().with_connection_name(name.to_owned().into()),
    )
    .await
}

/// Declares the exchange exactly as the original did: fanout, not durable.
pub async fn declare_exchange(channel: &Channel, exchange: &str) -> lapin::Result<()> {
    channel
        .exchange_declare(
            exchange.to_owned().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: false,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Publishes one JSON event to the fanout `exchange` (no routing key). On a channel in confirm
/// mode, the returned confirm resolves once the broker has taken it.
pub async fn publish_event(
    channel: &Channel,
    exchange: &str,
    payload: &[u8],
) -> lapin::Result<PublisherConfirm> {
    channel
        .basic_publish(
            exchange.to_owned().into(),
            "".into(),
            BasicPublishOptions::default(),
            payload,
            BasicProperties::default().with_content_type("application/json".into()),
        )
        .await
}
