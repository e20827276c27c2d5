//! Throwaway PostgreSQL clusters with PoWA, for powa-fleet's `demo` command,
//! its integration tests and its benchmarks. Product code: the release
//! binary links it for `demo`; test-only helpers live in the harness.
//!
//! A [`Cluster`] is one `initdb` in a temporary directory, listening on its
//! own loopback port, stopped and removed when dropped (even when a test
//! panics). A [`Fleet`] is a repository plus remote servers set up for
//! PoWA 4.1 or 5, whichever the PostgreSQL installation has, with helpers to register
//! servers and generate a workload.
//! The PostgreSQL programs come from the [`stack`] `POWAFLEET_STACK` names
//! (Debian 12's PostgreSQL 15 and PoWA 4.1 by default, Debian 13's
//! PostgreSQL 17 and PoWA 5 in a chroot) or from `POWAFLEET_PG_BINDIR`;
//! as root they run as `postgres`.

pub mod cluster;
pub mod error;
pub mod fleet;
pub mod pgbin;
pub mod stack;
pub mod workload;

pub use cluster::{Cluster, ClusterOptions, ServerTls};
pub use error::HarnessError;
pub use fleet::Fleet;
pub use pgbin::{require_binaries, PgBin};
pub use stack::Stack;
