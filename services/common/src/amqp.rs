//! RabbitMQ: the connection and the exchange, as the original declared it (feature `amqp`).

use lapin::{
    Channel, Connection, ConnectionProperties, ExchangeKind, options::ExchangeDeclareOptions,
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
