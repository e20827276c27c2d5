//! Any connection string: taking its `ssl*` keys and redacting it must not
//! panic; what is left reads the same again; an error never holds the
//! password.
#![no_main]

use libfuzzer_sys::fuzz_target;
use powa_fleet_actors::redact::redact_dsn;
use powa_fleet_actors::tls::{take_ssl_params, SslParams};

fuzz_target!(|data: &[u8]| {
    let dsn = String::from_utf8_lossy(data);
    let _ = redact_dsn(&dsn);
    match take_ssl_params(&dsn) {
        Ok((rest, _)) => {
            let (again, none) = take_ssl_params(&rest).expect("the rest reads again");
            assert_eq!(again, rest);
            assert_eq!(none, SslParams::default());
        }
        Err(e) => assert!(!e.is_empty()),
    }
});
