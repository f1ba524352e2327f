//! Configuration from environment variables.
//!
//! The seed's variable names come first (`PORT`, `DATABASE_URL`, `JWT_SECRET`, ...); every extra has a
//! documented default. A malformed value is an error naming the variable, never a silent default.

use std::{
    cell::RefCell,
    collections::BTreeSet,
    fmt::Display,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    str::FromStr,
    time::Duration,
};

pub use crate::secret::SecretUrl;

/// A configuration value that is missing or cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is required but not set")]
    Missing(&'static str),
    #[error("{name} is malformed ({value:?}): {reason}")]
    Malformed {
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "{name} is set, but this binary was built without the cargo feature `{feature}` that \
         serves it: rebuild with `--features {feature}` (or unset {name})"
    )]
    Unsupported {
        name: &'static str,
        feature: &'static str,
    },
}

impl ConfigError {
    /// A bad value, shown in the error with any credentials it holds masked (a URL's
    /// `user:password@` becomes `***@`; a secret variable's value is not shown at all), in the
    /// value and in the reason alike.
    pub fn malformed(name: &'static str, value: impl Into<String>, reason: impl Display) -> Self {
        let raw = value.into();
        let mut reason = reason.to_string();
        let secret_name = ["SECRET", "PASSWORD", "KEY", "TOKEN"]
            .iter()
            .any(|s| name.contains(s));
        let value = if secret_name {
            if !raw.is_empty() {
                reason = reason.replace(&raw, "***");
            }
            "***".to_owned()
        } else if raw.contains("://") {
            let masked = SecretUrl::new(raw.clone()).to_string();
            reason = reason.replace(&raw, &masked);
            masked
        } else {
            raw
        };
        Self::Malformed {
            name,
            value,
            reason,
        }
    }
}

/// Where the values come from: the process environment, or a fixed list (tests, embedding).
pub trait Source {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Env;

impl Source for Env {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Source for Vec<(String, String)> {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

impl<S: Source + ?Sized> Source for &S {
    fn get(&self, name: &str) -> Option<String> {
        (**self).get(name)
    }
}

/// A [`Source`] that notes every name asked of it. Parsing a configuration over it tells which
/// variables that configuration reads, from the code that reads them (the compose file's test
/// checks every variable it sets against this).
#[derive(Debug, Default)]
pub struct Recorded<S> {
    source: S,
    asked: RefCell<BTreeSet<String>>,
}

impl<S> Recorded<S> {
    pub fn new(source: S) -> Self {
        Self {
            source,
            asked: RefCell::default(),
        }
    }

    /// Every name asked so far, sorted.
    pub fn names(&self) -> BTreeSet<String> {
        self.asked.borrow().clone()
    }
}

impl<S: Source> Source for Recorded<S> {
    fn get(&self, name: &str) -> Option<String> {
        self.asked.borrow_mut().insert(name.to_owned());
        self.source.get(name)
    }
}

/// Typed access to a [`Source`]. Empty values count as unset.
#[derive(Debug, Clone, Copy)]
pub struct Vars<S>(pub S);

impl<S: Source> Vars<S> {
    pub fn string(&self, name: &'static str) -> Option<String> {
        self.0
            .get(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    pub fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.string(name).ok_or(ConfigError::Missing(name))
    }

    pub fn parse_or<T>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.string(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| ConfigError::malformed(name, v, e)),
        }
    }

    /// A duration such as `3600`, `3600s`, `500ms`, `60m`, `1h` or `7d` (a bare number is seconds).
    pub fn duration_or(
        &self,
        name: &'static str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match self.string(name) {
            None => Ok(default),
            Some(v) => parse_duration(&v).ok_or_else(|| {
                ConfigError::malformed(name, v, "expected a duration such as 30s, 500ms, 60m or 1h")
            }),
        }
    }

    pub fn flag(&self, name: &'static str) -> Result<bool, ConfigError> {
        self.flag_or(name, false)
    }

    /// A `true`/`false` variable, `default` when unset.
    pub fn flag_or(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.string(name).map(|v| v.to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if matches!(v.as_str(), "1" | "true" | "yes" | "on") => Ok(true),
            Some(v) if matches!(v.as_str(), "0" | "false" | "no" | "off") => Ok(false),
            Some(v) => Err(ConfigError::malformed(name, v, "expected true or false")),
        }
    }

    /// An AMQP URL (`amqp://user:pass@host:5672/vhost`), checked now rather than at connect time.
    #[cfg(feature = "amqp")]
    pub fn amqp_url(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        match self.string(name) {
            None => Ok(None),
            Some(v) => match v.parse::<lapin::uri::AMQPUri>() {
                Ok(_) => Ok(Some(v)),
                Err(e) => Err(ConfigError::malformed(name, v, e)),
            },
        }
    }

    /// A MongoDB database name (`auth`), checked now rather than on the first database call.
    /// Unlike other variables, a value of only blanks is an error, not unset: it is a templating
    /// mistake, and falling back to the URL's database would put the data somewhere else.
    pub fn database_name(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        let Some(raw) = self.0.get(name).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let v = raw.trim();
        match check_database_name(v) {
            Ok(()) => Ok(Some(v.to_owned())),
            Err(reason) => Err(ConfigError::malformed(name, raw, reason)),
        }
    }

    /// An `http://` or `https://` base URL, without a trailing slash.
    #[cfg(feature = "http-client")]
    pub fn http_url_or(&self, name: &'static str, default: &str) -> Result<String, ConfigError> {
        let v = self.string(name).unwrap_or_else(|| default.to_owned());
        match reqwest::Url::parse(&v) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                Ok(v.trim_end_matches('/').to_owned())
            }
            Ok(_) => Err(ConfigError::malformed(
                name,
                v,
                "expected an http:// or https:// URL",
            )),
            Err(e) => Err(ConfigError::malformed(name, v, e)),
        }
    }

    /// A number that must be at least 1.
    pub fn positive_or<T>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + From<u8>,
        T::Err: Display,
    {
        let v = self.parse_or(name, default)?;
        if v < T::from(1) {
            return Err(ConfigError::malformed(name, "0", "must be at least 1"));
        }
        Ok(v)
    }

    /// A duration that must not be zero.
    pub fn nonzero_duration_or(
        &self,
        name: &'static str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let d = self.duration_or(name, default)?;
        if d.is_zero() {
            return Err(ConfigError::malformed(
                name,
                "0",
                "must be longer than zero",
            ));
        }
        Ok(d)
    }

    /// A server URL this build cannot use (its client was left out with cargo feature
    /// `feature`): unset is fine, set is an error naming the feature, never ignored.
    pub fn unsupported(
        &self,
        name: &'static str,
        feature: &'static str,
    ) -> Result<Option<SecretUrl>, ConfigError> {
        match self.string(name) {
            None => Ok(None),
            Some(_) => Err(ConfigError::Unsupported { name, feature }),
        }
    }

    /// `CHAT_DEV_MODE=true` allows built-in development defaults (such as a JWT secret).
    pub fn dev_mode(&self) -> Result<bool, ConfigError> {
        self.flag("CHAT_DEV_MODE")
    }

    /// `WRITE_CONCERN` (`majority`, the default, or a number of members, at least 1: an
    /// unacknowledged write could lose what a client was told is stored) and `WRITE_JOURNAL`
    /// (default `true`: acknowledged once in the on-disk journal).
    pub fn durability(&self) -> Result<Durability, ConfigError> {
        let acknowledgment = match self.string("WRITE_CONCERN") {
            None => Acknowledgment::Majority,
            Some(v) if v.eq_ignore_ascii_case("majority") => Acknowledgment::Majority,
            Some(v) => match v.parse::<u32>() {
                Ok(n) if n >= 1 => Acknowledgment::Members(n),
                _ => {
                    return Err(ConfigError::malformed(
                        "WRITE_CONCERN",
                        v,
                        "expected majority or a number of members (at least 1)",
                    ));
                }
            },
        };
        let journal = match self.string("WRITE_JOURNAL") {
            None => true,
            Some(_) => self.flag("WRITE_JOURNAL")?,
        };
        Ok(Durability {
            acknowledgment,
            journal,
        })
    }
}

/// When MongoDB acknowledges a write: the write concern of every write the services make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durability {
    pub acknowledgment: Acknowledgment,
    pub journal: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acknowledgment {
    /// A majority of the replica set's data-bearing members (a standalone server counts as one).
    Majority,
    /// This many members.
    Members(u32),
}

impl Default for Durability {
    fn default() -> Self {
        Self {
            acknowledgment: Acknowledgment::Majority,
            journal: true,
        }
    }
}

/// What every service reads alike, with its defaults written once: where it listens, the
/// limits on each request, development mode and where its local files go, the log format.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    /// `BIND_ADDR` (default `0.0.0.0`) and `PORT` (the service's own default; 0 picks a free
    /// port, as the tests do).
    pub bind: SocketAddr,
    /// `MAX_BODY_BYTES` (default 64 KiB; larger bodies get 413) and `REQUEST_TIMEOUT` (default
    /// 10 s; slower requests get 503). Both must be above zero.
    pub limits: crate::http::Limits,
    /// `CHAT_DEV_MODE=true`: development defaults (a built-in JWT secret, embedded stores and
    /// the in-process bus without `DATABASE_URL`/`RABBITMQ_URL`). Never in production.
    pub dev_mode: bool,
    /// `DATA_DIR` (default `./data`): the embedded stores' files in development mode.
    pub data_dir: PathBuf,
    /// `LOG_FORMAT`: `text` (default) or `json` (JSON lines).
    pub json_logs: bool,
    /// `HTTP_HEADER_TIMEOUT`, `HTTP_IDLE_TIMEOUT`, `MAX_CONNECTIONS`, `TRUSTED_PROXIES` and
    /// `METRICS_PORT` (see [`crate::server`]).
    pub server: crate::server::ServerConfig,
    /// `CORS_ALLOWED_ORIGINS`: the web pages that may call the service (default none; see
    /// [`crate::http::Cors`]).
    pub cors: crate::http::Cors,
}

impl CommonConfig {
    pub fn from_env<S: Source>(vars: &Vars<S>, default_port: u16) -> Result<Self, ConfigError> {
        let defaults = crate::http::Limits::default();
        let ip: IpAddr = vars.parse_or("BIND_ADDR", IpAddr::from([0, 0, 0, 0]))?;
        let json_logs = match vars.string(crate::telemetry::LOG_FORMAT) {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("text") => false,
            Some(v) if v.eq_ignore_ascii_case("json") => true,
            Some(v) => {
                return Err(ConfigError::malformed(
                    crate::telemetry::LOG_FORMAT,
                    v,
                    "expected text or json",
                ));
            }
        };
        Ok(Self {
            bind: SocketAddr::new(ip, vars.parse_or("PORT", default_port)?),
            limits: crate::http::Limits {
                body_bytes: vars.positive_or("MAX_BODY_BYTES", defaults.body_bytes)?,
                request_timeout: vars
                    .nonzero_duration_or("REQUEST_TIMEOUT", defaults.request_timeout)?,
            },
            dev_mode: vars.dev_mode()?,
            data_dir: vars
                .string("DATA_DIR")
                .unwrap_or_else(|| "data".to_owned())
                .into(),
            json_logs,
            server: server_config(vars)?,
            cors: match vars.string("CORS_ALLOWED_ORIGINS") {
                None => crate::http::Cors::Off,
                Some(list) => crate::http::Cors::parse(&list)
                    .map_err(|e| ConfigError::malformed("CORS_ALLOWED_ORIGINS", list, e))?,
            },
        })
    }
}

fn server_config<S: Source>(vars: &Vars<S>) -> Result<crate::server::ServerConfig, ConfigError> {
    let defaults = crate::server::ServerConfig::default();
    let trusted_proxies = match vars.string("TRUSTED_PROXIES") {
        None => defaults.trusted_proxies,
        Some(list) => crate::server::TrustedProxies(
            list.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::parse)
                .collect::<Result<_, String>>()
                .map_err(|e| ConfigError::malformed("TRUSTED_PROXIES", list.clone(), e))?,
        ),
    };
    Ok(crate::server::ServerConfig {
        header_timeout: vars.nonzero_duration_or("HTTP_HEADER_TIMEOUT", defaults.header_timeout)?,
        idle_timeout: vars.nonzero_duration_or("HTTP_IDLE_TIMEOUT", defaults.idle_timeout)?,
        max_connections: vars.positive_or("MAX_CONNECTIONS", defaults.max_connections)?,
        trusted_proxies,
        metrics_port: match vars.string("METRICS_PORT") {
            None => None,
            Some(_) => Some(vars.positive_or("METRICS_PORT", 1u16)?),
        },
    })
}

/// Longest database name MongoDB accepts, in bytes.
const MAX_NAME_BYTES: usize = 63;

/// Checks a database name against MongoDB's rules, so a bad `DATABASE_NAME` stops start-up
/// instead of failing every call later.
pub fn check_database_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    if let Some(c) = name.chars().find(|c| "/\\. \"$\0".contains(*c)) {
        return Err(format!(
            "must not contain {c:?} (nor any of / \\ . space \" $ NUL)"
        ));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!("must be at most {MAX_NAME_BYTES} bytes"));
    }
    Ok(())
}

/// Parses `3600`, `3600s`, `500ms`, `60m`, `1h`, `7d`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let secs = |m: u64| n.checked_mul(m).map(Duration::from_secs);
    match unit.trim() {
        "" | "s" => secs(1),
        "ms" => Some(Duration::from_millis(n)),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => None,
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    #[test]
    fn config_errors_never_show_credentials() {
        let e = ConfigError::malformed(
            "RABBITMQ_URL",
            "amqp://chat:hunter2@mq:5672/%2f x",
            "bad URL amqp://chat:hunter2@mq:5672/%2f x",
        )
        .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("amqp://***@mq:5672"), "{e}");
        let e =
            ConfigError::malformed("JWT_SECRET", "tooshort", "\"tooshort\" is short").to_string();
        assert!(!e.contains("tooshort"), "{e}");
        let e = ConfigError::malformed("PORT", "x", "not a number").to_string();
        assert!(e.contains("\"x\""), "{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars<Vec<(String, String)>> {
        Vars(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("1 h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("-1"), None);
        assert_eq!(parse_duration("5 weeks"), None);
    }

    #[test]
    fn malformed_values_name_the_variable() {
        let v = vars(&[("PORT", "http"), ("EMPTY", "  ")]);
        let err = v.parse_or::<u16>("PORT", 1).unwrap_err().to_string();
        assert!(err.contains("PORT"), "{err}");
        assert_eq!(v.parse_or::<u16>("EMPTY", 7).unwrap(), 7);
        assert!(matches!(
            v.required("EMPTY"),
            Err(ConfigError::Missing("EMPTY"))
        ));
        assert!(vars(&[("CHAT_DEV_MODE", "maybe")]).dev_mode().is_err());
        assert!(vars(&[("CHAT_DEV_MODE", "TRUE")]).dev_mode().unwrap());
        let v = vars(&[
            ("R", "garbage://x"),
            ("A", "ftp://x"),
            ("Z", "0"),
            ("P", "0s"),
        ]);
        assert!(v.amqp_url("R").unwrap_err().to_string().contains('R'));
        assert_eq!(
            vars(&[("R", "amqp://rabbitmq:5672")])
                .amqp_url("R")
                .unwrap()
                .as_deref(),
            Some("amqp://rabbitmq:5672")
        );
        assert!(v.http_url_or("A", "http://x").is_err());
        assert!(v.http_url_or("B", "nonsense").is_err());
        assert_eq!(
            v.http_url_or("B", "http://auth:5001/").unwrap(),
            "http://auth:5001"
        );
        assert!(v.positive_or::<u16>("Z", 5).is_err());
        assert!(v.nonzero_duration_or("P", Duration::from_secs(1)).is_err());
    }

    #[test]
    fn recorded_names_every_variable_asked() {
        let source = Recorded::new(vec![("PORT".to_owned(), "8080".to_owned())]);
        let v = Vars(&source);
        assert_eq!(v.parse_or::<u16>("PORT", 1).unwrap(), 8080);
        assert!(v.string("UNSET").is_none());
        assert!(!v.dev_mode().unwrap());
        assert_eq!(v.database_name("DATABASE_NAME").unwrap(), None);
        assert_eq!(
            source.names().into_iter().collect::<Vec<_>>(),
            ["CHAT_DEV_MODE", "DATABASE_NAME", "PORT", "UNSET"]
        );
    }

    #[test]
    fn database_names() {
        let name = |value: &str| vars(&[("DATABASE_NAME", value)]).database_name("DATABASE_NAME");
        assert_eq!(vars(&[]).database_name("DATABASE_NAME").unwrap(), None);
        assert_eq!(name("").unwrap(), None);
        assert_eq!(name(" chat ").unwrap().as_deref(), Some("chat"));
        for bad in ["   ", "a.b", "a/b", "a b", "$x", &"x".repeat(64)] {
            let err = name(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    ConfigError::Malformed {
                        name: "DATABASE_NAME",
                        ..
                    }
                ),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn common_config_has_one_set_of_defaults_and_refuses_zero_limits() {
        let c = CommonConfig::from_env(&vars(&[]), 5002).unwrap();
        assert_eq!(c.bind, "0.0.0.0:5002".parse().unwrap());
        assert_eq!(c.limits.body_bytes, 64 * 1024);
        assert_eq!(c.limits.request_timeout, Duration::from_secs(10));
        assert!(!c.dev_mode && !c.json_logs);
        assert_eq!(c.data_dir, PathBuf::from("data"));
        let c = CommonConfig::from_env(
            &vars(&[
                ("BIND_ADDR", "127.0.0.1"),
                ("PORT", "0"),
                ("LOG_FORMAT", "JSON"),
            ]),
            5002,
        )
        .unwrap();
        assert_eq!(c.bind, "127.0.0.1:0".parse().unwrap());
        assert!(c.json_logs);
        for (name, value) in [
            ("MAX_BODY_BYTES", "0"),
            ("REQUEST_TIMEOUT", "0s"),
            ("BIND_ADDR", "localhost:80"),
            ("LOG_FORMAT", "yaml"),
            ("PORT", "-1"),
        ] {
            let err = CommonConfig::from_env(&vars(&[(name, value)]), 1).unwrap_err();
            assert!(err.to_string().contains(name), "{name}={value}: {err}");
        }
    }
}
