//! Test-only helpers for powa-fleet's integration tests and benchmarks, on
//! top of the sandbox (throwaway clusters, fleet, workload), which this
//! crate re-exports under its old paths.
//!
//! [`certs`] makes a test CA and certificates; [`daemon`] runs the
//! powa-fleet binary and talks to it as powa-web does; [`reference`]
//! launches (and installs) the reference collector; [`simfleet`] simulates
//! a fleet on many loopback addresses. None of this ships in the binary.

pub mod certs;
pub mod daemon;
pub mod reference;
pub mod simfleet;

pub use powa_fleet_sandbox::{cluster, error, fleet, pgbin, stack, workload};
pub use powa_fleet_sandbox::{require_binaries, Cluster, ClusterOptions, Fleet, HarnessError};
pub use powa_fleet_sandbox::{PgBin, ServerTls, Stack};
