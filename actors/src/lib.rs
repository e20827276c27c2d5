//! The engine of powa-fleet: actors and the PoWA domain logic beside them.

pub mod protocol;
