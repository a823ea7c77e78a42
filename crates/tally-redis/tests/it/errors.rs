//! Bad credentials, unreachable nodes and bad URLs: clear errors, no password anywhere.

use tally_counter::{InstanceId, Store};
use tally_redis::{Error, RedisConfig, RedisStore, Secret};
use tally_testkit::{RedisNode, free_port};

use crate::support::{TestResult, batch, connect, everything_shown, fast_config, redis_error};

const NODE_PASSWORD: &str = "correct-horse-battery-staple";
const WRONG_PASSWORD: &str = "wrong-password-4711";

#[tokio::test]
async fn wrong_password_is_reported_as_such_without_the_password() -> TestResult {
    let node = RedisNode::builder().password(NODE_PASSWORD).start()?;
    let url = format!("redis://:{WRONG_PASSWORD}@127.0.0.1:{}", node.port());

    let store = connect(&url).await;
    let err = Store::apply(&store, 0, &batch(1, 1, &[("k", 1)]))
        .await
        .unwrap_err();

    assert!(
        !store.health()[0].up,
        "a node refusing our password is not usable"
    );
    let shown = everything_shown(&*err);
    assert!(
        shown.contains("refused authentication"),
        "the error does not say the password is wrong: {shown}"
    );
    assert!(!shown.contains(WRONG_PASSWORD), "password leaked: {shown}");
    assert!(!format!("{store:?}").contains(WRONG_PASSWORD));
    assert_eq!(node.get("tally:v:k")?, None);
    Ok(())
}

#[tokio::test]
async fn the_first_command_on_a_wrong_password_is_an_auth_error() -> TestResult {
    let node = RedisNode::builder().password(NODE_PASSWORD).start()?;
    let url = format!("redis://:{WRONG_PASSWORD}@127.0.0.1:{}", node.port());
    let store = connect(&url).await;

    // The start-up check already found out; a fresh check reports the cause itself.
    let err = Store::get(&store, 0, InstanceId::from_u64(1), &["k"])
        .await
        .unwrap_err();

    match redis_error(&err) {
        Error::NodeUnavailable { reason, .. } => {
            assert!(reason.contains("refused authentication"), "{reason}");
        }
        other => panic!("expected the node to be unavailable, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn redis_password_overrides_the_url_password() -> TestResult {
    let node = RedisNode::builder().password(NODE_PASSWORD).start()?;
    let mut config = fast_config(&format!(
        "redis://:{WRONG_PASSWORD}@127.0.0.1:{}",
        node.port()
    ));
    config.password = Some(Secret::new(NODE_PASSWORD));

    let store = RedisStore::connect(config.clone()).await?;
    store.apply(0, &batch(1, 1, &[("k", 2)])).await?;

    assert_eq!(node.get_u64("tally:v:k")?, Some(2));
    let shown = format!("{config} {config:?} {store:?}");
    assert!(
        !shown.contains(NODE_PASSWORD) && !shown.contains(WRONG_PASSWORD),
        "{shown}"
    );
    Ok(())
}

#[tokio::test]
async fn unreachable_node_at_start_is_reported_and_its_commands_fail_clearly() -> TestResult {
    let live = RedisNode::start()?;
    let dead_port = free_port()?;
    let urls = format!(
        "{},redis://:{WRONG_PASSWORD}@127.0.0.1:{dead_port}",
        live.url()
    );

    let store = connect(&urls).await;
    let health = store.health();
    let err = Store::apply(&store, 1, &batch(1, 1, &[("k", 1)]))
        .await
        .unwrap_err();
    let read_err = Store::get(&store, 1, InstanceId::from_u64(1), &["k"])
        .await
        .unwrap_err();

    assert!(health[0].up);
    assert!(!health[1].up);
    assert_eq!(health[1].name, format!("127.0.0.1:{dead_port}"));
    for err in [&err, &read_err] {
        assert!(
            matches!(redis_error(err), Error::NodeUnavailable { .. }),
            "{err:?}"
        );
        let shown = everything_shown(&**err);
        assert!(shown.contains(&format!("127.0.0.1:{dead_port}")), "{shown}");
        assert!(shown.contains("cannot connect"), "{shown}");
        assert!(!shown.contains(WRONG_PASSWORD), "password leaked: {shown}");
    }
    // The live node is unaffected.
    store.apply(0, &batch(1, 1, &[("k", 1)])).await?;
    Ok(())
}

#[tokio::test]
async fn unreachable_node_fails_with_a_connect_error_when_checked() -> TestResult {
    let dead_port = free_port()?;
    let store = connect(&format!("redis://127.0.0.1:{dead_port}")).await;

    // A health check records the connect failure as the reason the node is down.
    store.check_health().await;
    let err = Store::get(&store, 0, InstanceId::from_u64(1), &["k"])
        .await
        .unwrap_err();

    let Error::NodeUnavailable { reason, .. } = redis_error(&err) else {
        panic!("expected NodeUnavailable, got {err:?}");
    };
    assert!(reason.contains("cannot connect to redis node"), "{reason}");
    Ok(())
}

#[test]
fn garbage_url_is_rejected_naming_it_without_the_password() {
    let nodes = "redis://127.0.0.1:6379, redis://:hunter2-secret@bad host:x";

    let err = RedisConfig::from_urls(nodes).unwrap_err();

    assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
    let shown = everything_shown(&err);
    assert!(shown.contains("redis://:***@bad host:x"), "{shown}");
    assert!(
        !shown.contains("hunter2-secret"),
        "password leaked: {shown}"
    );
}

#[test]
fn the_same_node_twice_is_a_config_error() {
    let err = RedisConfig::from_urls("redis://h:1,redis://:pw@h:1/3").map(|c| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(RedisStore::connect(c))
    });

    let err = match err {
        Ok(Err(e)) => e,
        other => panic!("expected a ring error, got {other:?}"),
    };
    assert!(matches!(err, Error::Ring(_)), "{err:?}");
    assert!(everything_shown(&err).contains("h:1"));
}
