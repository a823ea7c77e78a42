//! Embedding tally-counter in another service: count events in memory, read them back
//! exactly, and shut down without losing any.
//!
//! Run with `cargo run -p tally-counter --example embed`. A real service would pass a
//! `tally_redis::RedisStore` (or its own `Store`) instead of the in-process `MemoryStore`.

use std::time::Duration;

use tally_counter::{Counter, CounterConfig, MemoryStore};

#[tokio::main]
async fn main() -> Result<(), tally_counter::Error> {
    let config = CounterConfig {
        name: "downloads".to_owned(),
        batch_interval: Duration::from_millis(200),
        ..CounterConfig::default()
    };
    let counter = Counter::new(MemoryStore::new(), config)?;

    // Request handlers call `increment`: no I/O, so it is fine on any hot path.
    let handlers: Vec<_> = (0..4)
        .map(|worker| {
            let counter = counter.clone();
            tokio::spawn(async move {
                for i in 0..1_000 {
                    let file = format!("file-{}", (worker + i) % 10);
                    counter.increment(&file, 1)?;
                }
                Ok::<_, tally_counter::Error>(())
            })
        })
        .collect();
    for handler in handlers {
        handler.await.expect("handler task panicked")?;
    }

    // Reads include what is not written yet.
    let count = counter.get("file-3").await?;
    println!(
        "file-3: {} downloads (served via {:?})",
        count.value, count.served_via
    );

    let snapshot = counter.snapshot();
    println!(
        "buffered keys before shutdown: {}",
        snapshot.write_buffer_size
    );

    // On shutdown, flush within a deadline and learn what (if anything) was not written.
    let store_view = counter.clone();
    let report = counter.shutdown(Duration::from_secs(5)).await;
    println!(
        "shutdown wrote {} keys, {} left unwritten; stored total for file-3: {}",
        report.keys_written,
        report.keys_unwritten,
        store_view.store().value("file-3")
    );
    Ok(())
}
