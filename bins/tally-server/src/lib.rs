//! tally-server: the HTTP server (not built yet).
//!
//! This crate will hold the actix-web application that serves the visit-counter and
//! request-statistics APIs (issue 6 and 7). Until then it exports nothing.
#![deny(missing_docs)]
