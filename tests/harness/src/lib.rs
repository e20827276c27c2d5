//! Throwaway PostgreSQL clusters with PoWA, for powa-fleet's integration
//! tests, its `demo` command and its benchmarks.
//!
//! A [`Cluster`] is one `initdb` in a temporary directory, listening on its
//! own loopback port, stopped and removed when dropped (even when a test
//! panics). A [`Fleet`] is a repository plus remote servers set up for
//! PoWA 4.1 or 5, whichever the PostgreSQL installation has, with helpers to register
//! servers and generate a workload.
//! [`daemon`] runs the powa-fleet binary and talks to it as powa-web does.
//! The PostgreSQL programs come from the [`stack`] `POWAFLEET_STACK` names
//! (Debian 12's PostgreSQL 15 and PoWA 4.1 by default, Debian 13's
//! PostgreSQL 17 and PoWA 5 in a chroot) or from `POWAFLEET_PG_BINDIR`;
//! as root they run as `postgres`.

pub mod certs;
pub mod cluster;
pub mod daemon;
pub mod error;
pub mod fleet;
pub mod pgbin;
pub mod reference;
pub mod simfleet;
pub mod stack;
pub mod workload;

pub use cluster::{Cluster, ClusterOptions, ServerTls};
pub use error::HarnessError;
pub use fleet::Fleet;
pub use pgbin::{require_binaries, PgBin};
pub use stack::Stack;
