//! The envelope parser: every field, every rule, and what a refusal keeps.

use super::*;
use serde_json::json;

const LIMIT: usize = 1 << 20;

fn reason(bytes: &[u8]) -> String {
    parse_message(bytes, LIMIT).unwrap_err().reason
}

#[test]
fn reads_a_full_envelope() {
    let msg = br#"{"id":"t-1","worker":"email","args":{"to":"a@b"},"priority":5,"attempts":3,"timeout":"90s"}"#;
    let ChannelMessage::Task(spec) = parse_message(msg, LIMIT).unwrap() else {
        panic!("not a task")
    };
    assert_eq!(spec.id.as_deref(), Some("t-1"));
    assert_eq!(spec.worker, "email");
    assert_eq!(spec.args, json!({"to": "a@b"}));
    assert_eq!(spec.priority, 5);
    assert_eq!(spec.attempts, Some(3));
    assert_eq!(spec.timeout, Some(Duration::from_secs(90)));
}

#[test]
fn reads_schedules_limits_and_result_keys() {
    let msg = br#"{"worker":"w","at":"2014-12-31T23:59:59+01:00","every":"4 hours","deadline":30,"key":"cust-1","result_key":"report","backoff":"2s","backoff_cap":"1m"}"#;
    let ChannelMessage::Task(spec) = parse_message(msg, LIMIT).unwrap() else {
        panic!("not a task")
    };
    assert_eq!(spec.run_at, Some(1_420_066_799_000));
    assert_eq!(
        spec.repeat,
        Some(Recurrence::Every(Duration::from_secs(14_400)))
    );
    assert_eq!(spec.deadline, Some(Duration::from_secs(30)));
    assert_eq!(spec.key.as_deref(), Some("cust-1"));
    assert_eq!(spec.result_key.as_deref(), Some("report"));
    assert_eq!(spec.backoff, Some(Duration::from_secs(2)));
    let ChannelMessage::Task(spec) =
        parse_message(br#"{"worker":"w","cron":"0 3 * * *"}"#, LIMIT).unwrap()
    else {
        panic!("not a task")
    };
    assert!(matches!(spec.repeat, Some(Recurrence::Cron(_))));
    assert!(reason(br#"{"worker":"w","cron":"0 3 * *"}"#).contains("has 4 fields"));
    assert!(reason(br#"{"worker":"w","every":"1h","cron":"@daily"}"#).contains("exclude"));
    assert!(reason(br#"{"worker":"w","at":"soonish"}"#).contains("field `at`"));
    assert!(reason(br#"{"worker":"w","key":"a b"}"#).contains("field `key`"));
}

#[test]
fn reads_control_messages() {
    assert_eq!(
        parse_message(br#"{"op":"schedule"}"#, LIMIT).unwrap(),
        ChannelMessage::Schedule
    );
    assert_eq!(
        parse_message(br#"{"op":"cancel","id":"t1"}"#, LIMIT).unwrap(),
        ChannelMessage::Cancel { id: "t1".into() }
    );
    assert!(reason(br#"{"op":"cancel"}"#).contains("without `id`"));
    assert_eq!(
        parse_message(br#"{"op":"pause","worker":"w"}"#, LIMIT).unwrap(),
        ChannelMessage::Pause {
            worker: "w".into(),
            paused: true
        }
    );
    assert_eq!(
        parse_message(br#"{"op":"resume","worker":"w"}"#, LIMIT).unwrap(),
        ChannelMessage::Pause {
            worker: "w".into(),
            paused: false
        }
    );
    assert!(reason(br#"{"op":"pause"}"#).contains("without `worker`"));
    assert!(reason(br#"{"op":"resume","worker":"../x"}"#).contains("worker"));
    assert_eq!(
        parse_message(br#"{"op":"wake","worker":"w","node":"n2"}"#, LIMIT).unwrap(),
        ChannelMessage::Wake {
            worker: "w".into(),
            node: Some("n2".into())
        }
    );
    assert_eq!(
        parse_message(br#"{"op":"reload","reply":"r1"}"#, LIMIT).unwrap(),
        ChannelMessage::Control {
            op: ControlOp::Reload,
            node: None,
            reply: "r1".into()
        }
    );
    assert!(reason(br#"{"op":"stop","node":"n1"}"#).contains("without `reply`"));
    assert!(reason(br#"{"worker":"w","target":"mars"}"#).contains("field `target`"));
}

#[test]
fn minimal_envelope_gets_defaults() {
    let ChannelMessage::Task(spec) = parse_message(br#"{"worker":"w"}"#, LIMIT).unwrap() else {
        panic!("not a task")
    };
    assert_eq!(*spec, TaskSpec::new("w", Value::Null));
}

#[test]
fn reads_a_wake() {
    assert_eq!(
        parse_message(br#"{"op":"wake","worker":"email"}"#, LIMIT).unwrap(),
        ChannelMessage::Wake {
            worker: "email".into(),
            node: None
        }
    );
    assert!(reason(br#"{"op":"explode"}"#).contains("unknown operation"));
    assert!(reason(br#"{"op":"wake","worker":"../x"}"#).contains("dot"));
}

#[test]
fn every_bad_input_has_a_clear_reason() {
    assert!(reason(b"not json").contains("not valid JSON"));
    assert!(reason(b"[1,2]").contains("got an array"));
    assert!(reason(b"\"email\"").contains("got a string"));
    assert!(reason(br#"{"args":{}}"#).contains("missing field `worker`"));
    assert!(reason(br#"{"worker":5}"#).contains("field `worker`: expected a string, got a number"));
    assert!(
        reason(br#"{"worker":"w","priority":"high"}"#)
            .contains("field `priority`: expected an integer")
    );
    assert!(reason(br#"{"worker":"w","priority":1.5}"#).contains("expected an integer"));
    assert!(reason(br#"{"worker":"w","priority":99999999999}"#).contains("priority"));
    assert!(reason(br#"{"worker":"w","attempts":-1}"#).contains("attempts"));
    assert!(reason(br#"{"worker":"w","timeout":"soon"}"#).contains("field `timeout`"));
    assert!(reason(br#"{"worker":"w","timeout":-3}"#).contains("positive"));
    assert!(reason(br#"{"worker":"w","prority":1}"#).contains("unknown field `prority`"));
    assert!(reason(br#"{"worker":"../x"}"#).contains("dot"));
    assert!(reason(br#"{"worker":"/bin/sh"}"#).contains("path separator"));
    assert!(reason(br#"{"worker":"a\u0000b"}"#).contains("NUL"));
    let long = format!(r#"{{"worker":"{}"}}"#, "a".repeat(10_000));
    assert!(reason(long.as_bytes()).contains("10000 bytes long"));
    assert!(reason(br#"{"worker":"w","id":"has space"}"#).contains("field `id`"));
}

#[test]
fn size_is_checked_before_parsing() {
    let big = vec![b'{'; 2048];
    let r = parse_message(&big, 1024).unwrap_err();
    assert!(
        r.reason.contains("over the 1024-byte limit"),
        "{}",
        r.reason
    );
    assert!(r.excerpt.chars().count() <= 121);
}

#[test]
fn rejection_keeps_what_it_could_read() {
    let r = parse_message(br#"{"id":"x1","worker":"w","priority":"hi"}"#, LIMIT).unwrap_err();
    assert_eq!(r.id.as_deref(), Some("x1"));
    assert_eq!(r.worker.as_deref(), Some("w"));
    let r = parse_message(br#"{"worker":"../etc"}"#, LIMIT).unwrap_err();
    assert_eq!(
        r.worker, None,
        "an invalid name is never echoed as a worker"
    );
}

fn task(bytes: &[u8]) -> TaskSpec {
    match parse_message(bytes, LIMIT) {
        Ok(ChannelMessage::Task(spec)) => *spec,
        other => panic!("not a task: {other:?}"),
    }
}

/// Asserts that `bytes` is refused with a reason containing every one of `parts`.
#[track_caller]
fn refused(bytes: &[u8], parts: &[&str]) {
    let got = reason(bytes);
    for part in parts {
        assert!(got.contains(part), "expected {part:?} in {got:?}");
    }
}

/// Checks a table of `message => part of the reason` lines; `{..}` is the message, anything
/// else is fields added to `{"worker":"w", …}`.
#[track_caller]
fn refused_table(table: &str) {
    for line in table.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (msg, want) = line.split_once(" => ").expect("a `message => reason` line");
        let msg = if msg.starts_with('{') {
            msg.to_owned()
        } else {
            format!(r#"{{"worker":"w",{msg}}}"#)
        };
        refused(msg.as_bytes(), &[want]);
    }
}

#[test]
fn every_field_is_read() {
    let spec = task(
        br#"{"id":"a.b:c-1_2","worker":"w","args":[1,"two",null],"priority":-100,"attempts":100,
            "timeout":1.5,"backoff":"250ms","backoff_cap":"1h","in":"10 minutes","deadline":"day",
            "key":"cust-42","result_key":"report-42","target":"node:n2"}"#,
    );
    assert_eq!(spec.id.as_deref(), Some("a.b:c-1_2"));
    assert_eq!(spec.args, json!([1, "two", null]));
    assert_eq!(spec.priority, -100);
    assert_eq!(spec.attempts, Some(100));
    assert_eq!(spec.timeout, Some(Duration::from_millis(1500)));
    assert_eq!(spec.backoff, Some(Duration::from_millis(250)));
    assert_eq!(spec.backoff_cap, Some(Duration::from_secs(3600)));
    assert_eq!(spec.delay, Some(Duration::from_secs(600)));
    assert_eq!(spec.deadline, Some(Duration::from_secs(86_400)));
    assert_eq!(spec.key.as_deref(), Some("cust-42"));
    assert_eq!(spec.result_key.as_deref(), Some("report-42"));
    assert_eq!(spec.target, Target::Node("n2".into()));
    assert!(!spec.reply, "without `reply` no caller waits");
    assert!(task(br#"{"worker":"w","reply":true}"#).reply);
    assert!(!task(br#"{"worker":"w","reply":false}"#).reply);
    assert!(!task(br#"{"worker":"w","reply":null}"#).reply);

    let spec = task(br#"{"worker":"w","at":1420066799000,"every":60,"priority":100}"#);
    assert_eq!(spec.run_at, Some(1_420_066_799_000));
    assert_eq!(
        spec.repeat,
        Some(Recurrence::Every(Duration::from_secs(60)))
    );
    assert_eq!(spec.priority, 100);
    assert_eq!(
        task(br#"{"worker":"w","at":"December 31st 2014 23:59:59 +01:00"}"#).run_at,
        Some(1_420_066_799_000)
    );
    assert_eq!(
        task(br#"{"worker":"w","cron":"@daily"}"#).repeat,
        Some(Recurrence::Cron(Cron::parse("@daily").unwrap()))
    );
    for (text, target) in [
        ("any", Target::Any),
        ("all", Target::All),
        ("local", Target::Local),
        ("", Target::Any),
    ] {
        let msg = format!(r#"{{"worker":"w","target":"{text}"}}"#);
        assert_eq!(task(msg.as_bytes()).target, target, "{text}");
    }
}

#[test]
fn null_is_the_same_as_leaving_a_field_out() {
    for name in ENVELOPE_FIELDS.iter().filter(|f| **f != "worker") {
        let msg = format!(r#"{{"worker":"w","{name}":null}}"#);
        assert_eq!(
            task(msg.as_bytes()),
            TaskSpec::new("w", Value::Null),
            "{name}"
        );
    }
    refused(br#"{"worker":null}"#, &["missing field `worker`"]);
}

#[test]
fn the_envelope_accepts_exactly_its_documented_fields() {
    let unknown = reason(br#"{"worker":"w","prority":1}"#);
    assert_eq!(
        unknown,
        format!(
            "unknown field `prority` (allowed: {})",
            ENVELOPE_FIELDS.join(", ")
        )
    );
    // `op` belongs to notices.
    for name in ["op_", "node", "Worker", "due", "Reply"] {
        let msg = format!(r#"{{"worker":"w","{name}":1}}"#);
        refused(msg.as_bytes(), &[&format!("unknown field `{name}`")]);
    }
    let long = format!(r#"{{"worker":"w","{}":1}}"#, "x".repeat(500));
    assert!(
        reason(long.as_bytes()).len() < 400,
        "a long unknown name is cut short"
    );
}

#[test]
fn wrong_types_name_the_field_and_what_was_expected() {
    refused_table(
        r#"
        {"worker":true}         => field `worker`: expected a string, got a boolean
        {"worker":["w"]}        => field `worker`: expected a string, got an array
        "id":5                  => field `id`: expected a string, got a number
        "priority":[1]          => field `priority`: expected an integer, got an array
        "priority":2.5          => field `priority`: expected an integer, got 2.5
        "priority":2.0          => field `priority`: expected an integer, got 2.0
        "attempts":"3"          => field `attempts`: expected an integer, got a string
        "timeout":{}            => field `timeout`: expected seconds or a duration such as "90s", got an object
        "backoff":false         => field `backoff`: expected seconds or a duration such as "90s", got a boolean
        "backoff_cap":[]        => field `backoff_cap`: expected seconds or a duration
        "in":true               => field `in`: expected seconds or a duration
        "at":true               => field `at`: expected a time, got a boolean
        "at":-5                 => field `at`: expected Unix milliseconds
        "at":1.5                => field `at`: expected Unix milliseconds
        "every":{}              => field `every`: expected seconds or a duration
        "cron":5                => field `cron`: expected a string, got a number
        "deadline":[]           => field `deadline`: expected seconds or a duration
        "key":{}                => field `key`: expected a string, got an object
        "result_key":1          => field `result_key`: expected a string, got a number
        "target":1              => field `target`: expected a string, got a number
        "reply":1               => field `reply`: expected true or false, got a number
        "reply":"yes"           => field `reply`: expected true or false, got a string
        "#,
    );
}

#[test]
fn every_rule_names_its_field() {
    refused_table(
        r#"
        "priority":101                  => field `priority`: 101 is outside -100..=100
        "priority":-101                 => field `priority`: -101 is outside -100..=100
        "priority":2147483648           => field `priority`: 2147483648 is out of range
        "priority":18446744073709551615 => field `priority`: expected an integer, got 18446744073709551615
        "attempts":0                    => field `attempts`: 0 is outside 1..=100
        "attempts":101                  => field `attempts`: 101 is outside 1..=100
        "attempts":-1                   => field `attempts`: -1 is out of range
        "timeout":0                     => field `timeout`: 0 is not a positive number of seconds
        "timeout":1e9                   => field `timeout`: 1000000000.0 is not a positive number of seconds
        "timeout":"0s"                  => field `timeout`: must be longer than zero
        "timeout":""                    => field `timeout`: empty duration
        "backoff":"0"                   => field `backoff`: must be longer than zero
        "backoff_cap":"0m"              => field `backoff_cap`: must be longer than zero
        "deadline":"0h"                 => field `deadline`: must be longer than zero
        "in":"later"                    => field `in`: `later`
        "every":0.5                     => field `every`: the interval must be at least 1s
        "in":5,"at":1                   => field `in`: a delay and a time (`at`) exclude each other
        "every":60,"cron":"@daily"      => fields `every` and `cron` exclude each other
        "cron":"61 * * * *"             => field `cron`: 
        "at":"yesterday-ish"            => field `at`: 
        "target":"mars"                 => field `target`: target `mars` is not any, all, local or node:<id>
        "target":"node:"                => field `target`: is empty
        "target":"all","key":"k"        => field `target`: `all` cannot be combined with a recurrence or a key
        "target":"all","every":5        => field `target`: `all` cannot be combined
        "every":60,"reply":true         => field `every`: a recurring task has no single result to wait for
        "id":""                         => field `id`: is empty
        "key":"a/b"                     => field `key`: "a/b" contains '/'
        "result_key":"r k"              => field `result_key`: "r k" contains ' '
        {"worker":""}                   => worker name is empty
        {"worker":"a.b"}                => worker name "a.b" contains a dot
        "#,
    );
    let long_id = format!(r#"{{"worker":"w","id":"{}"}}"#, "i".repeat(129));
    refused(
        long_id.as_bytes(),
        &["field `id`: is 129 bytes long (at most 128)"],
    );
    let longest = format!(r#"{{"worker":"w","id":"{}"}}"#, "i".repeat(128));
    assert_eq!(task(longest.as_bytes()).id.map(|id| id.len()), Some(128));
}

#[test]
fn a_message_with_several_faults_is_refused_for_the_first_in_field_order() {
    // Unknown fields come first, whatever the order of the keys.
    refused(
        br#"{"attempts":"x","worker":5,"zzz":1}"#,
        &["unknown field `zzz`"],
    );
    // Then the fields as ENVELOPE_FIELDS lists them.
    refused(
        br#"{"target":5,"priority":"x","worker":"w"}"#,
        &["field `priority`"],
    );
    // Then the rules across fields.
    refused(
        br#"{"worker":"../x","every":1,"cron":"x"}"#,
        &["field `cron`"],
    );
    refused(
        br#"{"worker":"../x","every":1,"cron":"@daily"}"#,
        &["exclude"],
    );
}

#[test]
fn wrong_json_is_refused_with_its_position() {
    refused(b"", &["not valid JSON", "EOF"]);
    refused(br#"{"worker":"w""#, &["not valid JSON", "line 1 column 13"]);
    refused(
        b"{\"worker\":\"w\",\n \"args\":}",
        &["not valid JSON", "line 2"],
    );
    refused(
        br#"{"worker":"w"} {}"#,
        &["not valid JSON", "trailing characters"],
    );
    refused(b"{\"worker\":\"\xff\"}", &["not valid JSON"]);
    for (msg, kind) in [
        ("null", "null"),
        ("true", "a boolean"),
        ("3", "a number"),
        (r#""w""#, "a string"),
        ("[]", "an array"),
    ] {
        refused(
            msg.as_bytes(),
            &[
                "must be a JSON object with a `worker` field",
                &format!("got {kind}"),
            ],
        );
    }
}

#[test]
fn the_limit_is_inclusive_and_checked_first() {
    let msg = br#"{"worker":"w"}"#;
    assert!(parse_message(msg, msg.len()).is_ok());
    let r = parse_message(msg, msg.len() - 1).unwrap_err();
    assert_eq!(r.reason, "message is 14 bytes, over the 13-byte limit");
    assert_eq!(r.excerpt, r#"{\"worker\":\"w\"}"#);
    // Over the limit, even the broken JSON is not looked at.
    let r = parse_message(b"\xff\xff\xff", 2).unwrap_err();
    assert!(r.reason.contains("over the 2-byte limit"), "{}", r.reason);
}

#[test]
fn notices_read_their_own_fields_and_ignore_the_rest() {
    assert_eq!(
        parse_message(br#"{"op":"schedule","due":1795401681914}"#, LIMIT).unwrap(),
        ChannelMessage::Schedule
    );
    assert_eq!(
        parse_message(
            br#"{"op":"wake","worker":"w","node":null,"reply":5}"#,
            LIMIT
        )
        .unwrap(),
        ChannelMessage::Wake {
            worker: "w".into(),
            node: None
        }
    );
    assert_eq!(
        parse_message(
            br#"{"op":"stop","node":"n1","reply":"r","worker":7}"#,
            LIMIT
        )
        .unwrap(),
        ChannelMessage::Control {
            op: ControlOp::Stop,
            node: Some("n1".into()),
            reply: "r".into()
        }
    );
    // The id of a cancellation is any string: it names a task that was already stored.
    assert_eq!(
        parse_message(
            br#"{"op":"cancel","id":"tpl@1795401681914","worker":[]}"#,
            LIMIT
        )
        .unwrap(),
        ChannelMessage::Cancel {
            id: "tpl@1795401681914".into()
        }
    );
}

#[test]
fn notices_refuse_what_they_read() {
    refused_table(
        r#"
        {"op":"wake"}                           => wake message without `worker`
        {"op":"wake","worker":null}             => wake message without `worker`
        {"op":"wake","worker":1}                => field `worker`: expected a string, got a number
        {"op":"wake","worker":"../x"}           => worker name "../x" contains a dot
        {"op":"wake","worker":"w","node":"a b"} => field `node`: "a b" contains ' '
        {"op":"wake","worker":"w","node":5}     => field `node`: expected a string, got a number
        {"op":"reload","node":"n1"}             => control message without `reply`
        {"op":"reload","reply":["r"]}           => field `reply`: expected a string, got an array
        {"op":"stop","node":"","reply":"r"}     => field `node`: is empty
        {"op":"cancel"}                         => cancel message without `id`
        {"op":"cancel","id":7}                  => field `id`: expected a string, got a number
        {"op":"Wake","worker":"w"}              => field `op`: unknown operation `Wake` (wake, schedule, cancel, pause, resume, stop or reload)
        {"op":null,"worker":"w"}                => field `op`: expected a string (wake, schedule, cancel, pause, resume, stop or reload), got null
        {"op":0,"worker":"w"}                   => field `op`: expected a string (wake, schedule, cancel, pause, resume, stop or reload), got a number
        {"op":{"wake":null},"worker":"w"}       => field `op`: expected a string (wake, schedule, cancel, pause, resume, stop or reload), got an object
        "#,
    );
}

#[test]
fn a_refusal_keeps_what_identifies_the_task() {
    let r = parse_message(br#"{"id":"x1","worker":"w","zzz":1}"#, LIMIT).unwrap_err();
    assert_eq!(
        (r.id.as_deref(), r.worker.as_deref()),
        (Some("x1"), Some("w"))
    );
    let r = parse_message(br#"{"id":"a b","worker":"w"}"#, LIMIT).unwrap_err();
    assert_eq!(
        r.id.as_deref(),
        Some("a b"),
        "the id is kept even when it is refused"
    );
    let r = parse_message(br#"{"id":5,"worker":7}"#, LIMIT).unwrap_err();
    assert_eq!((r.id, r.worker), (None, None));
    let r = parse_message(br#"{"op":"wake","worker":"w","node":"a b"}"#, LIMIT).unwrap_err();
    assert_eq!(r.worker.as_deref(), Some("w"));
    let r = parse_message(b"[1]", LIMIT).unwrap_err();
    assert_eq!(r.excerpt, "[1]");
}

#[test]
fn a_field_given_twice_is_refused() {
    let r = parse_message(
        br#"{"worker":"w","priority":1,"priority":9,"id":"x"}"#,
        LIMIT,
    )
    .unwrap_err();
    assert_eq!(r.reason, "field `priority` is given more than once");
    assert_eq!(
        r.id.as_deref(),
        Some("x"),
        "the refusal still names the task"
    );
    let notice = parse_message(br#"{"op":"cancel","id":"a","id":"b"}"#, LIMIT).unwrap_err();
    assert!(
        notice.reason.contains("`id` is given more than once"),
        "{}",
        notice.reason
    );
    assert!(
        parse_message(br#"{"worker":"w","args":{"a":1,"b":{"a":2}}}"#, LIMIT).is_ok(),
        "the same name in nested values is not a repetition"
    );
}

#[test]
fn http_bodies_read_one_envelope_or_a_batch_and_name_the_field_at_fault() {
    let (specs, batch) = parse_tasks(br#"{"worker":"w","args":[1]}"#, LIMIT, 10).unwrap();
    assert_eq!((specs.len(), batch), (1, false));
    let (specs, batch) = parse_tasks(
        br#" [{"worker":"a"},{"worker":"b","priority":3}]"#,
        LIMIT,
        10,
    )
    .unwrap();
    assert_eq!((specs.len(), batch), (2, true));
    assert_eq!(specs[1].priority, 3);
    let e = parse_tasks(br#"{"worker":"w","priority":101}"#, LIMIT, 10).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("priority"), "{e:?}");
    let e = parse_tasks(br#"[{"worker":"w"},{"worker":"w","prority":1}]"#, LIMIT, 10).unwrap_err();
    assert_eq!(
        (e.field.as_deref(), e.index),
        (Some("prority"), Some(1)),
        "{e:?}"
    );
    assert!(e.reason.starts_with("envelope 1: unknown field"), "{e:?}");
    let e = parse_tasks(br#"{"worker":"../x"}"#, LIMIT, 10).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("worker"));
    let e = parse_tasks(br#"{"args":1}"#, LIMIT, 10).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("worker"));
    let e = parse_tasks(br#"{"op":"stop","reply":"x"}"#, LIMIT, 10).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("op"), "a notice is no task: {e:?}");
    let e = parse_tasks(br#"{"worker":"w","worker":"v"}"#, LIMIT, 10).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("worker"));
    assert!(
        parse_tasks(b"{nope", LIMIT, 10)
            .unwrap_err()
            .reason
            .contains("not valid JSON")
    );
    assert!(parse_tasks(b"[]", LIMIT, 10).is_err());
    let three = br#"[{"worker":"w"},{"worker":"w"},{"worker":"w"}]"#;
    assert!(
        parse_tasks(three, LIMIT, 2)
            .unwrap_err()
            .reason
            .contains("more than 2")
    );
    let big = format!(r#"[{{"worker":"w","args":"{}"}}]"#, "x".repeat(200));
    assert!(
        parse_tasks(big.as_bytes(), 100, 10)
            .unwrap_err()
            .reason
            .contains("over the 100-byte limit")
    );
}
