//! Any password file: looking up a password must not panic, and a found
//! password is never empty nor spans lines.
#![no_main]

use libfuzzer_sys::fuzz_target;
use powa_fleet_actors::pgpass::find;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for (host, port, db, user) in [("h", 5432, "d", "u"), ("*", 1, "", "a:b")] {
        if let Some(password) = find(&text, host, port, db, user) {
            assert!(!password.is_empty() && !password.contains('\n'));
        }
    }
});
