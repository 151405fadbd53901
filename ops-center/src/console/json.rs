//! Protobuf messages as JSON for the console's page.
//!
//! The proto3 JSON mapping through the descriptors compiled into
//! `vigil-proto`, in the shape `vigil … --json` prints (the client's
//! `render::json`): .proto field names, every field present, enums by name,
//! 64-bit numbers as numbers (versions and seqs stay far below 2^53) and
//! timestamps in RFC 3339. The page reads the same field names as the
//! .proto files document.

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(vigil_proto::FILE_DESCRIPTOR_SET)
            .expect("the compiled-in descriptor set is valid")
    })
}

/// `msg` (of protobuf type `vigil.v1.{name}`) as a JSON value. A message
/// that cannot be written (a time outside years 1–9999, which proto3 JSON
/// has no form for) becomes `{"error": …}` rather than failing the page.
pub(crate) fn to_json<M: Message>(msg: &M, name: &str) -> serde_json::Value {
    let full = format!("vigil.v1.{name}");
    let Some(desc) = pool().get_message_by_name(&full) else {
        return serde_json::json!({ "error": format!("{full} is not in the descriptor set") });
    };
    let dynamic = match DynamicMessage::decode(desc, msg.encode_to_vec().as_slice()) {
        Ok(d) => d,
        Err(e) => return serde_json::json!({ "error": e.to_string() }),
    };
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false)
        .stringify_64_bit_integers(false);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_proto::v1::{Incident, IncidentState, Priority};

    #[test]
    fn incidents_read_as_the_page_expects() {
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
    }
}
