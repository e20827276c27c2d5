//! Properties of the NOTIFY protocol: any payload is parsed without panic
//! into a request or a rejection whose answer is sendable; a request
//! printed as powa-web would send it parses back to itself; every answer
//! fits one NOTIFY payload.

mod support;

use powa_fleet_actors::protocol::{
    fleet_status, parse, workers_status, Answer, Command, CommandKind, ReplyTo, Request,
    MAX_CHANNEL, MAX_ECHO, MAX_PAYLOAD, MAX_STATE,
};
use proptest::prelude::*;

const KINDS: [CommandKind; 5] = [
    CommandKind::Reload,
    CommandKind::WorkersStatus,
    CommandKind::ForceSnapshot,
    CommandKind::RefreshDbCat,
    CommandKind::FleetStatus,
];

/// A channel `pg_notify` accepts: 1 to 63 bytes, no NUL, no space.
fn assert_valid_channel(channel: &str) {
    assert!(!channel.is_empty(), "empty channel");
    assert!(
        channel.len() <= MAX_CHANNEL,
        "channel of {} bytes",
        channel.len()
    );
    assert!(!channel.contains(['\0', ' ']), "{channel:?}");
}

fn assert_sendable(answer: &Answer) {
    let payload = answer.encode();
    assert!(
        payload.len() <= MAX_PAYLOAD,
        "payload of {} bytes",
        payload.len()
    );
    assert!(!payload.contains('\0'));
    assert!(answer.command().len() <= MAX_ECHO);
    // NUL bytes, which PostgreSQL text cannot hold, are sent as U+FFFD.
    let head = format!("{} {} ", answer.command(), answer.status()).replace('\0', "\u{FFFD}");
    assert!(payload.starts_with(&head), "{payload:?}");
}

/// Words a payload is made of: the real ones, numbers of every shape,
/// channels, and any text at all.
fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(vec![
            "RELOAD", "WORKERS_STATUS", "FORCE_SNAPSHOT", "REFRESH_DB_CAT", "FLEET_STATUS",
            "reload", "-", "", "0", "1", "+1", "-1", "2147483647", "2147483648", "007",
            "99999999999999999999", "ch", "\0", "é",
        ])
        .prop_map(str::to_owned),
        2 => "[0-9]{1,12}",
        2 => "[a-z_\"'{}]{1,70}",
        1 => "\\PC{0,80}",
        1 => any::<String>(),
    ]
}

fn payload() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (prop::collection::vec(word(), 0..8), " {0,3}")
            .prop_map(|(words, tail)| words.join(" ") + &tail),
        1 => any::<String>(),
        1 => ("[A-Z_]{1,20}", "[a-z]{1,10}", 0usize..3000)
            .prop_map(|(cmd, ch, n)| format!("{cmd} {ch} {}", "x ".repeat(n))),
    ]
}

/// How powa-web (and `powa-fleet status`) writes a request.
fn print(request: &Request) -> String {
    let channel = request.reply_to.channel().unwrap_or("-");
    let args: Vec<String> = match &request.command {
        Command::Reload => vec![],
        Command::WorkersStatus { srvid } | Command::FleetStatus { srvid } => {
            srvid.iter().map(i32::to_string).collect()
        }
        Command::ForceSnapshot { srvid } => vec![srvid.to_string()],
        Command::RefreshDbCat { srvid, dbnames } => {
            let mut args = vec![srvid.to_string(), dbnames.len().to_string()];
            args.extend(dbnames.iter().cloned());
            args
        }
    };
    format!("{} {channel} {}", request.command.kind(), args.join(" "))
}

fn request() -> impl Strategy<Value = Request> {
    // 15 characters are at most 60 bytes; 63 ASCII ones are the longest.
    let channel = prop_oneof!["[^ \\x00]{1,15}", "[a-z0-9_]{63}"];
    let reply_to = prop_oneof![
        4 => channel.prop_filter("not the no-answer word", |c| c != "-").prop_map(ReplyTo::Channel),
        1 => Just(ReplyTo::Nobody),
    ];
    let srvid = 1..=i32::MAX;
    let dbname = "[^ \\x00]{1,20}";
    let command = prop_oneof![
        Just(Command::Reload),
        proptest::option::of(srvid.clone()).prop_map(|srvid| Command::WorkersStatus { srvid }),
        proptest::option::of(srvid.clone()).prop_map(|srvid| Command::FleetStatus { srvid }),
        srvid
            .clone()
            .prop_map(|srvid| Command::ForceSnapshot { srvid }),
        (srvid, prop::collection::vec(dbname, 0..6))
            .prop_map(|(srvid, dbnames)| Command::RefreshDbCat { srvid, dbnames }),
    ];
    (reply_to, command)
        .prop_map(|(reply_to, command)| Request { reply_to, command })
        // Status nobody reads is refused (see parse); not a round trip.
        .prop_filter("status needs a channel", |r| {
            r.reply_to != ReplyTo::Nobody
                || !matches!(
                    r.command,
                    Command::WorkersStatus { .. } | Command::FleetStatus { .. }
                )
        })
}

/// Answer data: any text, text around the payload limit, NUL bytes and
/// multi-byte characters where they cross it.
fn answer_data() -> impl Strategy<Value = String> {
    let around_limit = (0u32..300, 7900..8100usize).prop_map(|(c, n)| {
        char::from_u32(0x20 + c)
            .unwrap_or('x')
            .to_string()
            .repeat(n)
    });
    let nul_and_wide = (
        proptest::sample::select(vec!["\0", "é", "\0é"]),
        2600..2700usize,
    )
        .prop_map(|(c, n)| c.repeat(n));
    prop_oneof![8 => any::<String>(), 1 => around_limit, 1 => nul_and_wide]
}

proptest! {
    #![proptest_config(support::share(0.5))]
    #[test]
    fn any_payload_is_parsed_or_rejected_with_a_sendable_answer(payload in payload()) {
        match parse(&payload) {
            Ok(request) => {
                if let Some(channel) = request.reply_to.channel() {
                    assert_valid_channel(channel);
                }
                // What was accepted prints back to the same request.
                prop_assert_eq!(parse(&print(&request)), Ok(request));
            }
            Err(rejection) => {
                let reason = rejection.reason.to_string();
                prop_assert!(!reason.is_empty());
                let len = reason.len();
                prop_assert!(len <= 3 * MAX_ECHO + 100, "reason of {} bytes", len);
                if let Some((channel, answer)) = &rejection.reply {
                    assert_valid_channel(channel);
                    assert_sendable(answer);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(support::share(0.3))]
    #[test]
    fn printed_requests_parse_back(request in request(), trailing in " {0,2}") {
        let payload = print(&request) + &trailing;
        prop_assert_eq!(parse(&payload), Ok(request));
    }
}

proptest! {
    #![proptest_config(support::share(0.1))]
    #[test]
    fn every_answer_fits_one_payload(
        kind in proptest::sample::select(KINDS.to_vec()),
        data in answer_data(),
        word in any::<String>(),
    ) {
        for answer in [
            Answer::ok(kind, data.clone()),
            Answer::error(kind, data.clone()),
            Answer::unknown(&word),
            Answer::unknown(&data),
        ] {
            assert_sendable(&answer);
            let payload = answer.encode();
            // Data is cut, never changed (NUL apart).
            if !answer.data().contains('\0') && !answer.command().contains('\0') {
                let head = format!("{} {} ", answer.command(), answer.status());
                prop_assert!(answer.data().starts_with(&payload[head.len()..]));
            }
        }
    }
}

proptest! {
    #![proptest_config(support::share(0.05))]
    #[test]
    fn workers_status_is_json_within_one_payload(
        states in prop::collection::btree_map(
            1..2000i32,
            prop_oneof![
                3 => Just("running".to_owned()),
                1 => "\\PC{0,40}",
                1 => (proptest::sample::select(vec!['"', '\\', '\0', 'a', 'é']), 900..1100usize)
                    .prop_map(|(c, n)| c.to_string().repeat(n)),
            ],
            0..150,
        ),
        wanted in proptest::option::of(1..2000i32),
    ) {
        let states: Vec<(i32, String)> = states.into_iter().collect();
        let answer = workers_status(&states, wanted);
        assert_sendable(&answer);
        let listed: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(answer.data()).expect("valid JSON object");
        let is_wanted = |id: i32| wanted.is_none() || wanted == Some(id);
        for (key, value) in &listed {
            let id: i32 = key.parse().expect("srvid keys");
            prop_assert!(is_wanted(id));
            let state = value.as_str().expect("string states");
            prop_assert!(state.len() <= MAX_STATE);
            prop_assert!(states.iter().any(|(i, s)| *i == id && s.starts_with(state)));
        }
        // When everything fits, everything is listed.
        let wanted_states: Vec<&(i32, String)> =
            states.iter().filter(|(id, _)| is_wanted(*id)).collect();
        // Long states repeat one character of 1 or 2 bytes: MAX_STATE (even)
        // is a character boundary.
        let entry = |s: &str| serde_json::to_string(&s[..s.len().min(MAX_STATE)]).unwrap().len();
        let total: usize = wanted_states.iter().map(|(_, s)| 16 + entry(s)).sum();
        if total + 64 < MAX_PAYLOAD {
            prop_assert_eq!(listed.len(), wanted_states.len());
        }
    }
}

proptest! {
    #![proptest_config(support::share(0.05))]
    #[test]
    fn fleet_status_parts_hold_every_item(
        sizes in prop::collection::vec(prop_oneof![9 => 0usize..400, 1 => 7000usize..8100], 0..80),
    ) {
        let items: Vec<String> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| serde_json::json!({ "srvid": i, "state": "x".repeat(*n) }).to_string())
            .collect();
        let answers = fleet_status(&items);
        let parts = answers.len();
        let mut seen = Vec::new();
        for (i, answer) in answers.iter().enumerate() {
            assert_sendable(answer);
            let counter = format!("{}/{parts} ", i + 1);
            let list = answer.data().strip_prefix(&counter).expect("part counter");
            let list: Vec<serde_json::Value> = serde_json::from_str(list).expect("JSON array");
            seen.extend(list.into_iter().map(|v| v.to_string()));
        }
        // Items too large for a payload on their own are left out; the
        // others all come, once, in order.
        let kept: Vec<String> = items.iter().filter(|i| seen.contains(i)).cloned().collect();
        prop_assert_eq!(&seen, &kept);
        let head = "FLEET_STATUS OK ".len() + "999/999 []".len();
        for item in &items {
            prop_assert!(seen.contains(item) || item.len() + head + 20 > MAX_PAYLOAD);
        }
    }
}
