//! Property tests for the wire model: envelopes and every payload kind survive
//! encode → decode, ULIDs order as their text does, timestamps format and parse
//! back, and the task transition table is closed.

use std::collections::{BTreeSet, VecDeque};

use asap_proto::canonical_json::{self, JsonStyle};
use asap_proto::model::{
    AckStatus, AgentUrn, ArtifactNotify, Envelope, EnvelopeInput, JsonObject, McpResourceData,
    McpResourceFetch, McpToolCall, McpToolResult, MessageAck, MessageRole, MessageSend, Payload,
    PayloadKind, StateQuery, StateRestore, Task, TaskCancel, TaskRequest, TaskResponse, TaskUpdate,
    Timestamp, TzOffset, Ulid, UnixTime, UpdateType,
};
use asap_proto::task::TaskStatus;
use proptest::prelude::*;
use serde_json::Value;

// ------------------------------------------------------------------ strategies

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((".{0,8}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn arb_object() -> impl Strategy<Value = JsonObject> {
    prop::collection::vec((".{0,8}", arb_json()), 0..4).prop_map(|kv| kv.into_iter().collect())
}

fn arb_text() -> impl Strategy<Value = String> {
    ".{0,16}"
}

fn arb_opt_text() -> impl Strategy<Value = Option<String>> {
    prop::option::of(arb_text())
}

fn arb_opt_object() -> impl Strategy<Value = Option<JsonObject>> {
    prop::option::of(arb_object())
}

fn arb_status() -> impl Strategy<Value = TaskStatus> {
    prop::sample::select(TaskStatus::ALL.to_vec())
}

fn arb_urn() -> impl Strategy<Value = AgentUrn> {
    "urn:asap:agent:[a-z0-9-]{1,24}(:[a-z0-9-]{1,12})?"
        .prop_map(|s| AgentUrn::new(s).expect("strategy yields valid URNs"))
}

/// Any instant Python's `datetime` can hold (years 1..=9999), in microseconds.
fn arb_instant() -> impl Strategy<Value = UnixTime> {
    (-62_135_596_800_000_000i64..253_402_300_799_999_999).prop_map(UnixTime::from_micros)
}

fn arb_timestamp() -> impl Strategy<Value = Timestamp> {
    // Parsed from text so that every zone form (Z, offset, naive) is covered.
    (
        arb_instant(),
        prop_oneof![Just(None), Just(Some(0)), (-1439i32..=1439).prop_map(Some)],
    )
        .prop_filter_map("offset moves the local time out of range", |(t, off)| {
            let utc = Timestamp::from_unix(t).to_string();
            let text = match off {
                None => utc.trim_end_matches('Z').to_owned(),
                Some(0) => utc,
                Some(m) => {
                    // Same local wall time, declared at offset m minutes.
                    let (sign, a) = if m < 0 { ('-', -m) } else { ('+', m) };
                    format!(
                        "{}{sign}{:02}:{:02}",
                        utc.trim_end_matches('Z'),
                        a / 60,
                        a % 60
                    )
                }
            };
            text.parse::<Timestamp>().ok()
        })
}

fn arb_percent_progress() -> impl Strategy<Value = Option<JsonObject>> {
    prop::option::of((arb_object(), prop::option::of(0.0f64..=100.0))).prop_map(|o| {
        o.map(|(mut p, percent)| {
            p.remove("percent");
            if let Some(x) = percent {
                p.insert("percent".into(), Value::from(x));
            }
            p
        })
    })
}

fn arb_payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        (
            arb_text(),
            arb_opt_text(),
            arb_text(),
            arb_object(),
            arb_opt_object()
        )
            .prop_map(
                |(conversation_id, parent_task_id, skill_id, input, config)| {
                    Payload::TaskRequest(TaskRequest {
                        conversation_id,
                        parent_task_id,
                        skill_id,
                        input,
                        config,
                    })
                }
            ),
        (
            arb_text(),
            arb_status(),
            arb_opt_object(),
            arb_opt_object(),
            arb_opt_object()
        )
            .prop_map(|(task_id, status, result, final_state, metrics)| {
                Payload::TaskResponse(TaskResponse {
                    task_id,
                    status,
                    result,
                    final_state,
                    metrics,
                })
            }),
        (
            arb_text(),
            prop::sample::select(vec![
                UpdateType::Progress,
                UpdateType::InputRequired,
                UpdateType::StatusChange
            ]),
            arb_status(),
            arb_percent_progress(),
            arb_opt_object()
        )
            .prop_map(|(task_id, update_type, status, progress, input_request)| {
                Payload::TaskUpdate(TaskUpdate {
                    task_id,
                    update_type,
                    status,
                    progress,
                    input_request,
                })
            }),
        (arb_text(), arb_opt_text())
            .prop_map(|(task_id, reason)| Payload::TaskCancel(TaskCancel { task_id, reason })),
        (
            arb_text(),
            arb_text(),
            arb_text(),
            prop::sample::select(vec![
                MessageRole::User,
                MessageRole::Assistant,
                MessageRole::System
            ]),
            prop::collection::vec(arb_text(), 0..4)
        )
            .prop_map(|(task_id, message_id, sender, role, parts)| {
                Payload::MessageSend(MessageSend {
                    task_id,
                    message_id,
                    sender,
                    role,
                    parts,
                })
            }),
        (arb_text(), prop::option::of(any::<i64>()))
            .prop_map(|(task_id, version)| Payload::StateQuery(StateQuery { task_id, version })),
        (arb_text(), arb_text()).prop_map(|(task_id, snapshot_id)| {
            Payload::StateRestore(StateRestore {
                task_id,
                snapshot_id,
            })
        }),
        (arb_text(), arb_text(), arb_opt_text()).prop_map(|(artifact_id, task_id, name)| {
            Payload::ArtifactNotify(ArtifactNotify {
                artifact_id,
                task_id,
                name,
            })
        }),
        (arb_text(), arb_text(), arb_object(), arb_opt_object()).prop_map(
            |(request_id, tool_name, arguments, mcp_context)| {
                Payload::McpToolCall(McpToolCall {
                    request_id,
                    tool_name,
                    arguments,
                    mcp_context,
                })
            }
        ),
        (
            arb_text(),
            prop_oneof![arb_object().prop_map(Ok), arb_text().prop_map(Err)]
        )
            .prop_map(|(request_id, outcome)| {
                Payload::McpToolResult(match outcome {
                    Ok(result) => McpToolResult {
                        request_id,
                        success: true,
                        result: Some(result),
                        error: None,
                    },
                    Err(error) => McpToolResult {
                        request_id,
                        success: false,
                        result: None,
                        error: Some(error),
                    },
                })
            }),
        arb_text().prop_map(|resource_uri| {
            Payload::McpResourceFetch(McpResourceFetch { resource_uri })
        }),
        (arb_text(), arb_object()).prop_map(|(resource_uri, content)| {
            Payload::McpResourceData(McpResourceData {
                resource_uri,
                content,
            })
        }),
        (
            arb_text(),
            prop::sample::select(vec![
                AckStatus::Received,
                AckStatus::Processed,
                AckStatus::Rejected
            ]),
            arb_opt_text()
        )
            .prop_map(|(original_envelope_id, status, error)| {
                Payload::MessageAck(MessageAck {
                    original_envelope_id,
                    status,
                    error,
                })
            }),
        ("[A-Za-z._]{0,20}", arb_object())
            .prop_filter("not a known payload type", |(pt, _)| {
                PayloadKind::from_payload_type(pt).is_none()
            })
            .prop_map(|(payload_type, payload)| Payload::Unknown {
                payload_type,
                payload
            }),
    ]
}

fn arb_envelope() -> impl Strategy<Value = Envelope> {
    (
        arb_text(),
        arb_timestamp(),
        arb_urn(),
        arb_urn(),
        arb_payload(),
        arb_text(),
        ".{1,16}",
        arb_opt_text(),
        any::<bool>(),
        arb_opt_object(),
        any::<bool>(),
    )
        .prop_map(
            |(id, ts, from, to, payload, asap_version, corr, trace, ack, ext, with_corr)| {
                let mut env = Envelope::new(id, ts, from, to, payload);
                env.asap_version = asap_version;
                env.trace_id = trace;
                env.requires_ack = ack;
                env.extensions = ext;
                if with_corr || env.needs_correlation_id() {
                    env.correlation_id = Some(corr);
                }
                env
            },
        )
}

/// Every spelling of a kind's payload type that the core recognises.
fn spellings(kind: PayloadKind) -> Vec<String> {
    let model = kind.model_name();
    let mut snake = String::new();
    for (i, c) in model.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            snake.push('_');
        }
        snake.push(c.to_ascii_lowercase());
    }
    vec![model.to_owned(), kind.payload_type().to_owned(), snake]
}

// ------------------------------------------------------------------ properties

proptest! {

    #[test]
    fn envelope_round_trips(env in arb_envelope()) {
        env.validate().unwrap();
        let bytes = env.to_vec();
        let back = Envelope::from_slice(&bytes).unwrap();
        prop_assert_eq!(&back, &env);
        prop_assert_eq!(back.to_vec(), bytes.clone());
        // The receiver-side decoder agrees, and so does the Python-style text.
        let input = EnvelopeInput::from_slice(&bytes).unwrap();
        prop_assert_eq!(input.materialize(Timestamp::from_unix(UnixTime::EPOCH), String::new), env.clone());
        let py = canonical_json::to_string(&serde_json::to_value(&env).unwrap(), JsonStyle::default());
        prop_assert!(py.is_ascii());
        prop_assert_eq!(Envelope::from_slice(py.as_bytes()).unwrap(), env);
    }

    #[test]
    fn payload_round_trips(payload in arb_payload()) {
        let kind = payload.kind();
        let (payload_type, object) = payload.clone().into_parts();
        prop_assert_eq!(PayloadKind::from_payload_type(&payload_type), kind);
        prop_assert_eq!(&Payload::decode(&payload_type, object.clone()).unwrap(), &payload);
        // Through text, too (floats and escapes survive).
        let text = serde_json::to_vec(&object).unwrap();
        let reparsed: JsonObject = serde_json::from_slice(&text).unwrap();
        prop_assert_eq!(&Payload::decode(&payload_type, reparsed).unwrap(), &payload);
        // Every spelling of a known kind decodes to the same payload.
        if let Some(kind) = kind {
            for spelling in spellings(kind) {
                prop_assert_eq!(PayloadKind::from_payload_type(&spelling), Some(kind), "{}", spelling);
                prop_assert_eq!(&Payload::decode(&spelling, object.clone()).unwrap(), &payload);
            }
        }
    }

    #[test]
    fn edited_envelopes_decode_or_fail_cleanly(
        env in arb_envelope(),
        edits in prop::collection::vec((prop::sample::select(vec![
            "id", "asap_version", "timestamp", "sender", "recipient", "payload_type", "payload",
            "correlation_id", "trace_id", "requires_ack", "extensions", "extra"]),
            prop::option::of(prop_oneof![
                arb_json(),
                prop::sample::select(vec!["yes", "off", "1", "2026-01-01", "1767225600", "TaskResponse", ""])
                    .prop_map(Value::from),
                (0i64..3_000_000_000).prop_map(Value::from),
            ])), 0..4),
    ) {
        // A valid envelope with a few members replaced by arbitrary JSON (or removed).
        let mut value = serde_json::to_value(&env).unwrap();
        let obj = value.as_object_mut().unwrap();
        for (member, v) in edits {
            match v {
                Some(v) => { obj.insert(member.to_owned(), v); }
                None => { obj.remove(member); }
            }
        }
        let bytes = serde_json::to_vec(&value).unwrap();
        match EnvelopeInput::from_slice(&bytes) {
            Ok(input) => {
                // Whatever was accepted re-encodes to something that decodes the same.
                let again = serde_json::to_vec(&input).unwrap();
                prop_assert_eq!(EnvelopeInput::from_slice(&again).unwrap(), input.clone());
                let env = input.materialize(Timestamp::from_unix(UnixTime::EPOCH), || "generated".into());
                prop_assert_eq!(Envelope::from_slice(&env.to_vec()).unwrap(), env.clone());
                let _ = env.payload();
            }
            Err(e) => {
                // Every refusal names a member (or is about the whole document).
                let member = e.path.split(['.', '[']).next().unwrap_or("");
                prop_assert!(member.is_empty() || value.get(member).is_some() || e.kind == asap_proto::DecodeErrorKind::Missing, "{:?}", e);
                prop_assert!(Envelope::from_slice(&bytes).is_err());
            }
        }
    }

    #[test]
    fn canonical_json_text_parses_back(v in arb_json(), sort_keys in any::<bool>(), compact in any::<bool>()) {
        let text = canonical_json::to_string(&v, JsonStyle { sort_keys, compact });
        prop_assert!(text.is_ascii());
        let back: Value = serde_json::from_str(&text).unwrap();
        // Object equality ignores member order, so this holds for sorted keys too.
        prop_assert_eq!(back, v);
    }

    #[test]
    fn ulid_text_round_trips(x in any::<u128>()) {
        // Every u128 is a ULID (26 base32 characters hold 130 bits, the first is 0-7).
        let id = Ulid::from_u128(x);
        let text = id.to_string();
        prop_assert_eq!(text.len(), 26);
        prop_assert_eq!(text.parse::<Ulid>().unwrap(), id);
        prop_assert_eq!(text.to_ascii_lowercase().parse::<Ulid>().unwrap(), id);
    }

    #[test]
    fn ulid_order_is_text_order(a in any::<u128>(), b in any::<u128>()) {
        let (x, y) = (Ulid::from_u128(a), Ulid::from_u128(b));
        prop_assert_eq!(x.cmp(&y), x.to_string().cmp(&y.to_string()));
    }

    #[test]
    fn ulid_keeps_time_and_randomness(ms in 0i64..(1 << 48), random in any::<u128>(), later in 1i64..1_000_000) {
        let id = Ulid::new(UnixTime::from_millis(ms), random);
        prop_assert_eq!(id.millis(), ms as u64);
        prop_assert_eq!(id.random(), random & ((1u128 << 80) - 1));
        // A later millisecond sorts after, whatever the randomness.
        if ms + later < (1 << 48) {
            let next = Ulid::new(UnixTime::from_millis(ms + later), 0);
            prop_assert!(next > id);
            prop_assert!(next.to_string() > id.to_string());
        }
    }

    #[test]
    fn timestamp_format_parse_round_trips(t in arb_timestamp()) {
        let text = t.to_string();
        let back: Timestamp = text.parse().unwrap();
        prop_assert_eq!(back, t);
        prop_assert_eq!(back.to_string(), text.clone());
        // Through JSON, too.
        let json = serde_json::to_value(t).unwrap();
        prop_assert_eq!(serde_json::from_value::<Timestamp>(json).unwrap(), t);
        // Python's isoformat differs only in the UTC suffix.
        let iso = t.to_python_isoformat();
        match t.offset() {
            TzOffset::Utc => prop_assert_eq!(iso, text.replace('Z', "+00:00")),
            _ => prop_assert_eq!(iso, text),
        }
    }

    #[test]
    fn timestamp_offset_arithmetic(t in arb_instant(), off_min in -1439i32..=1439) {
        // "<local wall time>+hh:mm" is the instant local - offset.
        let local = Timestamp::from_unix(t).to_string();
        let (sign, a) = if off_min < 0 { ('-', -off_min) } else { ('+', off_min) };
        let text = format!("{}{sign}{:02}:{:02}", local.trim_end_matches('Z'), a / 60, a % 60);
        if let Ok(parsed) = text.parse::<Timestamp>() {
            prop_assert_eq!(parsed.unix().as_micros(), t.as_micros() - i64::from(off_min) * 60_000_000);
        }
        // Microseconds survive from_unix → text → parse.
        let back: Timestamp = local.parse().unwrap();
        prop_assert_eq!(back.unix(), t);
    }

    #[test]
    fn epoch_numbers_parse_as_utc(secs in -20_000_000_000i64..=20_000_000_000, ms in 20_000_000_001i64..253_402_300_799_999) {
        // pydantic reads numbers up to 2e10 as seconds, larger ones as milliseconds.
        let t: Timestamp = serde_json::from_value(Value::from(secs)).unwrap();
        prop_assert_eq!(t.unix(), UnixTime::from_secs(secs));
        prop_assert_eq!(t.offset(), TzOffset::Utc);
        let s: Timestamp = secs.to_string().parse().unwrap();
        prop_assert_eq!(s, t);
        let m: Timestamp = serde_json::from_value(Value::from(ms)).unwrap();
        prop_assert_eq!(m.unix(), UnixTime::from_millis(ms));
    }

    #[test]
    fn task_transitions_follow_the_table(steps in prop::collection::vec(arb_status(), 0..24)) {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut task = Task {
            id: "task_1".into(),
            conversation_id: "conv_1".into(),
            parent_task_id: None,
            status: TaskStatus::Submitted,
            depth: 0,
            progress: None,
            created_at: t0,
            updated_at: t0,
        };
        for (i, to) in steps.into_iter().enumerate() {
            let before = task.clone();
            let now = Timestamp::from_unix(UnixTime::from_secs(1_767_225_600 + i as i64 + 1));
            match task.transition(to, now) {
                Ok(()) => {
                    prop_assert!(before.status.can_transition(to));
                    prop_assert_eq!(task.status, to);
                    prop_assert_eq!(task.updated_at, now);
                }
                Err(e) => {
                    prop_assert!(!before.status.can_transition(to));
                    prop_assert_eq!(&task, &before, "a refused transition changes nothing");
                    prop_assert_eq!((e.from, e.to), (before.status, to));
                    prop_assert_eq!(e.task_id.as_deref(), Some("task_1"));
                }
            }
        }
    }
}

#[test]
fn transition_table_is_closed() {
    for s in TaskStatus::ALL {
        // Terminal states have no successors; others have at least one.
        assert_eq!(s.is_terminal(), s.next_states().is_empty(), "{s}");
        // No self-transitions, no duplicates, and can_transition agrees with the table.
        assert!(!s.can_transition(s), "{s} -> {s}");
        let set: BTreeSet<_> = s.next_states().iter().copied().collect();
        assert_eq!(set.len(), s.next_states().len(), "{s}: duplicate successor");
        for t in TaskStatus::ALL {
            assert_eq!(s.can_transition(t), set.contains(&t), "{s} -> {t}");
        }
        // Wire value round-trips.
        assert_eq!(TaskStatus::parse(s.as_str()), Some(s));
    }
    // Every state is reachable from `submitted`, and every non-terminal state
    // can still reach a terminal one.
    let reach = |from: TaskStatus| {
        let mut seen = BTreeSet::from([from]);
        let mut queue = VecDeque::from([from]);
        while let Some(s) = queue.pop_front() {
            for &t in s.next_states() {
                if seen.insert(t) {
                    queue.push_back(t);
                }
            }
        }
        seen
    };
    assert_eq!(reach(TaskStatus::Submitted).len(), TaskStatus::ALL.len());
    for s in TaskStatus::ALL {
        assert!(
            reach(s).iter().any(|t| t.is_terminal()),
            "{s} cannot finish"
        );
    }
}
