//! The task model: specs, validation, targets, states and statuses.

use super::*;
use serde_json::json;

#[test]
fn spec_validation_names_the_field() {
    assert!(TaskSpec::new("email", json!({})).validate().is_ok());
    let e = TaskSpec::new("email", json!(1))
        .priority(101)
        .validate()
        .unwrap_err();
    assert!(e.to_string().contains("priority"), "{e}");
    let e = TaskSpec::new("email", json!(1))
        .attempts(0)
        .validate()
        .unwrap_err();
    assert!(e.to_string().contains("attempts"), "{e}");
    let e = TaskSpec::new("../x", json!(1)).validate().unwrap_err();
    assert!(matches!(e, SpecError::Worker(_)));
    let e = TaskSpec::new("w", json!(1))
        .id("a b")
        .validate()
        .unwrap_err();
    assert!(e.to_string().contains("field `id`"), "{e}");
    let e = TaskSpec::new("w", json!(1))
        .key("k/1")
        .validate()
        .unwrap_err();
    assert!(e.to_string().contains("field `key`"), "{e}");
    let e = TaskSpec::new("w", json!(1))
        .timeout(Duration::ZERO)
        .validate()
        .unwrap_err();
    assert!(e.to_string().contains("timeout"), "{e}");
    let e = TaskSpec::new("w", json!(1))
        .repeat(Recurrence::Every(Duration::from_millis(10)))
        .validate()
        .unwrap_err();
    assert!(e.to_string().contains("at least"), "{e}");
}

#[test]
fn states_round_trip_and_map_to_progress() {
    for st in TaskState::ALL {
        assert_eq!(TaskState::parse(st.as_str()), Some(st));
    }
    assert_eq!(TaskState::Queued.progress(), 0);
    assert_eq!(TaskState::Running.progress(), 1);
    assert_eq!(TaskState::Dead.progress(), 2);
    assert!(TaskState::Expired.is_finished());
    assert!(!TaskState::Retrying.is_finished());
    assert!(TaskState::parse("bogus").is_none());
}

#[test]
fn targets_parse_and_resolve() {
    assert_eq!(Target::parse("any"), Ok(Target::Any));
    assert_eq!(Target::parse("all"), Ok(Target::All));
    assert_eq!(Target::parse("node:n2"), Ok(Target::Node("n2".into())));
    assert_eq!(
        Target::parse("local").unwrap().resolve("n1"),
        Target::Node("n1".into())
    );
    assert!(Target::parse("node:a b").is_err());
    assert!(
        Target::parse("elsewhere")
            .unwrap_err()
            .contains("any, all, local")
    );
    assert_eq!(Target::All.as_field().as_deref(), Some("all"));
    let e = TaskSpec::new("w", json!(1))
        .target(Target::All)
        .key("k")
        .validate()
        .unwrap_err();
    assert!(e.to_string().contains("target"), "{e}");
}

#[test]
fn generated_ids_sort_by_time() {
    let a = new_task_id();
    let b = new_task_id();
    assert!(a < b);
    assert!(validate_task_id(&a).is_ok());
}

#[test]
fn stored_ids_include_those_the_cluster_makes_from_a_parent() {
    for id in ["a", "rec@1796284374091", "report:2026-11@n2"] {
        assert!(validate_stored_id(id).is_ok(), "{id}");
    }
    for id in ["", "@1", "rec@", "a@b@c", "a b@1", "rec@1 2", "<script>@1"] {
        assert!(validate_stored_id(id).is_err(), "{id}");
    }
    assert!(
        validate_task_id("rec@1").is_err(),
        "a client cannot choose one"
    );
}
