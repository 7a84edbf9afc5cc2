//! The reference's JSON Schemas (`schemas_current/`, regenerated from the 1.1.0
//! models) against our models: member order, required members, defaults,
//! enums, numeric and length bounds, and `additionalProperties: false`.
//! Each schema is checked on a sample instance taken from the other vectors.

use asap_proto::error::from_value;
use asap_proto::jsonrpc::{self, ErrorResponse, RequestId, SuccessResponse};
use asap_proto::model::{
    Agent, Artifact, Conversation, Envelope, EnvelopeInput, Manifest, Message, Part, Payload,
    StateSnapshot, Task,
};
use asap_proto::{DecodeError, DecodeErrorKind};
use asap_tests::vectors;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};

type Decoder = fn(&Value) -> Result<Value, DecodeError>;

fn round<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, DecodeError> {
    from_value::<T>(v.clone()).map(|x| serde_json::to_value(x).unwrap())
}

fn envelope(v: &Value) -> Result<Value, DecodeError> {
    EnvelopeInput::from_value(v.clone()).map(|x| serde_json::to_value(x).unwrap())
}

/// A payload decoder for one payload type (the schema is the payload model's).
fn payload_of(pt: &'static str) -> impl Fn(&Value) -> Result<Value, DecodeError> {
    move |v: &Value| {
        let obj = v.as_object().cloned().ok_or_else(|| {
            DecodeError::new("", DecodeErrorKind::WrongType, "payload must be an object")
        })?;
        Payload::decode(pt, obj).map(|p| Value::Object(p.to_object()))
    }
}

/// Members whose absence breaks a cross-member rule of the model rather than
/// making it incomplete (`McpToolResult` with `success: true` needs `result`).
const CROSS_MEMBER_RULES: &[(&str, &str)] = &[("mcp_tool_result", "result")];

/// Checks `schema` (one object schema) against `decode`, starting from `sample`.
fn check_object_schema(
    name: &str,
    schema: &Value,
    defs: &Map<String, Value>,
    sample: &Value,
    decode: &dyn Fn(&Value) -> Result<Value, DecodeError>,
) {
    let ctx = |what: &str| format!("{name}: {what}");
    let props = schema["properties"].as_object().expect("object schema");
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap()).collect())
        .unwrap_or_default();

    let encoded = decode(sample).unwrap_or_else(|e| panic!("{}", ctx(&format!("sample: {e}"))));
    // Member order on the wire is the model's declaration order.
    let keys: Vec<&String> = encoded.as_object().unwrap().keys().collect();
    let schema_keys: Vec<&String> = props.keys().collect();
    assert_eq!(keys, schema_keys, "{}", ctx("member order"));

    for (prop, spec) in props {
        let mut without = sample.clone();
        without.as_object_mut().unwrap().remove(prop);
        let res = decode(&without);
        if required.contains(&prop.as_str()) {
            let err = res.expect_err(&ctx(&format!("{prop} is required")));
            assert_eq!(err.path, *prop, "{}", ctx("missing member is named"));
            assert_eq!(err.kind, DecodeErrorKind::Missing, "{}", ctx(prop));
        } else if CROSS_MEMBER_RULES.contains(&(name, prop.as_str())) {
            assert!(res.is_err(), "{}", ctx(prop));
        } else {
            let out =
                res.unwrap_or_else(|e| panic!("{}", ctx(&format!("{prop} is optional: {e}"))));
            if let Some(default) = spec.get("default") {
                assert_eq!(
                    &out[prop.as_str()],
                    default,
                    "{}",
                    ctx(&format!("default of {prop}"))
                );
            }
        }

        let with = |v: Value| {
            let mut s = sample.clone();
            s[prop.as_str()] = v;
            decode(&s)
        };
        let rejects = |v: Value, why: &str| {
            let err = with(v.clone()).expect_err(&ctx(&format!("{prop} = {v} ({why})")));
            assert_eq!(err.path, *prop, "{}", ctx(&format!("{prop} = {v}: {err}")));
        };
        // Integer bounds.
        if let Some(min) = spec.get("minimum").and_then(Value::as_i64) {
            with(json!(min)).unwrap_or_else(|e| panic!("{}", ctx(&format!("{prop} = min: {e}"))));
            rejects(json!(min - 1), "below minimum");
        }
        if let Some(max) = spec.get("maximum").and_then(Value::as_i64) {
            with(json!(max)).unwrap_or_else(|e| panic!("{}", ctx(&format!("{prop} = max: {e}"))));
            rejects(json!(max + 1), "above maximum");
        }
        if spec.get("minItems").and_then(Value::as_u64) == Some(1) {
            rejects(json!([]), "minItems 1");
        }
        // Discriminator constants.
        if let Some(c) = spec.get("const") {
            assert_eq!(&encoded[prop.as_str()], c, "{}", ctx("const"));
            rejects(json!("not-the-const"), "const");
        }
        // Enums (inline or via $defs): every value accepted and written back unchanged.
        if let Some(def) = spec.get("$ref").and_then(Value::as_str) {
            let def = &defs[def.trim_start_matches("#/$defs/")];
            if let Some(values) = def.get("enum").and_then(Value::as_array) {
                for v in values {
                    let out = with(v.clone())
                        .unwrap_or_else(|e| panic!("{}", ctx(&format!("{prop} = {v}: {e}"))));
                    assert_eq!(&out[prop.as_str()], v);
                }
                rejects(json!("no-such-value"), "enum");
            }
        }
    }

    if schema["additionalProperties"] == json!(false) {
        let mut extra = sample.clone();
        extra["zz_not_a_member"] = json!(1);
        let err = decode(&extra).expect_err(&ctx("unknown member"));
        assert_eq!(
            err.kind,
            DecodeErrorKind::UnknownField,
            "{}",
            ctx("unknown member")
        );
        assert_eq!(err.path, "zz_not_a_member", "{}", ctx("unknown member"));
    }
}

fn check(file: &str, sample: &Value, decode: &dyn Fn(&Value) -> Result<Value, DecodeError>) {
    let schema = vectors::load(&format!("schemas_current/{file}.json"));
    let defs = schema
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    check_object_schema(file, &schema, &defs, sample, decode);
}

#[test]
fn model_schemas() {
    let entities = vectors::load("entities.json");
    let parts = vectors::load("parts.json");
    let part = |class: &str| {
        parts["parts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["class"] == class)
            .map(|p| p["json"].clone())
            .unwrap()
    };
    let env = |model: &str| vectors::load(&format!("envelopes/{model}.json"))["envelope"].clone();

    let entity_cases: [(&str, &str, Decoder); 7] = [
        ("agent", "Agent", round::<Agent>),
        ("artifact", "Artifact", round::<Artifact>),
        ("conversation", "Conversation", round::<Conversation>),
        ("message", "Message", round::<Message>),
        ("state_snapshot", "StateSnapshot", round::<StateSnapshot>),
        ("task", "Task", round::<Task>),
        ("manifest", "Manifest_full", round::<Manifest>),
    ];
    for (file, key, decode) in entity_cases {
        check(file, &entities[key], &decode);
    }
    for (file, class) in [
        ("text_part", "TextPart"),
        ("data_part", "DataPart"),
        ("file_part", "FilePart"),
        ("resource_part", "ResourcePart"),
        ("template_part", "TemplatePart"),
    ] {
        check(file, &part(class), &round::<Part>);
    }
    check("envelope", &env("TaskRequest"), &envelope);
    let _ = Envelope::from_value(env("TaskRequest")).unwrap();

    for (file, model) in [
        ("task_request", "TaskRequest"),
        ("task_response", "TaskResponse"),
        ("task_update", "TaskUpdate"),
        ("task_cancel", "TaskCancel"),
        ("message_send", "MessageSend"),
        ("state_query", "StateQuery"),
        ("state_restore", "StateRestore"),
        ("artifact_notify", "ArtifactNotify"),
        ("mcp_tool_call", "McpToolCall"),
        ("mcp_tool_result", "McpToolResult"),
        ("mcp_resource_fetch", "McpResourceFetch"),
        ("mcp_resource_data", "McpResourceData"),
        ("message_ack", "MessageAck"),
    ] {
        let sample = env(model)["payload"].clone();
        check(file, &sample, &payload_of(model));
    }

    // Manifest's nested models, each on its part of the full manifest.
    let manifest_schema = vectors::load("schemas_current/manifest.json");
    let defs = manifest_schema["$defs"].as_object().unwrap().clone();
    let full = entities["Manifest_full"].clone();
    for (def, pointer) in [
        ("Capability", "/capabilities"),
        ("Endpoint", "/endpoints"),
        ("AuthScheme", "/auth"),
        ("Skill", "/capabilities/skills/0"),
    ] {
        let sample = full.pointer(pointer).unwrap().clone();
        let decode = |v: &Value| {
            let mut m = full.clone();
            *m.pointer_mut(pointer).unwrap() = v.clone();
            round::<Manifest>(&m)
                .map(|out| out.pointer(pointer).cloned().unwrap_or(Value::Null))
                .map_err(|mut e| {
                    // Report the path relative to the nested object.
                    let prefix = pointer.trim_start_matches('/').replace('/', ".");
                    let prefix = prefix.replace(".0", "[0]");
                    if let Some(rest) = e.path.strip_prefix(&format!("{prefix}.")) {
                        e.path = rest.to_owned();
                    }
                    e
                })
        };
        check_object_schema(def, &defs[def], &defs, &sample, &decode);
    }
}

#[test]
fn jsonrpc_schemas() {
    // Request: decode_request follows the schema (jsonrpc defaults to "2.0").
    let schema = vectors::load("schemas_current/jsonrpc_request.json");
    let sample =
        json!({"jsonrpc": "2.0", "method": "asap.send", "params": {"envelope": {}}, "id": "r-1"});
    let decode = |v: &Value| -> Result<Value, DecodeError> {
        match jsonrpc::decode_request(v.clone()) {
            Ok(req) => Ok(serde_json::to_value(req).unwrap()),
            Err(resp) => {
                let item = &resp.error.data.as_ref().unwrap()["validation_errors"][0];
                let path = item["loc"][0].as_str().unwrap_or("").to_owned();
                let kind = match item["type"].as_str().unwrap() {
                    "missing" => DecodeErrorKind::Missing,
                    "extra_forbidden" => DecodeErrorKind::UnknownField,
                    _ => DecodeErrorKind::InvalidValue,
                };
                Err(DecodeError::new(path, kind, item["msg"].as_str().unwrap()))
            }
        }
    };
    let props: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
    assert_eq!(props, ["jsonrpc", "method", "params", "id"]);
    check_object_schema("jsonrpc_request", &schema, &Map::new(), &sample, &decode);

    // Responses: member order of what we write.
    let ok = SuccessResponse::new(json!({}), RequestId::from("r-1"));
    let keys = |v: Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    let schema_keys = |file: &str| {
        keys(vectors::load(&format!("schemas_current/{file}.json"))["properties"].clone())
    };
    assert_eq!(
        keys(serde_json::to_value(&ok).unwrap()),
        schema_keys("jsonrpc_response")
    );
    let err = ErrorResponse::internal(None, None);
    let err_value = serde_json::to_value(&err).unwrap();
    assert_eq!(
        keys(err_value.clone()),
        schema_keys("jsonrpc_error_response")
    );
    let err_schema = vectors::load("schemas_current/jsonrpc_error_response.json");
    let error_def = &err_schema["$defs"]["JsonRpcError"];
    assert_eq!(
        keys(err_value["error"].clone()),
        keys(error_def["properties"].clone())
    );
}

#[test]
fn schema_index_is_complete() {
    let index = vectors::load("schemas_current/_index.json");
    let mut listed: Vec<String> = index["schemas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| format!("schemas_current/{}.json", v.as_str().unwrap()))
        .collect();
    listed.sort();
    let mut on_disk: Vec<String> = vectors::files_in("schemas_current")
        .into_iter()
        .filter(|p| !p.ends_with("/_index.json"))
        .collect();
    on_disk.sort();
    assert_eq!(listed, on_disk);
}
