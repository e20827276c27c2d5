//! Properties of secret scrubbing: in any message quoting a connection
//! string, the password (short, repeated, an SQL keyword, quoted with
//! escapes or percent-encoded) is masked where the string holds it, and no
//! other byte of the message changes.

mod support;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use powa_fleet_actors::redact::{redact_dsn, scrub};
use proptest::prelude::*;

const MASK: &str = "********";

/// What a URI's user info must encode.
const USERINFO: &AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'%')
    .add(b'@')
    .add(b':')
    .add(b'/')
    .add(b'?')
    .add(b'&')
    .add(b'#');

fn secret() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(vec![
            "a", "aa", "abab", "select", "SELECT", "public", "powa", "error", "host", "5432", "*",
            "'", "\\", "=", "password", "********",
        ])
        .prop_map(str::to_owned),
        "[a-z]{1,3}",
        "[^\0]{1,12}",
    ]
}

/// A message word: never `=`, `:` or `/`, so prose makes no pair or URI;
/// sometimes the secret itself, which must stay as it is.
fn words(secret: String) -> impl Strategy<Value = Vec<String>> {
    let plain = secret.chars().all(|c| c.is_ascii_alphanumeric());
    let word = prop_oneof![
        4 => "[A-Za-z0-9,.;()\"'!?-]{1,10}",
        1 => Just(if plain { secret } else { "x".to_string() }),
        1 => Just("SELECT".to_string()),
    ];
    prop::collection::vec(word, 0..6)
}

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A value as libpq reads it: quoted, or bare when that needs no escape.
fn written(value: &str, quoted: bool) -> String {
    let bare = !quoted
        && !value.is_empty()
        && !value.starts_with('\'')
        && !value.contains(|c: char| c.is_whitespace() || c == '\\');
    if bare {
        value.to_string()
    } else {
        quote(value)
    }
}

/// A key=value string with `secret` as its password (and text keys only, so
/// that it parses), and the same string
/// as it must read once masked (with `same_masked`, other values equal to
/// the secret too).
fn key_value(secret: String, same_masked: bool) -> impl Strategy<Value = (String, String)> {
    let other = (
        proptest::sample::select(vec!["host", "user", "dbname", "application_name"]),
        prop_oneof!["[a-z0-9]{1,8}", Just(secret.clone())],
        any::<bool>(),
    );
    (
        prop::collection::vec(other.clone(), 0..3),
        any::<bool>(),
        " ?= ?",
        prop::collection::vec(other, 0..3),
    )
        .prop_map(move |(before, quoted, eq, after)| {
            let password = written(&secret, quoted);
            // Each pair as written, and as it reads once masked.
            let pair = |(key, value, quoted): &(&str, String, bool)| {
                let written = written(value, *quoted);
                let shown = if same_masked && *value == secret {
                    MASK
                } else {
                    &written
                };
                (format!("{key}={written}"), format!("{key}={shown}"))
            };
            let mut pairs: Vec<(String, String)> = before.iter().map(pair).collect();
            pairs.push((
                format!("password{eq}{password}"),
                format!("password{eq}{MASK}"),
            ));
            pairs.extend(after.iter().map(pair));
            let (text, masked): (Vec<String>, Vec<String>) = pairs.into_iter().unzip();
            (text.join(" "), masked.join(" "))
        })
}

/// A URI with `secret` in its user info and maybe its query, and the same
/// URI as it must read once masked.
fn uri(secret: String) -> impl Strategy<Value = (String, String)> {
    (any::<bool>(), any::<bool>(), "(/[a-z]{1,5})?").prop_map(move |(all, in_query, path)| {
        let encoded = if all {
            utf8_percent_encode(&secret, NON_ALPHANUMERIC).to_string()
        } else {
            utf8_percent_encode(&secret, USERINFO).to_string()
        };
        let (query, masked_query) = if in_query {
            (
                format!("?sslmode=require&password={encoded}"),
                format!("?sslmode=require&password={MASK}"),
            )
        } else {
            (String::new(), String::new())
        };
        (
            format!("postgresql://powa:{encoded}@db:5432{path}{query}"),
            format!("postgresql://powa:{MASK}@db:5432{path}{masked_query}"),
        )
    })
}

fn message() -> impl Strategy<Value = (String, String, String)> {
    secret().prop_flat_map(|secret| {
        let dsn = prop_oneof![key_value(secret.clone(), true), uri(secret.clone())];
        (words(secret.clone()), dsn, words(secret.clone())).prop_map(
            move |(before, (dsn, masked), after)| {
                let join = |middle: &str| {
                    let mut all = before.clone();
                    all.push(middle.to_string());
                    all.extend(after.iter().cloned());
                    all.join(" ")
                };
                (secret.clone(), join(&dsn), join(&masked))
            },
        )
    })
}

proptest! {
    #![proptest_config(support::share(0.6))]
    #[test]
    fn scrub_masks_the_password_and_nothing_else((secret, text, expected) in message()) {
        prop_assert_eq!(scrub(&text, &[&secret]), expected);
    }
}

proptest! {
    #![proptest_config(support::share(0.2))]
    #[test]
    fn redact_dsn_masks_the_password_and_nothing_else(
        (text, expected) in secret()
            .prop_flat_map(|s| prop_oneof![key_value(s.clone(), false), uri(s)])
    ) {
        prop_assert_eq!(redact_dsn(&text), expected);
    }
}

proptest! {
    #![proptest_config(support::share(0.2))]
    #[test]
    fn text_without_pairs_or_uris_is_left_alone(
        text in "[^=/]{0,60}",
        secrets in prop::collection::vec(secret(), 0..3),
    ) {
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        prop_assert_eq!(scrub(&text, &secrets), text);
    }
}
