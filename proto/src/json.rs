//! Messages as proto3 JSON, through the descriptors compiled into this
//! crate: the one shape the client's `--json`, the browser console and the
//! event archives all write. .proto field names (`post_id`), enums by name,
//! 64-bit numbers as numbers (seqs and versions stay far below 2^53),
//! timestamps in RFC 3339.

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage, SerializeOptions, Value};

use crate::{FILE_DESCRIPTOR_SET, Timestamp, time_in_range};

/// The descriptors of every Vigil message, decoded once.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(FILE_DESCRIPTOR_SET)
            .expect("the compiled-in descriptor set is valid")
    })
}

/// Which fields to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fields {
    /// Every field, defaults too: the shape scripts and pages read.
    All,
    /// Only fields that are set: smaller, for files.
    Set,
}

/// `bytes`, an encoded `vigil.v1.{name}`, as JSON. A time outside years
/// 1–9999 (which proto3 JSON has no form for, and which a store may hold
/// from before ingest refused them) is left out rather than failing the
/// whole message. Errs when `name` is unknown or `bytes` do not decode.
pub fn bytes_to_json(
    name: &str,
    bytes: &[u8],
    fields: Fields,
) -> Result<serde_json::Value, String> {
    let full = format!("vigil.v1.{name}");
    let desc = pool()
        .get_message_by_name(&full)
        .ok_or_else(|| format!("{full} is not in the descriptor set"))?;
    let mut dynamic = DynamicMessage::decode(desc, bytes).map_err(|e| e.to_string())?;
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(fields == Fields::Set)
        .stringify_64_bit_integers(false);
    match dynamic.serialize_with_options(serde_json::value::Serializer, &options) {
        Ok(value) => Ok(value),
        Err(_) => {
            clear_unprintable_times(&mut dynamic);
            dynamic
                .serialize_with_options(serde_json::value::Serializer, &options)
                .map_err(|e| e.to_string())
        }
    }
}

/// `msg` (of type `vigil.v1.{name}`) as JSON with every field; a message
/// that still cannot be written becomes `{"error": …}`.
pub fn to_json<M: Message>(msg: &M, name: &str) -> serde_json::Value {
    bytes_to_json(name, &msg.encode_to_vec(), Fields::All)
        .unwrap_or_else(|e| serde_json::json!({ "error": e }))
}

/// Whether a `google.protobuf.Timestamp` can be written as RFC 3339.
fn printable_time(ts: &DynamicMessage) -> bool {
    let field = |name: &str| {
        ts.get_field_by_name(name)
            .and_then(|v| v.as_i64().or_else(|| v.as_i32().map(i64::from)))
            .unwrap_or(0)
    };
    time_in_range(&Timestamp {
        seconds: field("seconds"),
        nanos: i32::try_from(field("nanos")).unwrap_or(-1),
    })
}

/// Clears, at any depth, the timestamps that [`printable_time`] refuses.
fn clear_unprintable_times(msg: &mut DynamicMessage) {
    let is_time = |m: &DynamicMessage| m.descriptor().full_name() == "google.protobuf.Timestamp";
    let unprintable =
        |v: &Value| matches!(v, Value::Message(m) if is_time(m) && !printable_time(m));
    let fields: Vec<_> = msg.fields().map(|(f, _)| f).collect();
    for field in fields {
        let clear = match msg.get_field_mut(&field) {
            Value::Message(m) if is_time(m) => !printable_time(m),
            Value::Message(m) => {
                clear_unprintable_times(m);
                false
            }
            Value::List(items) => {
                items.retain(|v| !unprintable(v));
                for v in items.iter_mut() {
                    if let Value::Message(m) = v {
                        clear_unprintable_times(m);
                    }
                }
                false
            }
            Value::Map(entries) => {
                entries.retain(|_, v| !unprintable(v));
                for v in entries.values_mut() {
                    if let Value::Message(m) = v {
                        clear_unprintable_times(m);
                    }
                }
                false
            }
            _ => false,
        };
        if clear {
            msg.clear_field(&field);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Event, Incident, IncidentState, Priority};

    #[test]
    fn every_field_by_its_proto_name_or_only_the_set_ones() {
        let incident = Incident {
            id: "inc-000007".into(),
            state: IncidentState::Open as i32,
            priority: Priority::P1 as i32,
            version: 3,
            ..Default::default()
        };
        let v = to_json(&incident, "Incident");
        assert_eq!(v["id"], "inc-000007");
        assert_eq!(v["state"], "INCIDENT_STATE_OPEN");
        assert_eq!(v["priority"], "PRIORITY_P1");
        assert_eq!(v["version"], 3);
        assert_eq!(v["assignee"], "");
        let set = bytes_to_json("Incident", &incident.encode_to_vec(), Fields::Set).unwrap();
        assert_eq!(set["version"], 3);
        assert!(set.get("assignee").is_none());
        assert!(bytes_to_json("Nothing", b"", Fields::All).is_err());
        assert!(bytes_to_json("Incident", b"\xff\xff", Fields::All).is_err());
    }

    #[test]
    fn a_time_out_of_range_is_left_out_not_the_message() {
        let event = Event {
            post_id: "p-1".into(),
            seq: 4,
            occurred_at: Some(Timestamp {
                seconds: i64::MAX,
                nanos: 0,
            }),
            received_at: Some(Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            ..Default::default()
        };
        let v = to_json(&event, "Event");
        assert_eq!(v["seq"], 4);
        assert!(v["occurred_at"].is_null(), "{v}");
        assert_eq!(v["received_at"], "1970-01-01T00:00:00Z");
    }
}
