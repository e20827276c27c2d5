//! The client's side of the protocol against the daemon's: a request
//! encoded is parsed back to itself, an answer encoded is decoded back, a
//! FLEET_STATUS answer's parts carry their counter and items.

use super::*;

#[test]
fn every_request_encoded_parses_back() {
    let built = Request {
        reply_to: ReplyTo::Channel("powa_fleet_cli_42".to_string()),
        command: Command::FleetStatus { srvid: None },
    };
    assert_eq!(built.encode(), "FLEET_STATUS powa_fleet_cli_42");
    let nobody = Request {
        reply_to: ReplyTo::Nobody,
        command: Command::ForceSnapshot { srvid: 7 },
    };
    assert_eq!(nobody.encode(), "FORCE_SNAPSHOT - 7");
    for payload in [
        "RELOAD c",
        "WORKERS_STATUS c",
        "WORKERS_STATUS c 3",
        "FLEET_STATUS powa_fleet_cli_42",
        "FLEET_STATUS c 12",
        "FORCE_SNAPSHOT - 7",
        "REFRESH_DB_CAT c 2 0",
        "REFRESH_DB_CAT c 2 2 a b",
    ] {
        let request = parse(payload).expect("a well-formed request");
        assert_eq!(request.encode(), payload);
        assert_eq!(parse(&request.encode()), Ok(request));
    }
    assert_eq!(parse(&built.encode()), Ok(built));
    assert_eq!(parse(&nobody.encode()), Ok(nobody));
}

#[test]
fn answers_decode_to_what_was_encoded() {
    for answer in [
        Answer::reload_done(),
        Answer::snapshot_will_begin(),
        Answer::error(CommandKind::ForceSnapshot, "Server is not ready: starting"),
        Answer::unknown("HELLO"),
        Answer::ok(CommandKind::WorkersStatus, ""),
    ] {
        assert_eq!(Answer::decode(&answer.encode()), Some(answer));
    }
    let decoded = Answer::decode("WORKERS_STATUS OK").expect("a status word");
    assert_eq!(decoded.data(), "");
    assert_eq!(Answer::decode("RELOAD MAYBE OK"), None);
    assert_eq!(Answer::decode("RELOAD"), None);
}

#[test]
fn fleet_status_parts_carry_their_counter_and_items() {
    let items: Vec<String> = (0..400)
        .map(|i| format!("{{\"srvid\": {i}, \"name\": \"{}\"}}", "x".repeat(40)))
        .collect();
    let answers = fleet_status(&items);
    assert!(answers.len() > 1, "{} parts", answers.len());
    let mut seen = 0;
    for (i, answer) in answers.iter().enumerate() {
        let decoded = Answer::decode(&answer.encode()).expect("decodes");
        assert_eq!(decoded.command(), "FLEET_STATUS");
        let part = FleetPart::parse(decoded.data()).expect("a counter");
        assert_eq!((part.part, part.parts), (i + 1, answers.len()));
        let array: Vec<serde_json::Value> = serde_json::from_str(part.items).expect("JSON");
        seen += array.len();
    }
    assert_eq!(seen, items.len());
    assert_eq!(FleetPart::parse("[]"), None);
    assert_eq!(FleetPart::parse("x/2 []"), None);
}

#[test]
fn restarting_shows_the_wait_and_the_reason() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
    let state = WorkerState::Restarting {
        at: now + Duration::from_secs(8),
        reason: "connection refused".into(),
    };
    assert_eq!(
        worker_state(&state, now),
        "restarting in 8s: connection refused"
    );
}

#[test]
fn a_fleet_item_cuts_long_texts_and_keeps_three_errors() {
    let mut report = WorkerReport::new(5, "é".repeat(400));
    report.state = WorkerState::Failed("bad".into());
    report.last_errors = (0..5).map(|i| format!("error {i}")).collect();
    report.tls = Some(true);
    let item: serde_json::Value =
        serde_json::from_str(&fleet_item(&report, SystemTime::now())).expect("JSON");
    assert_eq!(item["srvid"], 5);
    assert_eq!(item["state"], "error: bad");
    assert_eq!(item["name"].as_str().unwrap().len(), ITEM_TEXT_BYTES);
    assert_eq!(item["last_errors"].as_array().unwrap().len(), ITEM_ERRORS);
    assert_eq!(item["tls"], true);
    assert_eq!(item["last_snapshot"], serde_json::Value::Null);
}
