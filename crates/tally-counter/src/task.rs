//! Background tasks that survive their own panics.

use std::future::Future;

use futures::FutureExt as _;

/// Runs the future `make` returns until it completes. When it panics instead, calls
/// `on_panic` with the panic's message (to log and count it) and runs a new one from
/// `make`: a background task (a shard's flusher, a store's health check) then never stops
/// for good on a bug, and its state, kept outside the future, carries over.
///
/// Counted in `tally_task_panics_total{task}` by the callers, which know their labels.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let mut runs = 0;
/// let mut panics = Vec::new();
/// tally_counter::restart_on_panic(
///     || {
///         runs += 1;
///         let first = runs == 1;
///         async move { assert!(!first, "first run fails") }
///     },
///     |message| panics.push(message.to_owned()),
/// )
/// .await;
/// assert_eq!(runs, 2);
/// assert_eq!(panics, ["first run fails"]);
/// # });
/// ```
pub async fn restart_on_panic<F, Fut>(mut make: F, mut on_panic: impl FnMut(&str))
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        let run = std::panic::AssertUnwindSafe(make()).catch_unwind().await;
        match run {
            Ok(()) => return,
            Err(panic) => on_panic(panic_message(panic.as_ref())),
        }
    }
}

/// The message a panic was raised with, when it is text.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic without a text message)")
}
