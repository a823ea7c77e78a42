//! tally-stats: request statistics (not built yet).
//!
//! This crate will count requests by URL path through tally-counter's batching core and rank
//! them for `GET /stats/`, and generate the synthetic traffic of `POST /test/{n}/`. It is an
//! empty placeholder until that work lands (issue 7); it exports nothing.
#![deny(missing_docs)]
