//! Fulcrum: an L4/L7 load balancer daemon.
//!
//! The request path reads shared state without locks: each upstream's [`table::Snapshot`] sits
//! behind `arc-swap`, each server's live counters are atomics, and each worker thread owns its
//! sockets and its upstream connection pool. See README.md for the design and operations guide.

pub mod access_log;
pub mod admin;
pub mod balance;
pub mod config;
pub mod daemon;
pub mod health;
pub mod lifecycle;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod table;
