use std::time::Duration;

use redis::AsyncCommands as _;
use redis::aio::MultiplexedConnection;
use tally_testkit::{FaultProxy, Mode, RedisNode};

use crate::TestResult;

async fn connect(url: &str) -> redis::RedisResult<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_connection_timeout(Some(Duration::from_secs(5)));
    redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

#[tokio::test]
async fn pass_mode_forwards_both_ways() -> TestResult {
    let node = RedisNode::start()?;
    let proxy = FaultProxy::start(node.addr()).await?;
    let mut conn = connect(&proxy.url()).await?;

    let total: u64 = conn.incr("k", 5).await?;

    assert_eq!(total, 5);
    assert_eq!(node.get_u64("k")?, Some(5));
    assert_eq!(proxy.connections_accepted(), 1);
    Ok(())
}

#[tokio::test]
async fn black_hole_holds_traffic_until_the_partition_heals() -> TestResult {
    let node = RedisNode::start()?;
    let proxy = FaultProxy::start(node.addr()).await?;
    let mut conn = connect(&proxy.url()).await?;
    proxy.set_mode(Mode::BlackHole);

    let pending = tokio::spawn(async move { conn.incr::<_, _, u64>("k", 1).await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert!(
        !pending.is_finished(),
        "a command got through the black hole"
    );
    assert_eq!(node.get_u64("k")?, None, "the node saw the command");
    proxy.set_mode(Mode::Pass);
    assert_eq!(pending.await??, 1);
    Ok(())
}

#[tokio::test]
async fn black_hole_holds_new_connections_too() -> TestResult {
    let node = RedisNode::start()?;
    let proxy = FaultProxy::start(node.addr()).await?;
    proxy.set_mode(Mode::BlackHole);

    let attempt = tokio::time::timeout(Duration::from_millis(300), connect(&proxy.url())).await;

    assert!(attempt.is_err(), "connected through a black hole");
    Ok(())
}

#[tokio::test]
async fn drop_replies_loses_the_answer_of_an_executed_request() -> TestResult {
    let node = RedisNode::start()?;
    let proxy = FaultProxy::start(node.addr()).await?;
    let mut conn = connect(&proxy.url()).await?;
    proxy.set_mode(Mode::DropReplies(1));

    let lost = conn.incr::<_, _, u64>("k", 5).await;

    assert!(lost.is_err(), "the reply arrived: {lost:?}");
    assert_eq!(
        node.get_u64("k")?,
        Some(5),
        "the node did not execute the request"
    );
    assert_eq!(proxy.replies_dropped(), 1);
    assert_eq!(proxy.mode(), Mode::Pass);
    // The connection was closed; a new one works normally.
    let mut conn = connect(&proxy.url()).await?;
    assert_eq!(conn.incr::<_, _, u64>("k", 1).await?, 6);
    Ok(())
}

#[tokio::test]
async fn drop_replies_matching_spares_other_requests() -> TestResult {
    let node = RedisNode::start()?;
    let proxy = FaultProxy::start(node.addr()).await?;
    let mut conn = connect(&proxy.url()).await?;
    proxy.set_mode(Mode::DropRepliesMatching(1, b"INCRBY".to_vec()));

    let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
    let set: () = conn.set("other", 1).await?;
    let lost = conn.incr::<_, _, u64>("k", 3).await;

    assert_eq!(pong, "PONG");
    assert_eq!(set, ());
    assert!(lost.is_err(), "the INCRBY reply arrived: {lost:?}");
    assert_eq!(node.get_u64("k")?, Some(3));
    assert_eq!(proxy.replies_dropped(), 1);
    Ok(())
}

#[tokio::test]
async fn dropping_the_proxy_closes_its_connections() -> TestResult {
    let node = RedisNode::start()?;
    let proxy = FaultProxy::start(node.addr()).await?;
    let mut conn = connect(&proxy.url()).await?;
    let _: () = conn.set("k", 1).await?;

    drop(proxy);
    tokio::time::sleep(Duration::from_millis(50)).await;

    assert!(conn.get::<_, Option<u64>>("k").await.is_err());
    Ok(())
}

#[tokio::test]
async fn refuse_closes_every_connection_and_pass_heals_it() -> TestResult {
    let node = RedisNode::start()?;
    let proxy = FaultProxy::start(node.addr()).await?;
    let mut open = connect(&proxy.url()).await?;
    let _: () = open.set("k", 1).await?;
    proxy.set_mode(Mode::Refuse);

    let on_open = open.incr::<_, _, u64>("k", 1).await;
    let new = connect(&proxy.url()).await;

    assert!(on_open.is_err(), "a command went through: {on_open:?}");
    if let Ok(mut new) = new {
        // The handshake may complete in the kernel; the first command must fail.
        assert!(new.get::<_, Option<u64>>("k").await.is_err());
    }
    assert_eq!(node.get_u64("k")?, Some(1), "the node saw a command");
    proxy.set_mode(Mode::Pass);
    let mut healed = connect(&proxy.url()).await?;
    assert_eq!(healed.incr::<_, _, u64>("k", 1).await?, 2);
    Ok(())
}

#[tokio::test]
async fn set_mode_then_refuses_from_the_moment_the_reply_is_condemned() -> TestResult {
    let node = RedisNode::start()?;
    let proxy = FaultProxy::start(node.addr()).await?;
    let mut conn = connect(&proxy.url()).await?;
    proxy.set_mode_then(
        Mode::DropRepliesMatching(1, b"INCRBY".to_vec()),
        Mode::Refuse,
    );

    let lost = conn.incr::<_, _, u64>("k", 4).await;

    assert!(lost.is_err(), "the reply arrived: {lost:?}");
    assert_eq!(node.get_u64("k")?, Some(4), "the node executed the request");
    assert_eq!((proxy.replies_dropped(), proxy.replies_discarded()), (1, 1));
    assert_eq!(proxy.mode(), Mode::Refuse);
    let retry = match connect(&proxy.url()).await {
        Ok(mut conn) => conn.incr::<_, _, u64>("k", 4).await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(retry.is_err(), "a retry reached the node while refused");
    assert_eq!(node.get_u64("k")?, Some(4));
    Ok(())
}
