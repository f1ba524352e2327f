//! The optional Ed25519 token mode: auth-service signs with a private key under a key id,
//! verifiers trust public keys by id (several during a rotation), internal callers use
//! `INTERNAL_API_TOKEN`.

mod support;

use std::time::Duration;

use chat_common::{
    config::Vars,
    jwt::{JwtSettings, Principal},
};
use support::spawn_app_with;

fn fixture(name: &str) -> String {
    format!(
        "{}/tests/fixtures/{name}",
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")
    )
}

const INTERNAL: &str = "internal-token-for-tests-0123456789";

#[tokio::test]
async fn eddsa_tokens_with_key_ids_and_rotation() {
    let private = fixture("ed25519-a.pem");
    let trusted = format!(
        "key-a={},key-b={}",
        fixture("ed25519-a.pub.pem"),
        fixture("ed25519-b.pub.pem")
    );
    let app = spawn_app_with(&[
        ("JWT_PRIVATE_KEY_FILE", private.as_str()),
        ("JWT_KEY_ID", "key-a"),
        ("JWT_PUBLIC_KEY_FILES", trusted.as_str()),
        ("INTERNAL_API_TOKEN", INTERNAL),
    ])
    .await;
    let (id, token) = app.user("alice").await;
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    assert_eq!(header.kid.as_deref(), Some("key-a"));
    let lookup = "/auth/user-by-username?username=alice";
    assert_eq!(app.get(lookup, Some(&token)).await.0, 200);
    assert_eq!(
        app.get(lookup, Some(INTERNAL)).await.0,
        200,
        "internal callers"
    );
    assert_eq!(
        app.get(lookup, Some("internal-token-for-tests-012345678X"))
            .await
            .0,
        401
    );

    // A verifier holding only public keys checks tokens, including ones signed by the next key.
    let verifier_env = Vars(vec![("JWT_PUBLIC_KEY_FILES".to_owned(), trusted.clone())]);
    let verifier = JwtSettings::from_env(&verifier_env).unwrap();
    assert!(verifier.issuer().is_none(), "no private key, no signing");
    let Principal::User(user) = verifier.verifier().verify(&token).unwrap() else {
        panic!("a user token")
    };
    assert_eq!(
        (user.id.as_str(), user.username.as_str()),
        (id.as_str(), "alice")
    );
    let next_env = Vars(vec![
        ("JWT_PRIVATE_KEY_FILE".to_owned(), fixture("ed25519-b.pem")),
        ("JWT_KEY_ID".to_owned(), "key-b".to_owned()),
        (
            "JWT_PUBLIC_KEY_FILES".to_owned(),
            format!("key-b={}", fixture("ed25519-b.pub.pem")),
        ),
    ]);
    let next = JwtSettings::from_env(&next_env).unwrap().issuer().unwrap();
    let rotated = next.issue_user(&id, "alice").unwrap();
    assert_eq!(
        app.get(lookup, Some(&rotated)).await.0,
        200,
        "key-b is trusted too"
    );

    // HS256 tokens are refused in EdDSA mode (no algorithm confusion), as are unknown key ids.
    let hs = JwtSettings::hs256(
        b"some-secret-some-secret-some-secret",
        Duration::from_secs(60),
    );
    let hs_token = hs.issuer().unwrap().issue_user(&id, "alice").unwrap();
    assert_eq!(app.get(lookup, Some(&hs_token)).await.0, 401);
    // Unknown key ids, and a key id that does not match the signing key, are refused.
    for (kid, key) in [("key-c", "ed25519-b"), ("key-a", "ed25519-b")] {
        let env = Vars(vec![
            (
                "JWT_PRIVATE_KEY_FILE".to_owned(),
                fixture(&format!("{key}.pem")),
            ),
            ("JWT_KEY_ID".to_owned(), kid.to_owned()),
            (
                "JWT_PUBLIC_KEY_FILES".to_owned(),
                format!("{kid}={}", fixture(&format!("{key}.pub.pem"))),
            ),
        ]);
        let forged = JwtSettings::from_env(&env)
            .unwrap()
            .issuer()
            .unwrap()
            .issue_user(&id, "alice")
            .unwrap();
        assert_eq!(
            app.get(lookup, Some(&forged)).await.0,
            401,
            "kid {kid} signed by {key}"
        );
    }
}

#[test]
fn bad_key_settings_are_refused_with_the_variable_named() {
    let cases = [
        (
            vec![("JWT_PUBLIC_KEY_FILES", "nokid.pem")],
            "JWT_PUBLIC_KEY_FILES",
        ),
        (
            vec![("JWT_PUBLIC_KEY_FILES", "k=/no/such/file.pem")],
            "JWT_PUBLIC_KEY_FILES",
        ),
        (
            vec![("JWT_PRIVATE_KEY_FILE", "/no/such/key.pem")],
            "JWT_PRIVATE_KEY_FILE",
        ),
        (vec![], "JWT_SECRET"),
        (
            vec![("JWT_SECRET", "x"), ("JWT_EXPIRES_IN", "soon")],
            "JWT_EXPIRES_IN",
        ),
        (
            vec![("JWT_SECRET", "x"), ("INTERNAL_API_TOKEN", "short")],
            "INTERNAL_API_TOKEN",
        ),
    ];
    for (env, name) in cases {
        let vars = Vars(
            env.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<Vec<_>>(),
        );
        let err = JwtSettings::from_env(&vars).unwrap_err().to_string();
        assert!(err.contains(name), "{env:?}: {err}");
    }
}
