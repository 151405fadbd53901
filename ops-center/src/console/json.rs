//! Protobuf messages as JSON for the console's page: the shape `vigil …
//! --json` prints ([`vigil_proto::json`]), so the page reads the same field
//! names as the .proto files document.

pub(crate) use vigil_proto::json::to_json;
