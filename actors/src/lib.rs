//! The powa-fleet engine: the actor system that collects a fleet of
//! PostgreSQL servers into a PoWA repository, and the actix-free domain
//! modules it is built on (NOTIFY protocol, repository SQL, COPY pipeline,
//! connections, errors). See ARCHITECTURE.md at the top of the repository.

pub mod assignment;
pub mod connect;
pub mod copy;
pub mod error;
pub mod fault;
pub mod fencing;
pub mod gate;
pub mod job;
pub mod layout;
pub mod listener;
pub mod liveness;
pub mod member_actor;
pub mod membership;
pub mod metrics;
pub mod per_database;
pub mod pgpass;
pub mod privileges;
pub mod probes;
pub mod protocol;
pub mod redact;
pub mod repo_pool;
pub mod report;
pub mod repository;
pub mod restart;
pub mod schedule;
pub mod server;
pub mod settings;
pub mod snapshot;
pub mod snapshot_actor;
pub mod status;
pub mod supervisor;
pub mod text;
pub mod tls;
