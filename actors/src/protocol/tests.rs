//! Payload in, typed request or rejection and answer text out.

use super::*;

fn ok(payload: &str) -> Request {
    match parse(payload) {
        Ok(r) => r,
        Err(e) => panic!("{payload:?} rejected: {e:?}"),
    }
}

fn rejected(payload: &str) -> Rejection {
    match parse(payload) {
        Ok(r) => panic!("{payload:?} accepted: {r:?}"),
        Err(e) => e,
    }
}

/// The encoded answer of a rejection, asserting it goes to `channel`.
fn answer_on(payload: &str, channel: &str) -> String {
    let r = rejected(payload);
    let (c, a) = r.reply.unwrap_or_else(|| panic!("{payload:?}: no answer"));
    assert_eq!(c, channel);
    a.encode()
}

fn silent(payload: &str) -> RejectReason {
    let r = rejected(payload);
    assert!(r.reply.is_none(), "{payload:?} answered: {r:?}");
    r.reason
}

fn chan(c: &str) -> ReplyTo {
    ReplyTo::Channel(c.to_owned())
}

// ---- well-formed requests ----

#[test]
fn reload() {
    let r = ok("RELOAD r123");
    assert_eq!(r.reply_to, chan("r123"));
    assert_eq!(r.command, Command::Reload);
    assert_eq!(r.command.kind(), CommandKind::Reload);
    assert_eq!(Answer::reload_done().encode(), "RELOAD OK OK");
}

#[test]
fn trailing_space_from_powa_web_is_ignored() {
    // powa-web sends "%s %s %s" % (command, channel, " ".join([])).
    assert_eq!(ok("RELOAD r1 ").command, Command::Reload);
    assert_eq!(
        ok("WORKERS_STATUS r1 ").command,
        Command::WorkersStatus { srvid: None }
    );
    assert_eq!(
        ok("FORCE_SNAPSHOT r1 4   ").command,
        Command::ForceSnapshot { srvid: 4 }
    );
}

#[test]
fn reload_without_answer() {
    let r = ok("RELOAD -");
    assert_eq!(r.reply_to, ReplyTo::Nobody);
    assert_eq!(r.reply_to.channel(), None);
}

#[test]
fn workers_status_all_and_one() {
    assert_eq!(
        ok("WORKERS_STATUS r1"),
        Request {
            reply_to: chan("r1"),
            command: Command::WorkersStatus { srvid: None }
        }
    );
    assert_eq!(
        ok("WORKERS_STATUS r1 42").command,
        Command::WorkersStatus { srvid: Some(42) }
    );
    assert_eq!(
        ok("WORKERS_STATUS r1 007").command,
        Command::WorkersStatus { srvid: Some(7) }
    );
    assert_eq!(
        ok("WORKERS_STATUS r1 2147483647").command,
        Command::WorkersStatus {
            srvid: Some(i32::MAX)
        }
    );
}

#[test]
fn workers_status_without_channel_is_ignored() {
    assert_eq!(
        silent("WORKERS_STATUS -"),
        RejectReason::NeedsAnswer {
            command: CommandKind::WorkersStatus
        }
    );
    silent("WORKERS_STATUS - 1");
}

#[test]
fn force_snapshot() {
    let r = ok("FORCE_SNAPSHOT r9 3");
    assert_eq!(r.command, Command::ForceSnapshot { srvid: 3 });
    assert_eq!(ok("FORCE_SNAPSHOT - 3").reply_to, ReplyTo::Nobody);
    assert_eq!(
        Answer::snapshot_in_progress().encode(),
        "FORCE_SNAPSHOT OK Snapshot in progress"
    );
    assert_eq!(
        Answer::snapshot_will_begin().encode(),
        "FORCE_SNAPSHOT OK Snapshot will begin shortly"
    );
    assert_eq!(
        Answer::error(CommandKind::ForceSnapshot, "A snapshot is already running").encode(),
        "FORCE_SNAPSHOT ERROR A snapshot is already running"
    );
}

#[test]
fn refresh_db_cat() {
    assert_eq!(
        ok("REFRESH_DB_CAT r1 2 0").command,
        Command::RefreshDbCat {
            srvid: 2,
            dbnames: vec![]
        }
    );
    assert_eq!(
        ok("REFRESH_DB_CAT r1 2 3 a b\"c d'e").command,
        Command::RefreshDbCat {
            srvid: 2,
            dbnames: vec!["a".into(), "b\"c".into(), "d'e".into()]
        }
    );
    assert_eq!(
        Answer::catalogs_will_refresh().encode(),
        "REFRESH_DB_CAT OK Catalogs will be refreshed during the next snapshot"
    );
}

#[test]
fn odd_channels_are_carried_as_is() {
    for c in [
        "r\"1",
        "r'1",
        "{}",
        "{\"a\":1}",
        "\";DROP/**/TABLE/**/x;--",
        "é",
        "UPPER",
        "a\tb",
    ] {
        assert_eq!(ok(&format!("RELOAD {c}")).reply_to, chan(c), "{c:?}");
        assert_eq!(
            answer_on(&format!("FOO {c}"), c).split(' ').next(),
            Some("FOO")
        );
    }
    let longest = "x".repeat(MAX_CHANNEL);
    assert_eq!(ok(&format!("RELOAD {longest}")).reply_to, chan(&longest));
}

#[test]
fn permission_denied() {
    assert_eq!(
        Answer::permission_denied(CommandKind::Reload).encode(),
        "RELOAD ERROR Permission denied"
    );
    let a = Answer::permission_denied(CommandKind::RefreshDbCat);
    assert_eq!(a.status(), Status::Error);
    assert_eq!(a.command(), "REFRESH_DB_CAT");
    assert_eq!(a.data(), "Permission denied");
}

// ---- malformed payloads ----

#[test]
fn empty_payload() {
    assert_eq!(silent(""), RejectReason::Empty);
    assert_eq!(silent("   "), RejectReason::Empty);
}

#[test]
fn missing_channel_is_not_executed() {
    for p in [
        "RELOAD",
        "FORCE_SNAPSHOT",
        "WORKERS_STATUS",
        "FOO",
        "RELOAD ",
    ] {
        assert!(
            matches!(silent(p), RejectReason::MissingChannel { .. }),
            "{p:?}"
        );
    }
}

#[test]
fn unusable_channels_get_no_answer() {
    assert_eq!(silent("RELOAD  x"), RejectReason::EmptyChannel);
    let long = "c".repeat(MAX_CHANNEL + 1);
    assert_eq!(
        silent(&format!("RELOAD {long}")),
        RejectReason::ChannelTooLong {
            len: MAX_CHANNEL + 1
        }
    );
    // 22 three-byte characters: 66 bytes, over the limit though 22 chars.
    let wide = "é€".repeat(13);
    assert!(matches!(
        silent(&format!("FOO {wide}")),
        RejectReason::ChannelTooLong { .. }
    ));
    assert_eq!(silent("RELOAD a\0b"), RejectReason::ChannelHasNul);
}

#[test]
fn unknown_command() {
    assert_eq!(
        answer_on("FOO r1", "r1"),
        "FOO UNKNOWN Message \"FOO\" invalid, command ignored"
    );
    assert_eq!(
        answer_on("reload r1", "r1"),
        "reload UNKNOWN Message \"reload\" invalid, command ignored"
    );
    let r = rejected("FOO r1 a b");
    assert_eq!(
        r.reason,
        RejectReason::UnknownCommand { word: "FOO".into() }
    );
    assert_eq!(
        r.reason.to_string(),
        "Message \"FOO\" invalid, command ignored"
    );
    // Quotes in the command word are just text.
    assert_eq!(
        answer_on("O'Brien\" r1", "r1"),
        "O'Brien\" UNKNOWN Message \"O'Brien\"\" invalid, command ignored"
    );
    // Nowhere to answer.
    assert!(matches!(
        silent("FOO -"),
        RejectReason::UnknownCommand { .. }
    ));
}

#[test]
fn oversized_command_word_is_not_echoed() {
    let word = "A".repeat(1_000_000);
    let text = answer_on(&format!("{word} r1"), "r1");
    assert!(text.len() < 2 * MAX_ECHO + 64, "{}", text.len());
    let first = text.split(' ').next().unwrap_or_default();
    assert!(first.len() <= MAX_ECHO);
    assert!(first.ends_with("..."));
    match rejected(&format!("{word} r1")).reason {
        RejectReason::UnknownCommand { word } => assert!(word.len() <= MAX_ECHO),
        other => panic!("{other:?}"),
    }
    // Multi-byte characters are cut on a boundary.
    let word = "é".repeat(100);
    let text = answer_on(&format!("{word} r1"), "r1");
    assert!(text.starts_with("éé"));
}

#[test]
fn bad_server_ids_are_errors_not_all_servers() {
    for (p, v) in [
        ("WORKERS_STATUS r1 abc", "abc"),
        ("WORKERS_STATUS r1 -1", "-1"),
        ("WORKERS_STATUS r1 0", "0"),
        ("WORKERS_STATUS r1 +1", "+1"),
        ("WORKERS_STATUS r1 1.5", "1.5"),
        ("WORKERS_STATUS r1 2147483648", "2147483648"),
        ("WORKERS_STATUS r1 ١", "١"),
        ("WORKERS_STATUS r1  1", ""),
        ("FORCE_SNAPSHOT r1 abc", "abc"),
        ("FORCE_SNAPSHOT r1 -1", "-1"),
        ("FORCE_SNAPSHOT r1 0", "0"),
        ("REFRESH_DB_CAT r1 x 0", "x"),
    ] {
        let r = rejected(p);
        match &r.reason {
            RejectReason::InvalidServerId { value, .. } => assert_eq!(value, v, "{p:?}"),
            other => panic!("{p:?}: {other:?}"),
        }
        let (c, a) = r.reply.expect("answered");
        assert_eq!(c, "r1");
        assert_eq!(a.status(), Status::Error);
        let cmd = p.split(' ').next().unwrap_or_default();
        assert!(a.encode().starts_with(&format!("{cmd} ERROR ")), "{p:?}");
    }
    assert_eq!(
        answer_on("FORCE_SNAPSHOT r1 abc", "r1"),
        "FORCE_SNAPSHOT ERROR FORCE_SNAPSHOT: invalid server id \"abc\", expected a positive integer"
    );
    // A bad srvid with no answer channel is still rejected.
    assert!(matches!(
        silent("FORCE_SNAPSHOT - abc"),
        RejectReason::InvalidServerId { .. }
    ));
}

#[test]
fn missing_arguments() {
    for p in [
        "FORCE_SNAPSHOT r1",
        "REFRESH_DB_CAT r1",
        "REFRESH_DB_CAT r1 1",
    ] {
        let r = rejected(p);
        assert!(
            matches!(r.reason, RejectReason::MissingArgument { .. }),
            "{p:?}: {r:?}"
        );
        assert_eq!(r.reply.expect("answered").1.status(), Status::Error);
    }
    assert_eq!(
        answer_on("FORCE_SNAPSHOT r1", "r1"),
        "FORCE_SNAPSHOT ERROR FORCE_SNAPSHOT: missing server id"
    );
}

#[test]
fn extra_arguments() {
    for (p, extra) in [
        ("RELOAD r1 x", 1),
        ("WORKERS_STATUS r1 1 2", 1),
        ("FORCE_SNAPSHOT r1 1 2 3", 2),
        ("FORCE_SNAPSHOT r1 1  x", 2),
    ] {
        let r = rejected(p);
        match r.reason {
            RejectReason::TooManyArguments { extra: e, .. } => assert_eq!(e, extra, "{p:?}"),
            other => panic!("{p:?}: {other:?}"),
        }
        assert_eq!(r.reply.expect("answered").1.status(), Status::Error);
    }
}

#[test]
fn refresh_db_cat_count_must_match() {
    for (p, expected, found) in [
        ("REFRESH_DB_CAT r1 1 2 a", 2, 1),
        ("REFRESH_DB_CAT r1 1 0 a", 0, 1),
        ("REFRESH_DB_CAT r1 1 1 a b", 1, 2),
        ("REFRESH_DB_CAT r1 1 2 a  b", 2, 3),
    ] {
        let r = rejected(p);
        assert_eq!(
            r.reason,
            RejectReason::DbCountMismatch {
                command: CommandKind::RefreshDbCat,
                expected,
                found
            },
            "{p:?}"
        );
        assert_eq!(r.reply.expect("answered").1.status(), Status::Error);
    }
    for p in [
        "REFRESH_DB_CAT r1 1 x",
        "REFRESH_DB_CAT r1 1 -1",
        "REFRESH_DB_CAT r1 1 99999999999999999999999",
    ] {
        assert!(
            matches!(rejected(p).reason, RejectReason::InvalidDbCount { .. }),
            "{p:?}"
        );
    }
    assert!(matches!(
        rejected("REFRESH_DB_CAT r1 1 2 a  ").reason,
        RejectReason::DbCountMismatch { .. }
    ));
    assert!(matches!(
        rejected("REFRESH_DB_CAT r1 1 2 a \0").reason,
        RejectReason::InvalidDbName { .. }
    ));
    assert!(matches!(
        rejected("REFRESH_DB_CAT r1 1 3 a  b").reason,
        RejectReason::InvalidDbName { .. }
    ));
}

#[test]
fn payload_of_7999_bytes() {
    let base = "REFRESH_DB_CAT r1 5 ";
    // Names of 9 bytes plus a separator, padded with one name.
    let mut names = Vec::new();
    let mut len = base.len() + 6; // count word "NNNNN " approximated below
    while len + 10 <= MAX_PAYLOAD {
        names.push(format!("db{:07}", names.len()));
        len += 10;
    }
    let mut payload = format!("REFRESH_DB_CAT r1 5 {} {}", names.len(), names.join(" "));
    while payload.len() < MAX_PAYLOAD {
        payload.push('x');
    }
    payload.truncate(MAX_PAYLOAD);
    assert_eq!(payload.len(), MAX_PAYLOAD);
    let r = ok(&payload);
    match r.command {
        Command::RefreshDbCat { srvid, dbnames } => {
            assert_eq!(srvid, 5);
            assert_eq!(dbnames.len(), names.len());
        }
        other => panic!("{other:?}"),
    }
    // A 7999-byte unknown command is answered within bounds.
    let payload = format!("{} r1", "Z".repeat(MAX_PAYLOAD - 3));
    assert_eq!(payload.len(), MAX_PAYLOAD);
    assert!(answer_on(&payload, "r1").len() < 200);
}

#[test]
fn huge_payloads_are_parsed_or_refused_with_bounded_answers() {
    let words = "w ".repeat(500_000);
    for p in [
        format!("RELOAD r1 {words}"),
        format!("FORCE_SNAPSHOT r1 1 {words}"),
        format!("REFRESH_DB_CAT r1 1 3 {words}"),
        format!("REFRESH_DB_CAT r1 1 {} {words}", "9".repeat(1_000_000)),
        format!("WORKERS_STATUS r1 {}", "1".repeat(1_000_000)),
        format!("RELOAD {}", "c".repeat(1_000_000)),
        " ".repeat(1_000_000),
        "x".repeat(1_000_000),
    ] {
        if let Err(r) = parse(&p) {
            if let Some((_, a)) = r.reply {
                assert!(a.encode().len() <= MAX_PAYLOAD);
            }
        }
    }
    let n = 500_000;
    let big = format!("REFRESH_DB_CAT r1 1 {n} {}", "db ".repeat(n));
    match ok(&big).command {
        Command::RefreshDbCat { dbnames, .. } => assert_eq!(dbnames.len(), n),
        other => panic!("{other:?}"),
    }
}

// ---- answers ----

#[test]
fn encode_is_bounded_and_cut_on_char_boundaries() {
    let a = Answer::error(CommandKind::Reload, "é".repeat(10_000));
    let e = a.encode();
    assert!(e.len() <= MAX_PAYLOAD);
    assert!(e.len() >= MAX_PAYLOAD - 1);
    assert!(e.starts_with("RELOAD ERROR éé"));
    let a = Answer::ok(CommandKind::Reload, "a\0b");
    assert_eq!(a.encode(), "RELOAD OK a\u{FFFD}b");
    let a = Answer::ok(CommandKind::Reload, "\0".repeat(10_000));
    assert!(a.encode().len() <= MAX_PAYLOAD);
    assert_eq!(a.to_string(), a.encode());
}

fn fleet(n: i32, down_every: i32) -> Vec<(i32, String)> {
    (1..=n)
        .rev()
        .map(|id| {
            let s = if down_every > 0 && id % down_every == 0 {
                "no connection to remote server".to_owned()
            } else {
                "running".to_owned()
            };
            (id, s)
        })
        .collect()
}

fn status_json(a: &Answer) -> serde_json::Map<String, serde_json::Value> {
    let e = a.encode();
    assert!(e.len() <= MAX_PAYLOAD, "{}", e.len());
    let data = e
        .strip_prefix("WORKERS_STATUS OK ")
        .unwrap_or_else(|| panic!("bad prefix: {}", &e[..40.min(e.len())]));
    assert_eq!(data, a.data(), "data must not be cut by encode");
    match serde_json::from_str::<serde_json::Value>(data) {
        Ok(serde_json::Value::Object(m)) => m,
        other => panic!("not a JSON object: {other:?}"),
    }
}

#[test]
fn workers_status_small() {
    let states = vec![
        (2, "no connection to remote server".to_owned()),
        (1, "running".to_owned()),
    ];
    let a = workers_status(&states, None);
    // Non-running first, then by srvid; the reference's JSON layout.
    assert_eq!(
        a.encode(),
        "WORKERS_STATUS OK {\"2\": \"no connection to remote server\", \"1\": \"running\"}"
    );
    assert_eq!(
        workers_status(&states, Some(1)).encode(),
        "WORKERS_STATUS OK {\"1\": \"running\"}"
    );
    assert_eq!(
        workers_status(&states, Some(3)).encode(),
        "WORKERS_STATUS OK {}"
    );
    let none: [(i32, &str); 0] = [];
    assert_eq!(workers_status(&none, None).encode(), "WORKERS_STATUS OK {}");
}

#[test]
fn workers_status_escapes_states() {
    let states = [(1, "a\"b\\c\n\u{1}é"), (2, "{'x'}")];
    let m = status_json(&workers_status(&states, None));
    assert_eq!(m["1"], "a\"b\\c\n\u{1}é");
    assert_eq!(m["2"], "{'x'}");
}

/// `(srvid, running)` in the order of the raw answer text (serde_json's
/// map sorts its keys). Only for states without `, "` inside.
fn raw_order(a: &Answer) -> Vec<(i32, bool)> {
    let inner = a
        .data()
        .strip_prefix('{')
        .and_then(|d| d.strip_suffix('}'))
        .expect("braces");
    if inner.is_empty() {
        return Vec::new();
    }
    inner
        .split(", \"")
        .map(|e| {
            let e = e.trim_start_matches('"');
            let (k, v) = e.split_once("\": ").expect("entry");
            (k.parse().expect("numeric key"), v == "\"running\"")
        })
        .collect()
}

#[test]
fn workers_status_at_fleet_sizes() {
    for n in [1, 400, 1000, 5000] {
        let states = fleet(n, 7);
        let m = status_json(&workers_status(&states, None));
        let down: Vec<i32> = (1..=n).filter(|id| id % 7 == 0).collect();
        // Non-running servers come first; up to 1000 servers all of them
        // fit, at 5000 they fill the answer on their own.
        let order = raw_order(&workers_status(&states, None));
        assert_eq!(order.len(), m.len());
        let first_running = order.iter().position(|e| e.1).unwrap_or(order.len());
        assert!(
            order[first_running..].iter().all(|e| e.1),
            "n={n}: non-running after running"
        );
        for group in [&order[..first_running], &order[first_running..]] {
            assert!(group.windows(2).all(|w| w[0].0 < w[1].0), "n={n}: order");
        }
        if n <= 1000 {
            for id in &down {
                assert!(m.contains_key(&id.to_string()), "n={n}: {id} missing");
            }
        }
        if n == 1 {
            assert_eq!(m.len(), 1);
        } else {
            assert!(m.len() < n as usize, "n={n}: cannot all fit");
        }
    }
    // 400 healthy servers fit whole, as with the reference.
    assert_eq!(
        status_json(&workers_status(&fleet(400, 0), None)).len(),
        400
    );
}

#[test]
fn workers_status_raw_order() {
    // serde_json's Map sorts keys, so check the raw text for the order.
    let states = fleet(5000, 0);
    let a = workers_status(&states, None);
    let data = a.data();
    assert!(data.starts_with("{\"1\": \"running\", \"2\": \"running\""));
    let mut states = fleet(3000, 0);
    states[10].1 = "stopped".into(); // srvid 2990
    states[2000].1 = "stopping".into(); // srvid 1000
    let a = workers_status(&states, None);
    assert!(
        a.data()
            .starts_with("{\"1000\": \"stopping\", \"2990\": \"stopped\", \"1\": \"running\""),
        "{}",
        &a.data()[..80]
    );
    let m = status_json(&a);
    assert!(m.len() > 300);
    // Filled close to the limit.
    assert!(a.encode().len() > MAX_PAYLOAD - 30);
}

#[test]
fn workers_status_when_non_running_do_not_all_fit() {
    let states: Vec<(i32, String)> = (1..=2000)
        .map(|id| (id, format!("restarting in 8s: {}", "e".repeat(200))))
        .collect();
    let a = workers_status(&states, None);
    let m = status_json(&a);
    assert!(!m.is_empty());
    assert!(m.contains_key("1"));
    // Oversized states are cut, and still listed.
    let states = [(1, "x".repeat(100_000)), (2, "running".to_owned())];
    let m = status_json(&workers_status(&states, None));
    assert_eq!(m["1"].as_str().map(str::len), Some(MAX_STATE));
    assert_eq!(m["2"], "running");
}

// ---- property-style ----

/// xorshift64*: deterministic, no extra crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const TOKENS: &[&str] = &[
    "RELOAD",
    "WORKERS_STATUS",
    "FORCE_SNAPSHOT",
    "REFRESH_DB_CAT",
    "-",
    "",
    "r1",
    "0",
    "1",
    "-1",
    "2147483647",
    "2147483648",
    "abc",
    "\"",
    "'",
    "{}",
    "\0",
    "é",
    "€€€€€€€€€€€€€€€€€€€€€€€",
    "99999999999999999999",
];

fn check(payload: &str) {
    match parse(payload) {
        Ok(req) => {
            if let ReplyTo::Channel(c) = &req.reply_to {
                assert!(!c.is_empty() && c.len() <= MAX_CHANNEL && !c.contains('\0'));
                assert!(!c.contains(' '));
            }
            if let Command::WorkersStatus { srvid: Some(id) }
            | Command::ForceSnapshot { srvid: id }
            | Command::RefreshDbCat { srvid: id, .. } = req.command
            {
                assert!(id > 0);
            }
        }
        Err(r) => {
            if let Some((c, a)) = &r.reply {
                assert!(!c.is_empty() && c.len() <= MAX_CHANNEL);
                let e = a.encode();
                assert!(e.len() <= MAX_PAYLOAD);
                assert!(!e.contains('\0'));
                assert!(a.command().len() <= MAX_ECHO);
            }
            let _ = r.to_string();
        }
    }
}

#[test]
fn property_random_tokens_and_bytes() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..4000 {
        let n = rng.below(8);
        let words: Vec<&str> = (0..n).map(|_| TOKENS[rng.below(TOKENS.len())]).collect();
        check(&words.join(" "));
    }
    for _ in 0..4000 {
        let len = rng.below(200);
        let bytes: Vec<u8> = (0..len)
            .map(|_| match rng.below(4) {
                0 => b' ',
                1 => b"0123456789-"[rng.below(11)],
                _ => (rng.next() & 0xFF) as u8,
            })
            .collect();
        check(&String::from_utf8_lossy(&bytes));
    }
    for _ in 0..200 {
        let n = rng.below(3000) as i32;
        let states: Vec<(i32, String)> = (0..n)
            .map(|i| {
                let s = match rng.below(5) {
                    0 => "x".repeat(rng.below(2000)),
                    1 => String::from("\"\\\u{7}é"),
                    _ => String::from("running"),
                };
                (i + 1, s)
            })
            .collect();
        let wanted = (rng.below(4) == 0).then(|| rng.below(4000) as i32);
        let a = workers_status(&states, wanted);
        status_json(&a);
    }
}

#[test]
fn fleet_status_splits_into_parts_that_each_fit() {
    let items: Vec<String> = (1..=1000)
        .map(|i| {
            format!(
                "{{\"srvid\": {i}, \"name\": \"db{i}.example:5432\", \"state\": \"no connection to remote server\", \"last_errors\": [\"{}\"]}}",
                "e".repeat(i % 300)
            )
        })
        .collect();
    let answers = fleet_status(&items);
    assert!(answers.len() > 10, "{} parts", answers.len());
    let mut seen = Vec::new();
    for (i, answer) in answers.iter().enumerate() {
        let payload = answer.encode();
        assert!(payload.len() <= MAX_PAYLOAD, "{} bytes", payload.len());
        let data = payload.strip_prefix("FLEET_STATUS OK ").unwrap();
        let (counter, array) = data.split_once(' ').unwrap();
        assert_eq!(counter, format!("{}/{}", i + 1, answers.len()));
        let parsed: Vec<serde_json::Value> = serde_json::from_str(array).unwrap();
        seen.extend(parsed.into_iter().map(|v| v["srvid"].as_i64().unwrap()));
    }
    assert_eq!(seen, (1..=1000).collect::<Vec<i64>>());

    let empty = fleet_status::<&str>(&[]);
    assert_eq!(empty.len(), 1);
    assert_eq!(empty[0].encode(), "FLEET_STATUS OK 1/1 []");
}

#[test]
fn fleet_status_parses_like_workers_status() {
    let request = parse("FLEET_STATUS chan 12").unwrap();
    assert_eq!(request.command, Command::FleetStatus { srvid: Some(12) });
    assert!(parse("FLEET_STATUS - ").is_err());
    assert!(parse("FLEET_STATUS chan x").is_err());
}
