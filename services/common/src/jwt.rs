//! JSON Web Tokens: issuing (auth-service) and verifying (every service).
//!
//! Two key modes:
//! - **HS256** with `JWT_SECRET` (the default, a drop-in for the original system). Every service
//!   holding the secret can also mint short-lived *service tokens* for internal calls.
//! - **EdDSA** (Ed25519): auth-service signs with `JWT_PRIVATE_KEY_FILE` (PKCS#8 PEM) under the key
//!   id `JWT_KEY_ID`; verifiers only hold public keys, `JWT_PUBLIC_KEY_FILES` (comma-separated
//!   `kid=path.pem`), so several keys can be trusted during a rotation. Internal callers then
//!   authenticate with the shared `INTERNAL_API_TOKEN`.
//!
//! Verification pins the algorithm (so `alg: none` and algorithm confusion are rejected), requires
//! `exp`, and allows 5 s of clock skew.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{StatusCode, request::Parts},
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::{
    config::{ConfigError, Source, Vars},
    http::{ApiRejection, bearer_token},
    secret::constant_time_eq,
    time::now_secs,
};

/// Development-only secret, used when `CHAT_DEV_MODE=true` and no `JWT_SECRET` is set.
pub const DEV_SECRET: &str = "chat-dev-mode-insecure-secret-do-not-use-in-production";

/// Lifetime of the service tokens minted for internal calls.
pub const SERVICE_TOKEN_TTL: Duration = Duration::from_secs(300);

/// An authenticated end user, from a valid token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user's id (hex ObjectId).
    pub id: String,
    pub username: String,
    /// Unix seconds at which the token expires.
    pub expires_at: u64,
}

/// Who is calling: an end user, or another service of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    User(User),
    Service(String),
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
}

/// Claims as they may arrive: user tokens carry `id` and `username` (tokens of the original system
/// have no `sub`), service tokens carry `svc`.
#[derive(Debug, Deserialize)]
struct IncomingClaims {
    id: Option<String>,
    username: Option<String>,
    svc: Option<String>,
    exp: u64,
}

#[derive(Serialize)]
struct UserClaims<'a> {
    id: &'a str,
    username: &'a str,
    sub: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Serialize)]
struct ServiceClaims<'a> {
    svc: &'a str,
    sub: String,
    iat: u64,
    exp: u64,
}

/// The key settings read from the environment.
#[derive(Clone)]
pub struct JwtSettings {
    algorithm: Algorithm,
    /// HS256 secret, or the Ed25519 private key (PEM) with its key id.
    signing: Option<(Option<String>, EncodingKey)>,
    /// Keys trusted for verification, by key id (`None`: any token without a `kid`).
    verifying: Vec<(Option<String>, DecodingKey)>,
    internal_token: Option<String>,
    /// Lifetime of user tokens (`JWT_EXPIRES_IN`, default 1 h).
    pub user_token_ttl: Duration,
}

impl std::fmt::Debug for JwtSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSettings")
            .field("algorithm", &self.algorithm)
            .field("can_sign", &self.signing.is_some())
            .field("verifying_keys", &self.verifying.len())
            .field(
                "internal_token",
                &self.internal_token.as_ref().map(|_| "***"),
            )
            .field("user_token_ttl", &self.user_token_ttl)
            .finish()
    }
}

impl JwtSettings {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8], user_token_ttl: Duration) -> Self {
        Self {
            algorithm: Algorithm::HS256,
            signing: Some((None, EncodingKey::from_secret(secret))),
            verifying: vec![(None, DecodingKey::from_secret(secret))],
            internal_token: None,
            user_token_ttl,
        }
    }

    /// Reads `JWT_SECRET`, or `JWT_PRIVATE_KEY_FILE`/`JWT_KEY_ID`/`JWT_PUBLIC_KEY_FILES` for Ed25519,
    /// plus `JWT_EXPIRES_IN` and `INTERNAL_API_TOKEN`. Without any key, only `CHAT_DEV_MODE=true`
    /// allows the built-in development secret.
    pub fn from_env<S: Source>(vars: &Vars<S>) -> Result<Self, ConfigError> {
        let ttl = vars.duration_or("JWT_EXPIRES_IN", Duration::from_secs(3600))?;
        if ttl.is_zero() {
            return Err(ConfigError::malformed(
                "JWT_EXPIRES_IN",
                "0",
                "must be positive",
            ));
        }
        let internal_token = vars.string("INTERNAL_API_TOKEN");
        if let Some(t) = &internal_token
            && t.len() < 16
        {
            return Err(ConfigError::malformed(
                "INTERNAL_API_TOKEN",
                "***",
                "must be at least 16 characters",
            ));
        }
        let private = vars.string("JWT_PRIVATE_KEY_FILE");
        let public = vars.string("JWT_PUBLIC_KEY_FILES");
        let mut settings = if private.is_some() || public.is_some() {
            Self::ed25519_from_files(vars, private, public.as_deref())?
        } else if let Some(secret) = vars.string("JWT_SECRET") {
            if secret.len() < 32 {
                tracing::warn!(
                    "JWT_SECRET is shorter than 32 bytes; use a long random secret in production"
                );
            }
            Self::hs256(secret.as_bytes(), ttl)
        } else if vars.dev_mode()? {
            tracing::warn!("CHAT_DEV_MODE: using the built-in development JWT secret");
            Self::hs256(DEV_SECRET.as_bytes(), ttl)
        } else {
            return Err(ConfigError::Missing("JWT_SECRET"));
        };
        settings.user_token_ttl = ttl;
        settings.internal_token = internal_token;
        Ok(settings)
    }

    fn ed25519_from_files<S: Source>(
        vars: &Vars<S>,
        private: Option<String>,
        public: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let read = |name: &'static str, path: &str| {
            std::fs::read(path).map_err(|e| ConfigError::malformed(name, path, e))
        };
        let kid = vars.string("JWT_KEY_ID");
        let signing = match private {
            None => None,
            Some(path) => {
                let pem = read("JWT_PRIVATE_KEY_FILE", &path)?;
                let key = EncodingKey::from_ed_pem(&pem)
                    .map_err(|e| ConfigError::malformed("JWT_PRIVATE_KEY_FILE", &path, e))?;
                if kid.is_none() {
                    return Err(ConfigError::Missing("JWT_KEY_ID"));
                }
                Some((kid.clone(), key))
            }
        };
        let mut verifying = Vec::new();
        for entry in public.iter().flat_map(|p| p.split(',')).map(str::trim) {
            let (kid, path) = entry.split_once('=').ok_or_else(|| {
                ConfigError::malformed("JWT_PUBLIC_KEY_FILES", entry, "expected kid=path.pem")
            })?;
            let pem = read("JWT_PUBLIC_KEY_FILES", path)?;
            let key = DecodingKey::from_ed_pem(&pem)
                .map_err(|e| ConfigError::malformed("JWT_PUBLIC_KEY_FILES", path, e))?;
            verifying.push((Some(kid.trim().to_owned()), key));
        }
        if verifying.is_empty() {
            return Err(ConfigError::Missing("JWT_PUBLIC_KEY_FILES"));
        }
        Ok(Self {
            algorithm: Algorithm::EdDSA,
            signing,
            verifying,
            internal_token: None,
            user_token_ttl: Duration::from_secs(3600),
        })
    }

    pub fn verifier(&self) -> TokenVerifier {
        let mut validation = Validation::new(self.algorithm);
        validation.leeway = 5;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp"]);
        TokenVerifier {
            keys: self.verifying.clone(),
            validation,
            internal_token: self.internal_token.clone(),
        }
    }

    /// The signer, when these settings hold a signing key (HS256 secret or Ed25519 private key).
    pub fn issuer(&self) -> Option<TokenIssuer> {
        let (kid, key) = self.signing.clone()?;
        let mut header = Header::new(self.algorithm);
        header.kid = kid;
        Some(TokenIssuer {
            header,
            key,
            user_token_ttl: self.user_token_ttl,
        })
    }

    /// How an internal caller authenticates to another service: minted service tokens when it
    /// holds a signing key, else the shared `INTERNAL_API_TOKEN`.
    pub fn service_credential(&self, service: &str) -> Option<ServiceCredential> {
        if self.algorithm == Algorithm::HS256 {
            self.issuer().map(|i| ServiceCredential::minted(i, service))
        } else {
            self.internal_token.clone().map(ServiceCredential::Static)
        }
    }
}

/// Signs tokens.
#[derive(Clone)]
pub struct TokenIssuer {
    header: Header,
    key: EncodingKey,
    user_token_ttl: Duration,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("alg", &self.header.alg)
            .finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// A user token with claims `id`, `username`, `sub` (= id), `iat` and `exp`.
    pub fn issue_user(
        &self,
        id: &str,
        username: &str,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let iat = now_secs();
        let claims = UserClaims {
            id,
            username,
            sub: id,
            iat,
            exp: iat + self.user_token_ttl.as_secs(),
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key)
    }

    /// A short-lived token identifying one of our services.
    pub fn issue_service(
        &self,
        service: &str,
        ttl: Duration,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let iat = now_secs();
        let claims = ServiceClaims {
            svc: service,
            sub: format!("service:{service}"),
            iat,
            exp: iat + ttl.as_secs(),
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key)
    }
}

/// Verifies tokens.
#[derive(Clone)]
pub struct TokenVerifier {
    keys: Vec<(Option<String>, DecodingKey)>,
    validation: Validation,
    internal_token: Option<String>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// Checks a token's signature, algorithm and expiry, and says who it names.
    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        if let Some(expected) = &self.internal_token
            && constant_time_eq(expected.as_bytes(), token.as_bytes())
        {
            return Ok(Principal::Service("internal".to_owned()));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        let key = match &header.kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|(k, _)| k.as_deref() == Some(kid.as_str())),
            None => self.keys.iter().find(|(k, _)| k.is_none()),
        }
        .or_else(|| (self.keys.len() == 1).then(|| &self.keys[0]))
        .map(|(_, key)| key)
        .ok_or(TokenError::Invalid)?;
        let data =
            jsonwebtoken::decode::<IncomingClaims>(token, key, &self.validation).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                    _ => TokenError::Invalid,
                }
            })?;
        let c = data.claims;
        match (c.id, c.username, c.svc) {
            (Some(id), Some(username), None) if !id.is_empty() && !username.is_empty() => {
                Ok(Principal::User(User {
                    id,
                    username,
                    expires_at: c.exp,
                }))
            }
            (None, None, Some(svc)) if !svc.is_empty() => Ok(Principal::Service(svc)),
            _ => Err(TokenError::Invalid),
        }
    }

    /// Verifies a token that must name an end user.
    pub fn verify_user(&self, token: &str) -> Result<User, TokenError> {
        match self.verify(token)? {
            Principal::User(u) => Ok(u),
            Principal::Service(_) => Err(TokenError::Invalid),
        }
    }
}

/// The credential an internal caller sends as `Authorization: Bearer ...`.
#[derive(Clone, Debug)]
pub enum ServiceCredential {
    /// A shared static token (`INTERNAL_API_TOKEN`).
    Static(String),
    /// Service tokens minted on demand and reused until shortly before they expire.
    Minted {
        issuer: Box<TokenIssuer>,
        service: String,
        cache: Arc<std::sync::Mutex<Option<(String, u64)>>>,
    },
}

impl ServiceCredential {
    pub fn minted(issuer: TokenIssuer, service: &str) -> Self {
        Self::Minted {
            issuer: Box::new(issuer),
            service: service.to_owned(),
            cache: Arc::default(),
        }
    }

    /// The bearer token to send now.
    pub fn token(&self) -> Result<String, jsonwebtoken::errors::Error> {
        match self {
            Self::Static(t) => Ok(t.clone()),
            Self::Minted {
                issuer,
                service,
                cache,
            } => {
                let now = now_secs();
                let mut guard = cache
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some((token, exp)) = guard.as_ref()
                    && *exp > now + 60
                {
                    return Ok(token.clone());
                }
                let token = issuer.issue_service(service, SERVICE_TOKEN_TTL)?;
                *guard = Some((token.clone(), now + SERVICE_TOKEN_TTL.as_secs()));
                Ok(token)
            }
        }
    }
}

fn unauthorized(message: &str) -> ApiRejection {
    ApiRejection::new(StatusCode::UNAUTHORIZED, message)
}

fn rejection_for(e: &TokenError) -> ApiRejection {
    match e {
        TokenError::Expired => unauthorized("Token expired"),
        TokenError::Invalid => unauthorized("Invalid token"),
    }
}

/// The verified bearer token of a request, as `T` (`TokenVerifier::verify` or `verify_user`).
fn from_bearer<S, T>(
    parts: &Parts,
    state: &S,
    verify: impl FnOnce(&TokenVerifier, &str) -> Result<T, TokenError>,
) -> Result<T, ApiRejection>
where
    Arc<TokenVerifier>: FromRef<S>,
{
    let token = bearer_token(&parts.headers).ok_or_else(|| unauthorized("No token provided"))?;
    verify(&Arc::<TokenVerifier>::from_ref(state), token).map_err(|e| rejection_for(&e))
}

/// Extractor: the end user named by a valid `Authorization: Bearer` token, or a JSON 401.
#[derive(Debug, Clone)]
pub struct AuthUser(pub User);

impl<S> FromRequestParts<S> for AuthUser
where
    Arc<TokenVerifier>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        from_bearer(parts, state, TokenVerifier::verify_user).map(AuthUser)
    }
}

/// Extractor: an end user or one of our services, from a valid bearer token, or a JSON 401.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl<S> FromRequestParts<S> for Caller
where
    Arc<TokenVerifier>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        from_bearer(parts, state, TokenVerifier::verify).map(Caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> JwtSettings {
        JwtSettings::hs256(
            b"0123456789abcdef0123456789abcdef",
            Duration::from_secs(3600),
        )
    }

    #[test]
    fn user_round_trip() {
        let s = settings();
        let token = s.issuer().unwrap().issue_user("abc", "alice").unwrap();
        let user = s.verifier().verify_user(&token).unwrap();
        assert_eq!((user.id.as_str(), user.username.as_str()), ("abc", "alice"));
        assert!(user.expires_at > now_secs() + 3500);
    }

    #[test]
    fn service_tokens_are_not_users() {
        let s = settings();
        let token = s
            .issuer()
            .unwrap()
            .issue_service("websocket", SERVICE_TOKEN_TTL)
            .unwrap();
        assert_eq!(
            s.verifier().verify(&token),
            Ok(Principal::Service("websocket".into()))
        );
        assert_eq!(s.verifier().verify_user(&token), Err(TokenError::Invalid));
    }

    #[test]
    fn rejects_other_keys_none_and_garbage() {
        let s = settings();
        let other =
            JwtSettings::hs256(b"another-secret-another-secret-xx", Duration::from_secs(60));
        let token = other.issuer().unwrap().issue_user("abc", "alice").unwrap();
        assert_eq!(s.verifier().verify(&token), Err(TokenError::Invalid));
        // alg: none, with the claims of a valid token.
        let payload = token.split('.').nth(1).unwrap();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert_eq!(s.verifier().verify(&none), Err(TokenError::Invalid));
        assert_eq!(s.verifier().verify("not-a-token"), Err(TokenError::Invalid));
    }

    #[test]
    fn internal_token_is_a_service_credential() {
        let mut s = settings();
        s.internal_token = Some("s3cr3t-internal-token".into());
        assert_eq!(
            s.verifier().verify("s3cr3t-internal-token"),
            Ok(Principal::Service("internal".into()))
        );
        assert_eq!(
            s.verifier().verify("s3cr3t-internal-tokeX"),
            Err(TokenError::Invalid)
        );
    }
}
