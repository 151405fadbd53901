//! The wire contract round-trips, and its encoding is pinned: a change to the
//! golden bytes means a field number or type changed, which breaks every
//! deployed gateway and ops center. Add fields; never reshape them.

use std::collections::HashMap;

use vigil_proto::{
    Message, Timestamp,
    v1::{
        AlarmProtocol, AlarmSignal, CameraEvent, CameraEventKind, CameraEventState, ContactId,
        ContactIdQualifier, Event, EventBatch, EventCategory, HealthKind, HealthState, PostCommand,
        PostHealth, PostState, PostStatus, Receipt, ResendUnreceipted, Severity, Source,
        SourceKind, event, post_command,
    },
};

fn ts(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

/// One batch with one event of each body kind, with fixed values.
fn sample_batch() -> EventBatch {
    let alarm = Event {
        post_id: "p-017".into(),
        seq: 41,
        occurred_at: ts(1_790_000_000),
        received_at: ts(1_790_000_001),
        source: Some(Source {
            device_id: "1234".into(),
            kind: SourceKind::AlarmPanel.into(),
        }),
        severity: Severity::High.into(),
        category: EventCategory::Burglary.into(),
        restore: false,
        description: "Burglary alarm, zone 15".into(),
        body: Some(event::Body::Alarm(AlarmSignal {
            account: "1234".into(),
            receiver: "".into(),
            line: "0".into(),
            dc09_sequence: 7,
            protocol: AlarmProtocol::ContactId.into(),
            encrypted: true,
            sia_code: "".into(),
            contact_id: Some(ContactId {
                qualifier: ContactIdQualifier::New.into(),
                event_code: 130,
                partition: 1,
                zone_or_user: 15,
            }),
            zone: 15,
            user: 0,
            partition: 1,
            text: "".into(),
            raw_data: "#1234|1130 01 015".into(),
        })),
    };
    let camera = Event {
        post_id: "p-017".into(),
        seq: 42,
        occurred_at: ts(1_790_000_002),
        received_at: ts(1_790_000_002),
        source: Some(Source {
            device_id: "cam-2".into(),
            kind: SourceKind::Camera.into(),
        }),
        severity: Severity::High.into(),
        category: EventCategory::VideoDetection.into(),
        restore: false,
        description: "Intrusion, Perimeter-North".into(),
        body: Some(event::Body::Camera(CameraEvent {
            camera_id: "cam-2".into(),
            kind: CameraEventKind::Intrusion.into(),
            state: CameraEventState::Start.into(),
            region: "Perimeter-North".into(),
            confidence: Some(0.75),
            topic: "tns1:RuleEngine/FieldDetector/ObjectsInside".into(),
            video_source: "VideoSource_1".into(),
            attributes: HashMap::new(),
        })),
    };
    let health = Event {
        post_id: "p-017".into(),
        seq: 43,
        occurred_at: None,
        received_at: ts(1_790_000_100),
        source: Some(Source {
            device_id: "gateway".into(),
            kind: SourceKind::Gateway.into(),
        }),
        severity: Severity::Medium.into(),
        category: EventCategory::Supervisory.into(),
        restore: false,
        description: "Panel 1234 silent".into(),
        body: Some(event::Body::Health(PostHealth {
            kind: HealthKind::PanelSupervision.into(),
            state: HealthState::Fault.into(),
            subject: "1234".into(),
            outbox_depth: 3,
            detail: "no message for 95 s".into(),
        })),
    };
    EventBatch {
        post_id: "p-017".into(),
        events: vec![alarm, camera, health],
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn event_batch_round_trips() {
    let batch = sample_batch();
    let bytes = batch.encode_to_vec();
    assert_eq!(EventBatch::decode(bytes.as_slice()).unwrap(), batch);
}

#[test]
fn other_messages_round_trip() {
    let receipt = Receipt {
        post_id: "p-017".into(),
        durable_through_seq: u64::MAX,
    };
    assert_eq!(
        Receipt::decode(receipt.encode_to_vec().as_slice()).unwrap(),
        receipt
    );

    let status = PostStatus {
        post_id: "p-017".into(),
        state: PostState::Offline.into(),
        at: ts(1_790_000_000),
        gateway_version: "0.1.0".into(),
        outbox_depth: 12,
        last_seq: 99,
        receipted_through_seq: 87,
        boot_id: "b-1".into(),
        connection: 3,
    };
    assert_eq!(
        PostStatus::decode(status.encode_to_vec().as_slice()).unwrap(),
        status
    );

    let command = PostCommand {
        post_id: "p-017".into(),
        command_id: "c-1".into(),
        issued_at: ts(1),
        issued_by: "alice".into(),
        command: Some(post_command::Command::ResendUnreceipted(
            ResendUnreceipted { from_seq: 5 },
        )),
    };
    assert_eq!(
        PostCommand::decode(command.encode_to_vec().as_slice()).unwrap(),
        command
    );
}

#[test]
fn event_batch_wire_bytes_are_pinned() {
    let bytes = sample_batch().encode_to_vec();
    // Hand-checked start: field 1 (post_id), wire type 2 → tag 0x0a, length
    // 5, "p-017"; then field 2 (events), wire type 2 → tag 0x12.
    assert_eq!(&bytes[..7], b"\x0a\x05p-017");
    assert_eq!(bytes[7], 0x12);
    let golden = include_str!("golden/event_batch.hex").trim();
    assert_eq!(
        to_hex(&bytes),
        golden,
        "the EventBatch encoding changed: field numbers or types were altered"
    );
}

#[test]
fn unknown_fields_are_skipped_by_older_readers() {
    // A newer sender adds field 99 (varint) to a Receipt; we must still
    // decode the fields we know.
    let mut bytes = Receipt {
        post_id: "p-1".into(),
        durable_through_seq: 7,
    }
    .encode_to_vec();
    bytes.extend_from_slice(&[0x98, 0x06, 0x01]); // tag (99 << 3 | 0), value 1
    let decoded = Receipt::decode(bytes.as_slice()).unwrap();
    assert_eq!(decoded.durable_through_seq, 7);
}

#[test]
fn descriptor_set_names_the_service() {
    let fds = prost_types::FileDescriptorSet::decode(vigil_proto::FILE_DESCRIPTOR_SET).unwrap();
    let services: Vec<_> = fds
        .file
        .iter()
        .flat_map(|f| f.service.iter().map(move |s| (f.package(), s.name())))
        .collect();
    assert!(
        services.contains(&("vigil.v1", "OpsCenter")),
        "{services:?}"
    );
}
