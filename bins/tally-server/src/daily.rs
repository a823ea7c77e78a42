//! Daily counts: every visit also counts on its UTC day (the day the server received it),
//! under the page's sub-key `{page}\u{1f}{YYYY-MM-DD}` (see [`tally_counter::routing_key`]):
//! the same counter, the same batches, on the page's node (or cluster bucket), so a day's
//! count is exactly as exact as the total, and a page's days are read in one store call.
//!
//! Day counts expire after `DAILY_RETENTION_DAYS`: on Redis by a TTL the batch script sets
//! when it creates a day's key, on the embedded and memory stores by a sweep
//! ([`sweep_old_days`]) every hour that removes the days before the cutoff.

use std::time::Duration;

use chrono::{NaiveDate, Utc};
use tally_counter::{Counter, SUBKEY_SEPARATOR};

use crate::store::AppStore;

/// Most days one `GET .../daily` answers.
pub(crate) const MAX_DAYS: u32 = 366;
/// Days `GET .../daily` answers without `?days=`.
pub(crate) const DEFAULT_DAYS: u32 = 30;
/// How often the embedded and memory stores remove expired days.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Today in UTC.
pub(crate) fn today() -> NaiveDate {
    Utc::now().date_naive()
}

/// The counter key of `page`'s count on `day`.
pub(crate) fn day_key(page: &str, day: NaiveDate) -> String {
    format!("{page}{SUBKEY_SEPARATOR}{}", day.format("%Y-%m-%d"))
}

/// The counter keys of `page`'s counts on `days`, in their order.
pub(crate) fn day_keys(page: &str, days: &[NaiveDate]) -> Vec<String> {
    days.iter().map(|day| day_key(page, *day)).collect()
}

/// The `days` days ending with `today`, oldest first.
pub(crate) fn days_ending(today: NaiveDate, days: u32) -> Vec<NaiveDate> {
    (0..days)
        .rev()
        .filter_map(|back| today.checked_sub_days(chrono::Days::new(u64::from(back))))
        .collect()
}

/// The first day still kept under a retention of `retention_days` days: days before it
/// are removed (`YYYY-MM-DD`, which sorts as the dates do).
pub(crate) fn first_kept_day(today: NaiveDate, retention_days: u32) -> String {
    today
        .checked_sub_days(chrono::Days::new(u64::from(retention_days)))
        .unwrap_or(NaiveDate::MIN)
        .format("%Y-%m-%d")
        .to_string()
}

/// `?days=` of a daily read: a whole number from 1 to [`MAX_DAYS`], [`DEFAULT_DAYS`] when
/// absent; `Err` with the value as received otherwise.
pub(crate) fn days_param(query: &str) -> Result<u32, String> {
    Ok(days_given(query)?.unwrap_or(DEFAULT_DAYS))
}

/// `?days=` as [`days_param`] reads it (percent-decoded, as every query parameter),
/// `None` when absent.
pub(crate) fn days_given(query: &str) -> Result<Option<u32>, String> {
    let value = match crate::routes::query_param(query, "days") {
        Ok(value) => value,
        Err(crate::routes::ParamError::Twice) => return Err("days given twice".to_owned()),
        Err(crate::routes::ParamError::Unreadable(why)) => {
            return Err(format!("the query string cannot be read: {why}"));
        }
    };
    let Some(value) = value else {
        return Ok(None);
    };
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_DAYS).contains(n) && value.bytes().all(|b| b.is_ascii_digit()))
        .map(Some)
        .ok_or_else(|| value.chars().take(64).collect())
}

/// Every [`SWEEP_EVERY`] (and once at start), removes the days before the retention from
/// the counter's store (a no-op on Redis, where each day's key expires by itself). Runs
/// until aborted.
pub(crate) async fn sweep_old_days(counter: Counter<AppStore>, retention_days: u32) {
    if retention_days == 0 {
        // Daily counts are off: days an earlier run counted stay as they are.
        return;
    }
    loop {
        let cutoff = first_kept_day(today(), retention_days);
        match counter.store().remove_subkeys_before(&cutoff).await {
            Ok(0) => {}
            Ok(removed) => {
                tracing::info!(
                    removed,
                    cutoff,
                    "removed day counts past DAILY_RETENTION_DAYS"
                );
            }
            Err(error) => tracing::warn!(
                error.message = %error,
                "cannot remove day counts past DAILY_RETENTION_DAYS; trying again in an hour"
            ),
        }
        tokio::time::sleep(SWEEP_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").expect("a date")
    }

    #[test]
    fn day_keys_are_sub_keys_of_their_page() {
        let key = day_key("page1", date("2026-12-01"));
        assert_eq!(key, "page1\u{1f}2026-12-01");
        assert_eq!(tally_counter::routing_key(&key), "page1");
    }

    #[test]
    fn days_end_today_oldest_first_across_month_and_year_ends() {
        let days = days_ending(date("2027-01-02"), 4);
        let shown: Vec<String> = days.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["2026-12-30", "2026-12-31", "2027-01-01", "2027-01-02"]
        );
        assert_eq!(days_ending(date("2028-03-01"), 2)[0], date("2028-02-29"));
    }

    #[test]
    fn the_first_kept_day_is_retention_days_before_today() {
        assert_eq!(first_kept_day(date("2026-12-01"), 400), "2025-10-27");
        assert_eq!(first_kept_day(date("2026-12-01"), 1), "2026-11-30");
    }

    #[test]
    fn days_param_takes_1_to_366_and_names_a_bad_value() {
        assert_eq!(days_param(""), Ok(30));
        assert_eq!(days_param("x=1"), Ok(30));
        assert_eq!(days_param("days=7"), Ok(7));
        assert_eq!(days_param("days=366"), Ok(366));
        for bad in ["0", "367", "-1", "1.5", "", "abc"] {
            assert_eq!(
                days_param(&format!("days={bad}")),
                Err(bad.to_owned()),
                "{bad}"
            );
        }
        assert!(days_param("days=1&days=2").is_err());
        // A query's `+` is a space: refused, shown decoded.
        assert_eq!(days_param("days=+5"), Err(" 5".to_owned()));
        // Percent-decoded like every parameter: `%37` is `7`.
        assert_eq!(days_param("days=%37"), Ok(7));
        assert_eq!(days_param("d%61ys=5"), Ok(5));
    }
}
