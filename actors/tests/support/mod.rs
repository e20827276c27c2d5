//! What every property suite shares: how many cases a run generates.
//!
//! Each parser family runs [`DEFAULT_CASES`] generated cases in all per
//! run, spread over its properties; `POWAFLEET_PROPTEST_CASES=1000000`
//! (the README's longer mode) raises that total.

use proptest::test_runner::Config;

/// Cases per parser family and run when the variable is not set.
pub const DEFAULT_CASES: u32 = 100_000;

/// The total for a family: `POWAFLEET_PROPTEST_CASES`, else the default.
pub fn family_cases() -> u32 {
    match std::env::var("POWAFLEET_PROPTEST_CASES") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("POWAFLEET_PROPTEST_CASES={text:?} is not a number")),
        Err(_) => DEFAULT_CASES,
    }
}

/// The configuration of one property that takes `share` of its family's
/// cases (the shares of a family add up to 1). Failures are reported with
/// the shrunk input, which a regression test then keeps; nothing is
/// written beside the sources.
pub fn share(share: f64) -> Config {
    Config {
        cases: ((f64::from(family_cases()) * share).ceil() as u32).max(1),
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    }
}
