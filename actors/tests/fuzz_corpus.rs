//! The `cargo fuzz` seed corpus (actors/fuzz/corpus), replayed on the
//! stable toolchain with the fuzz targets' checks: each file is a case the
//! property tests found or a boundary of the grammar.

use std::path::PathBuf;

use powa_fleet_actors::pgpass::find;
use powa_fleet_actors::protocol::{parse, MAX_CHANNEL, MAX_PAYLOAD};
use powa_fleet_actors::redact::{redact_dsn, scrub};
use powa_fleet_actors::tls::{take_ssl_params, SslParams};

fn corpus(target: &str) -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut cases: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let bytes = std::fs::read(&path).expect("corpus file");
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, String::from_utf8_lossy(&bytes).into_owned())
        })
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "empty corpus {}", dir.display());
    cases
}

#[test]
fn protocol_corpus() {
    for (name, payload) in corpus("protocol_parse") {
        match parse(&payload) {
            Ok(request) => {
                if let Some(c) = request.reply_to.channel() {
                    assert!(!c.is_empty() && c.len() <= MAX_CHANNEL, "{name}");
                }
            }
            Err(rejection) => {
                if let Some((channel, answer)) = &rejection.reply {
                    assert!(
                        !channel.is_empty() && channel.len() <= MAX_CHANNEL,
                        "{name}"
                    );
                    let encoded = answer.encode();
                    assert!(
                        encoded.len() <= MAX_PAYLOAD && !encoded.contains('\0'),
                        "{name}"
                    );
                }
            }
        }
    }
}

#[test]
fn dsn_corpus() {
    for (name, dsn) in corpus("dsn") {
        let redacted = redact_dsn(&dsn);
        assert!(
            !redacted.contains("Pw-7Hq3Zx") && !redacted.contains("hunter2"),
            "{name}: {redacted}"
        );
        match take_ssl_params(&dsn) {
            Ok((rest, _)) => {
                let (again, none) = take_ssl_params(&rest).expect("the rest reads again");
                assert_eq!(again, rest, "{name}");
                assert_eq!(none, SslParams::default(), "{name}");
            }
            Err(e) => {
                assert!(!e.is_empty(), "{name}");
                assert!(
                    !e.contains("Pw-7Hq3Zx") && !e.contains("secret2"),
                    "{name}: {e}"
                );
            }
        }
    }
}

#[test]
fn pgpass_corpus() {
    for (name, text) in corpus("pgpass") {
        for (host, port, db, user) in [("h", 5432, "d", "u"), ("*", 1, "", "a:b")] {
            if let Some(password) = find(&text, host, port, db, user) {
                assert!(!password.is_empty() && !password.contains('\n'), "{name}");
            }
        }
    }
}

#[test]
fn scrub_corpus() {
    for (name, text) in corpus("scrub") {
        let (secret, message) = text.split_once('\n').unwrap_or(("", &text));
        let scrubbed = scrub(message, &[secret]);
        if !message.contains(['=', '/']) {
            assert_eq!(scrubbed, message, "{name}");
        } else {
            assert!(scrubbed.contains("********"), "{name}: {scrubbed}");
        }
    }
}
