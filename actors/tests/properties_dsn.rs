//! Properties of connection strings: the `ssl*` keys come out of any
//! key=value string or URI with their values intact (quotes, escapes and
//! percent-encoding undone), the rest means what it meant to libpq, and
//! malformed input gets an error naming the problem, never a panic and
//! never a value.

mod support;

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use powa_fleet_actors::connect::repository_config_with_env;
use powa_fleet_actors::tls::{take_ssl_params, SslParams};
use proptest::prelude::*;

const SSL_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];
/// Keys whose value tokio-postgres keeps as text, to compare after parsing.
const TEXT_KEYS: [&str; 5] = ["user", "dbname", "password", "application_name", "options"];

/// A failed case, with the input that failed.
fn fail(input: &str, e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(format!("{input:?}: {e}"))
}

/// `head?pairs`, or `head` alone.
fn with_query(head: &str, pairs: &[String]) -> String {
    if pairs.is_empty() {
        head.to_string()
    } else {
        format!("{head}?{}", pairs.join("&"))
    }
}

fn expected_ssl(pairs: &[(String, String)]) -> SslParams {
    let last = |key: &str| {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    SslParams {
        mode: last("sslmode"),
        rootcert: last("sslrootcert"),
        cert: last("sslcert"),
        key: last("sslkey"),
    }
}

/// A value as libpq reads it: quoted (`'` and `\` escaped) or bare (`\`
/// before whitespace, `\` and a leading `'`).
fn render_value(value: &str, quoted: bool) -> String {
    if quoted || value.is_empty() {
        format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
    } else {
        let mut out = String::new();
        for (i, c) in value.chars().enumerate() {
            if c.is_whitespace() || c == '\\' || (i == 0 && c == '\'') {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }
}

fn key() -> impl Strategy<Value = String> {
    proptest::sample::select(
        SSL_KEYS
            .iter()
            .chain(TEXT_KEYS.iter())
            .map(|k| k.to_string())
            .collect::<Vec<_>>(),
    )
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9/._-]{0,12}",
        2 => "[ '\\\\=a%&?@:]{0,8}",
        2 => any::<String>(),
    ]
}

/// Pairs, and a connection string holding them (each value quoted or not,
/// with or without spaces around `=`, any whitespace between pairs).
fn key_value_dsn() -> impl Strategy<Value = (Vec<(String, String)>, String)> {
    let pair = (
        key(),
        value(),
        any::<bool>(),
        " {0,2}",
        " {0,2}",
        "[ \t\n]{1,2}",
    );
    prop::collection::vec(pair, 0..8).prop_map(|pairs| {
        let mut text = String::new();
        let mut plain = Vec::new();
        for (key, value, quoted, before, after, sep) in pairs {
            text.push_str(&format!(
                "{key}{before}={after}{}{sep}",
                render_value(&value, quoted)
            ));
            plain.push((key, value));
        }
        (plain, text)
    })
}

proptest! {
    #![proptest_config(support::share(0.35))]
    #[test]
    fn ssl_keys_leave_key_value_strings_intact((pairs, dsn) in key_value_dsn()) {
        let (rest, params) = take_ssl_params(&dsn).map_err(|e| fail(&dsn, e))?;
        prop_assert_eq!(&params, &expected_ssl(&pairs));
        // What is left has no ssl key and reads the same again.
        let (again, none) = take_ssl_params(&rest).map_err(TestCaseError::fail)?;
        prop_assert_eq!(&again, &rest);
        prop_assert_eq!(none, SslParams::default());
        // tokio-postgres reads the other values as written.
        let config: tokio_postgres::Config = rest.parse().map_err(|e| fail(&rest, e))?;
        let last = |key: &str| pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        prop_assert_eq!(config.get_user(), last("user"));
        prop_assert_eq!(config.get_dbname(), last("dbname"));
        prop_assert_eq!(config.get_password(), last("password").map(str::as_bytes));
        prop_assert_eq!(config.get_application_name(), last("application_name"));
        prop_assert_eq!(config.get_options(), last("options"));
    }
}

fn encoded(text: &str, encode_all: bool) -> String {
    if encode_all {
        utf8_percent_encode(text, NON_ALPHANUMERIC).to_string()
    } else {
        // Only what the query syntax needs.
        text.replace('%', "%25")
            .replace('&', "%26")
            .replace('=', "%3D")
            .replace('#', "%23")
    }
}

proptest! {
    #![proptest_config(support::share(0.35))]
    #[test]
    fn ssl_keys_leave_uris_decoded(
        head in "postgres(ql)?://([a-z]{1,6}(:[a-z%0-9]{0,6})?@)?[a-z0-9.]{1,10}(:[0-9]{1,5})?\
                 (/[a-z]{0,6})?",
        pairs in prop::collection::vec(
            (prop_oneof![key(), Just("application_name".to_string())],
             any::<String>().prop_filter("libpq refuses %00", |v| !v.contains('\0')),
             any::<bool>(), any::<bool>()),
            0..6,
        ),
    ) {
        let mut query = Vec::new();
        let mut kept = Vec::new();
        for (key, value, encode_key, encode_all) in &pairs {
            let key_text = encoded(key, *encode_key);
            let pair = format!("{key_text}={}", encoded(value, *encode_all));
            if !SSL_KEYS.contains(&key.as_str()) {
                kept.push(pair.clone());
            }
            query.push(pair);
        }
        let uri = with_query(&head, &query);
        let plain: Vec<(String, String)> =
            pairs.iter().map(|(k, v, _, _)| (k.clone(), v.clone())).collect();
        let (rest, params) = take_ssl_params(&uri).map_err(|e| fail(&uri, e))?;
        prop_assert_eq!(params, expected_ssl(&plain));
        prop_assert_eq!(rest, with_query(&head, &kept));
    }
}

/// A distinctive password, so that finding it in a message is a leak.
fn secret() -> impl Strategy<Value = String> {
    "Pw[A-Za-z0-9 '\\\\%]{6,12}"
}

fn garbage() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z =' \\\\%&?@:/\t]{0,20}",
        any::<String>(),
        Just("sslmode=%zz".to_string()),
        Just("='x'".to_string()),
        Just("key".to_string()),
    ]
}

proptest! {
    #![proptest_config(support::share(0.3))]
    #[test]
    fn malformed_strings_get_an_error_without_the_password(
        before in garbage(),
        secret in secret(),
        quoted in any::<bool>(),
        uri in any::<bool>(),
        after in garbage(),
    ) {
        let dsn = if uri {
            let pw = utf8_percent_encode(&secret, NON_ALPHANUMERIC);
            format!("postgresql://u:{pw}@h/d?{before}&{after}")
        } else {
            format!("{before} password={} {after}", render_value(&secret, quoted))
        };
        let encoded_pw = utf8_percent_encode(&secret, NON_ALPHANUMERIC).to_string();
        let no_secret = |text: &str| !text.contains(&secret) && !text.contains(&encoded_pw);
        match take_ssl_params(&dsn) {
            Ok(_) => {}
            Err(e) => {
                prop_assert!(!e.is_empty());
                prop_assert!(no_secret(&e), "{:?} → {}", dsn, e);
            }
        }
        // The repository path: ssl keys, then tokio-postgres; its error is
        // shown with the string redacted.
        if let Err(e) = repository_config_with_env(&dsn, |_| None) {
            let e = e.to_string();
            prop_assert!(e.contains("invalid connection string") || e.contains("ssl"), "{}", e);
            prop_assert!(no_secret(&e), "{:?} → {}", dsn, e);
        }
    }
}
