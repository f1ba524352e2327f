//! The password migration on data written the original system's way, and the embedded store.

mod support;

use std::sync::Arc;

use auth_service::{
    MigrationReport, migrate_passwords,
    password::{HashParams, PasswordHasher},
    store::{EmbeddedUserStore, StoreError, UserStore},
};
use mongodb::bson::{doc, oid::ObjectId};
use support::spawn_app;

#[tokio::test]
async fn migration_hashes_the_originals_plaintext_passwords_in_place() {
    let app = spawn_app().await;
    // Documents exactly as the original's Mongoose model wrote them: plaintext password, __v.
    let users = app.users().await;
    let legacy = [("olduser1", "hunter22"), ("olduser2", "pa$$w0rd")];
    for (username, password) in legacy {
        users
            .insert_one(doc! { "_id": ObjectId::new(), "username": username, "password": password, "__v": 0 })
            .await
            .unwrap();
    }
    app.user("newuser").await;

    // Login never compares plaintext: before the migration these accounts cannot log in.
    assert_eq!(app.login("olduser1", "hunter22").await.0, 401);
    assert_eq!(app.login("olduser1", "$argon2id").await.0, 401);

    let report = migrate_passwords(app.store.as_ref(), &app.state.hasher, true)
        .await
        .unwrap();
    assert_eq!(
        (report.migrated, report.already_hashed),
        (2, 1),
        "dry run counts"
    );
    let untouched = users
        .find_one(doc! { "username": "olduser1" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        untouched.get_str("password").unwrap(),
        "hunter22",
        "dry run writes nothing"
    );

    let report = migrate_passwords(app.store.as_ref(), &app.state.hasher, false)
        .await
        .unwrap();
    assert_eq!(
        report,
        MigrationReport {
            scanned: 3,
            already_hashed: 1,
            migrated: 2,
            changed_concurrently: 0
        }
    );
    for (username, password) in legacy {
        let stored = users
            .find_one(doc! { "username": username })
            .await
            .unwrap()
            .unwrap();
        let phc = stored.get_str("password").unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert_eq!(stored.get_i32("__v").unwrap(), 0, "other fields are kept");
        let (status, body) = app.login(username, password).await;
        assert_eq!(status, 200, "{username}: {body}");
    }
    assert_eq!(app.login("olduser2", "wrong-one").await.0, 401);

    // Idempotent: a second run changes nothing.
    let again = migrate_passwords(app.store.as_ref(), &app.state.hasher, false)
        .await
        .unwrap();
    assert_eq!(
        (again.scanned, again.migrated, again.already_hashed),
        (3, 0, 3)
    );
}

#[tokio::test]
async fn migration_does_not_overwrite_a_password_changed_meanwhile() {
    let app = spawn_app().await;
    let users = app.users().await;
    let id = ObjectId::new();
    users
        .insert_one(doc! { "_id": id, "username": "racy", "password": "plain-1" })
        .await
        .unwrap();
    let store = app.store.as_ref();
    // The compare-and-set the migration relies on.
    assert!(
        !store
            .replace_password(&id.to_hex(), "stale", "$argon2id$x")
            .await
            .unwrap()
    );
    assert!(
        store
            .replace_password(&id.to_hex(), "plain-1", "$argon2id$x")
            .await
            .unwrap()
    );
    let stored = users.find_one(doc! { "_id": id }).await.unwrap().unwrap();
    assert_eq!(stored.get_str("password").unwrap(), "$argon2id$x");
}

fn hasher() -> Arc<PasswordHasher> {
    Arc::new(PasswordHasher::new(HashParams::default(), 2, 64, None).unwrap())
}

#[tokio::test]
async fn embedded_store_is_atomic_and_persistent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.redb");
    let id = {
        let store = Arc::new(EmbeddedUserStore::open(&path).unwrap());
        let attempts = (0..20).map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.create("same", &format!("hash-{i}")).await })
        });
        let results = futures_util::future::join_all(attempts).await;
        let ids: Vec<String> = results
            .into_iter()
            .filter_map(|r| r.unwrap().ok())
            .collect();
        assert_eq!(ids.len(), 1, "exactly one winner");
        assert!(matches!(
            store.create("same", "h").await,
            Err(StoreError::Duplicate)
        ));
        store.create("other", "plain").await.unwrap();
        ids[0].clone()
    };
    // Reopen: the data is on disk.
    let store = EmbeddedUserStore::open(&path).unwrap();
    let user = store.find_by_username("same").await.unwrap().unwrap();
    assert_eq!(user.id, id);
    assert!(store.find_by_username("nobody").await.unwrap().is_none());
    let report = migrate_passwords(&store, &hasher(), false).await.unwrap();
    assert_eq!((report.scanned, report.migrated), (2, 2));
    let other = store.find_by_username("other").await.unwrap().unwrap();
    assert!(other.password.starts_with("$argon2id$"));
    let page = store.page(None, 1).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(store.page(Some(&page[0].id), 10).await.unwrap().len(), 1);
}
