//! Secrets: URLs whose credentials never reach a log, and the one constant-time comparison.

/// A connection URL that may carry a password: `Debug` and `Display` show it with the
/// credentials masked (`mongodb://***@db:27017/chat`); [`SecretUrl::expose`] gives the URL itself.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its credentials, for the client that connects with it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // scheme://user:pass@hosts/path: the user information ends at the last `@` before the
        // path (passwords may hold `@` only percent-encoded, but be safe about it).
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return f.write_str("***");
        };
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        match rest[..authority_end].rfind('@') {
            Some(at) => write!(f, "{scheme}://***@{}", &rest[at + 1..]),
            None => f.write_str(&self.0),
        }
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Whether `a` and `b` are equal, in time that depends on their length only (never on where
/// they differ): for tokens and password hashes.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_urls_never_show_their_credentials() {
        for (url, shown) in [
            (
                "mongodb://root:s3cret@mongo:27017/?authSource=admin",
                "mongodb://***@mongo:27017/?authSource=admin",
            ),
            (
                "amqp://chat:p%40ss@rabbitmq:5672/%2f",
                "amqp://***@rabbitmq:5672/%2f",
            ),
            (
                "mongodb://u:p@h1:27017,h2:27017/chat?replicaSet=rs0",
                "mongodb://***@h1:27017,h2:27017/chat?replicaSet=rs0",
            ),
            ("mongodb://db:27017/chat", "mongodb://db:27017/chat"),
            ("not a url with secret@host", "***"),
        ] {
            let secret = SecretUrl::new(url);
            assert_eq!(secret.to_string(), shown);
            assert_eq!(format!("{secret:?}"), format!("{shown:?}"));
            assert_eq!(secret.expose(), url);
        }
    }

    #[test]
    fn equal_only_when_every_byte_and_the_length_match() {
        assert!(constant_time_eq(b"token", b"token"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"token", b"tokem"));
        assert!(!constant_time_eq(b"token", b"token!"));
    }
}
