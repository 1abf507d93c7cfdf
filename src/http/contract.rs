//! The exact shapes the derive macros cannot state: conditional rules (a HEADER needs `text`
//! unless it carries media; `message_send_ttl_seconds` only on AUTHENTICATION), the create-or-
//! update body of a sequence, case-insensitive enums, comma-separated enum lists and
//! "not blank" strings. Each schema is built from the same constants the validators use, and
//! `scripts/contract-check` (schemathesis, in CI) holds document and behaviour to each other.

use serde_json::{json, Value};

use crate::graph::templates::{
    BUTTON_TYPES, COMPONENT_TYPES, CREATE_CATEGORIES, FORMATS, LIST_CATEGORIES, QUALITY_SCORES,
    STATUSES, SUB_CATEGORIES,
};
use crate::graph::{MAX_SAFE_INTEGER, NOT_BLANK};

/// The control characters (`char::is_control`: C0, DEL and C1), as the inside of a regex
/// character class.
const CONTROL: &str = "\\x00-\\x1f\\x7f-\\x9f";

/// One of `values`, in any letter case (the validators compare upper-cased).
fn ci_alternatives(values: &[&str]) -> String {
    values
        .iter()
        .map(|v| {
            v.chars()
                .map(|c| {
                    if c.is_ascii_alphabetic() {
                        format!("[{}{}]", c.to_ascii_lowercase(), c.to_ascii_uppercase())
                    } else {
                        regex_escape(c)
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("|")
}

fn regex_escape(c: char) -> String {
    if "\\^$.|?*+()[]{}/".contains(c) {
        format!("\\{c}")
    } else {
        c.to_string()
    }
}

fn ci_enum(values: &[&str]) -> Value {
    json!({"type": "string", "pattern": format!("^({})$", ci_alternatives(values))})
}

/// A comma-separated list of `values` (spaces around items allowed), as the list filters take.
fn ci_list(values: &[&str]) -> Value {
    let one = format!("[ \\t]*({})[ \\t]*", ci_alternatives(values));
    json!({"type": "string", "pattern": format!("^{one}(,{one})*$")})
}

fn not_blank() -> Value {
    json!({"type": "string", "pattern": NOT_BLANK})
}

/// Graph's numeric ids may be sent as strings or numbers.
fn text_or_number() -> Value {
    json!({"type": ["string", "number"], "pattern": NOT_BLANK})
}

fn welcome_message_sequence() -> Value {
    json!({
        "type": "object",
        "description": "`text`, `autofill_message.content` and up to 3 `ice_breakers` (each a `title`).",
        "properties": {
            "text": {"type": "string"},
            "autofill_message": {
                "type": "object",
                "required": ["content"],
                "properties": {"content": {"type": "string"}}
            },
            "ice_breakers": {
                "type": "array",
                "maxItems": 3,
                "items": {
                    "type": "object",
                    "required": ["title"],
                    "properties": {"title": {"type": "string", "minLength": 1}}
                }
            }
        }
    })
}

/// Create (`name` and `welcome_message_sequence`) or update (`sequence_id` and at least one
/// of the others). A `null` counts as absent.
pub fn sequence_body() -> Value {
    let name = text_or_number();
    let wms = welcome_message_sequence();
    json!({
        "description": "Create a sequence (name and welcome_message_sequence), or update one (sequence_id and at least one of the others).",
        "oneOf": [
            {
                "title": "Create",
                "type": "object",
                "required": ["name", "welcome_message_sequence"],
                "properties": {
                    "sequence_id": {"type": "null"},
                    "name": name,
                    "welcome_message_sequence": wms,
                }
            },
            {
                "title": "Update",
                "type": "object",
                "required": ["sequence_id"],
                "properties": {
                    "sequence_id": text_or_number(),
                    "name": {"anyOf": [name, {"type": "null"}]},
                    "welcome_message_sequence": {"anyOf": [wms, {"type": "null"}]},
                },
                "anyOf": [
                    {"required": ["name"], "properties": {"name": name}},
                    {"required": ["welcome_message_sequence"], "properties": {"welcome_message_sequence": wms}}
                ]
            }
        ]
    })
}

fn component() -> Value {
    let optional_text = json!({"type": ["string", "null"]});
    json!({
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": ci_enum(COMPONENT_TYPES),
            "format": {"type": ["string", "null"], "pattern": format!("^({})$", ci_alternatives(FORMATS))},
            "text": optional_text,
        },
        "allOf": [
            {
                "if": {"properties": {"type": ci_enum(&["BODY", "FOOTER"])}},
                "then": {"required": ["text"], "properties": {"text": not_blank()}}
            },
            {
                "if": {"properties": {
                    "type": ci_enum(&["HEADER"]),
                    "format": {"anyOf": [{"type": "null"}, ci_enum(&["TEXT"])]}
                }},
                "then": {"required": ["text"], "properties": {"text": not_blank()}}
            },
            {
                "if": {"properties": {"type": ci_enum(&["BUTTONS"])}},
                "then": {
                    "required": ["buttons"],
                    "properties": {"buttons": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["type"],
                            "properties": {"type": ci_enum(BUTTON_TYPES), "text": optional_text}
                        }
                    }}
                }
            }
        ]
    })
}

/// Seed 004's POST body; unknown fields are forwarded as they are.
pub fn template_body() -> Value {
    json!({
        "type": "object",
        "description": "A new template (seed 004). HEADER (text format), BODY and FOOTER need non-blank `text`; BUTTONS need `buttons`; `message_send_ttl_seconds` is for AUTHENTICATION only. Unknown fields are forwarded.",
        "required": ["name", "language", "category", "components"],
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9_]{1,512}$", "example": "seasonal_promotion"},
            "language": {"type": "string", "pattern": NOT_BLANK, "example": "en_US"},
            "category": ci_enum(CREATE_CATEGORIES),
            "allow_category_change": {"type": ["boolean", "null"]},
            "message_send_ttl_seconds": {"type": ["integer", "null"], "minimum": -MAX_SAFE_INTEGER, "maximum": MAX_SAFE_INTEGER},
            "sub_category": {"type": ["string", "null"], "pattern": format!("^({})$", ci_alternatives(SUB_CATEGORIES))},
            "components": {"type": "array", "minItems": 1, "items": component()}
        },
        "if": {"required": ["message_send_ttl_seconds"], "properties": {"message_send_ttl_seconds": {"type": "integer"}}},
        "then": {"properties": {"category": ci_enum(&["AUTHENTICATION"])}}
    })
}

/// Sets the schema (and `required`) of one parameter of one operation.
fn param(doc: &mut Value, path: &str, method: &str, name: &str, required: bool, schema: Value) {
    let Some(params) = doc
        .pointer_mut(&format!(
            "/paths/{}/{method}/parameters",
            path.replace('/', "~1")
        ))
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    if let Some(p) = params.iter_mut().find(|p| p["name"] == name) {
        p["schema"] = schema;
        p["required"] = Value::Bool(required);
    }
}

/// Adds a documented error status to an operation.
fn status(doc: &mut Value, path: &str, method: &str, code: &str, description: &str) {
    if let Some(responses) = doc.pointer_mut(&format!(
        "/paths/{}/{method}/responses",
        path.replace('/', "~1")
    )) {
        responses[code] = json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}
        });
    }
}

/// Every query string parameter is at least one character (an empty value is refused).
fn no_empty_query_values(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for operation in paths.values_mut().filter_map(Value::as_object_mut) {
        for op in operation.values_mut() {
            let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
                continue;
            };
            for p in params.iter_mut().filter(|p| p["in"] == "query") {
                let schema = &mut p["schema"];
                if schema["type"] == "string" && schema.get("minLength").is_none() {
                    schema["minLength"] = json!(1);
                }
            }
        }
    }
}

/// `since` / `until`: RFC 3339, or unix seconds.
fn time() -> Value {
    json!({"anyOf": [
        {"type": "string", "format": "date-time"},
        {"type": "string", "pattern": "^-?[0-9]{1,12}$"}
    ]})
}

/// Makes the generated document exact where the derives could not.
pub fn refine(doc: &mut Value) {
    for path in ["/v1/leads", "/v1/leads/export", "/v1/leads/stats"] {
        param(doc, path, "get", "since", false, time());
        param(doc, path, "get", "until", false, time());
    }
    let schemas = &mut doc["components"]["schemas"];
    schemas["SequenceBody"] = sequence_body();
    schemas["TemplateBody"] = template_body();

    param(
        doc,
        "/webhook",
        "get",
        "hub.mode",
        true,
        json!({"type": "string", "enum": ["subscribe"]}),
    );
    param(
        doc,
        "/webhook",
        "get",
        "hub.verify_token",
        true,
        json!({"type": "string", "minLength": 1}),
    );
    param(
        doc,
        "/webhook",
        "get",
        "hub.challenge",
        true,
        json!({"type": "string", "minLength": 1}),
    );

    param(
        doc,
        "/v1/leads/export",
        "get",
        "format",
        false,
        json!({"type": "string", "enum": ["csv", "ndjson"]}),
    );

    let templates = "/v1/message_templates";
    param(
        doc,
        templates,
        "get",
        "category",
        false,
        ci_list(LIST_CATEGORIES),
    );
    param(
        doc,
        templates,
        "get",
        "quality_score",
        false,
        ci_list(QUALITY_SCORES),
    );
    param(doc, templates, "get", "status", false, ci_list(STATUSES));
    let count = json!({"type": "integer", "minimum": 1, "maximum": u32::MAX});
    param(doc, templates, "get", "limit", false, count.clone());
    param(doc, templates, "delete", "name", true, not_blank());

    let sequences = "/v1/welcome_message_sequences";
    param(doc, sequences, "get", "sequence_id", false, not_blank());
    param(doc, sequences, "get", "limit", false, count);
    param(doc, sequences, "delete", "sequence_id", true, not_blank());

    param(
        doc,
        "/v1/contacts/{id}",
        "delete",
        "id",
        true,
        // No control character anywhere, and one character that is not a space.
        json!({"type": "string", "minLength": 1, "maxLength": 128,
               "pattern": format!("^[^{CONTROL}]*[^ {CONTROL}][^{CONTROL}]*$")}),
    );

    conversion_bodies(doc);
    for path in [
        templates,
        sequences,
        "/v1/leads/{id}/conversions",
        "/v1/conversions",
        "/v1/dataset",
    ] {
        status(
            doc,
            path,
            "post",
            "415",
            "The body is not sent as application/json",
        );
    }
    no_empty_query_values(doc);
}

/// The conversion bodies' rules (the same constants `capi` checks with): Meta's event names,
/// currency with value and value with currency, a bounded value, an event id without control
/// characters. The 7-day window of `event_time` moves: [`conversion_window`] sets it when the
/// document is served.
fn conversion_bodies(doc: &mut Value) {
    for name in ["ConversionBody", "ClidConversionBody"] {
        let Some(schema) = doc.pointer_mut(&format!("/components/schemas/{name}")) else {
            continue;
        };
        let names: Vec<&str> = crate::capi::CONFIRMED_EVENTS
            .iter()
            .chain(crate::capi::LISTED_EVENTS)
            .copied()
            .collect();
        let props = &mut schema["properties"];
        props["event_name"]["enum"] = json!(names);
        props["currency"]["pattern"] = json!("^[A-Z]{3}$");
        props["value"]["maximum"] = json!(crate::capi::MAX_VALUE);
        props["event_id"]["minLength"] = json!(1);
        props["event_id"]["maxLength"] = json!(crate::capi::MAX_EVENT_ID);
        props["event_id"]["pattern"] = json!(format!("^[^{CONTROL}]*$"));
        props["event_time"]["type"] = json!(["integer", "null"]);
        if let Some(clid) = props.get_mut("ctwa_clid") {
            clid["pattern"] = json!(NOT_BLANK);
        }
        let with = |a: &str, a_type: &str, b: &str, b_type: &str| {
            json!({
                "if": {"properties": {a: {"type": a_type}}, "required": [a]},
                "then": {"properties": {b: {"type": b_type}}, "required": [b]}
            })
        };
        schema["allOf"] = json!([
            with("value", "number", "currency", "string"),
            with("currency", "string", "value", "number"),
        ]);
    }
    if let Some(name) = doc.pointer_mut("/components/schemas/DatasetBody/properties/dataset_name") {
        *name = json!({
            "type": "string",
            "pattern": NOT_BLANK,
            "maxLength": 255,
            "description": "A name for the dataset, shown in Events Manager."
        });
    }
}

/// Sets the range `event_time` may take at `now` (unix seconds): not in the future, and inside
/// Meta's 7-day window for at least the next hour.
pub fn conversion_window(doc: &mut Value, now: i64) {
    let oldest = now - crate::capi::MAX_AGE.as_secs() as i64 + 3600;
    for name in ["ConversionBody", "ClidConversionBody"] {
        if let Some(t) =
            doc.pointer_mut(&format!("/components/schemas/{name}/properties/event_time"))
        {
            t["minimum"] = json!(oldest);
            t["maximum"] = json!(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_insensitive_enums_escape_and_alternate() {
        assert_eq!(ci_alternatives(&["A_B", "c"]), "[aA]_[bB]|[cC]");
        assert_eq!(regex_escape('.'), "\\.");
    }
}
