//! The stack switch: the clusters run the PostgreSQL and PoWA releases of
//! the stack `POWAFLEET_STACK` names, so a run that says it tested a stack
//! did test it.

use powa_fleet_sandbox::{require_binaries, Fleet, Stack};

#[test]
fn clusters_run_the_selected_stack() {
    require_binaries().expect("the selected stack is installed");
    let stack = Stack::from_env().unwrap();
    let fleet = Fleet::start(1).expect("fleet starts");
    for cluster in std::iter::once(&fleet.repository).chain(&fleet.remotes) {
        let found = cluster
            .psql(
                "powa",
                "SELECT current_setting('server_version_num')::int / 10000, \
                        (SELECT extversion FROM pg_extension WHERE extname = 'powa')",
            )
            .unwrap();
        let (pg, powa) = found.split_once('|').unwrap();
        let expected = match stack {
            Stack::Pg15Powa4 => Some(("15", "4.1")),
            Stack::Pg17Powa5 { .. } => Some(("17", "5.0")),
            // A hand-built tree is whatever was built.
            Stack::BinDir(_) => None,
        };
        if let Some((want_pg, want_powa)) = expected {
            assert_eq!(pg, want_pg, "PostgreSQL of {}", stack.name());
            assert!(
                powa.starts_with(&format!("{want_powa}.")),
                "powa {powa} on {}",
                stack.name()
            );
        }
    }
}
