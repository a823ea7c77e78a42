//! Self-tests of the test kit against real redis-server processes.

mod node;
mod proxy;

/// Test result: `?` on any error, which fails the test with its message.
pub type TestResult = Result<(), Box<dyn std::error::Error>>;
