//! The device's side of the ONVIF SOAP conversation, which only the
//! simulated camera speaks: notification messages, fault envelopes, and the
//! check of a request's WS-Security UsernameToken. The vocabulary both
//! sides share (the element tree, envelopes, digests, times) is the
//! gateway's `camera::onvif::soap`.

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use quick_xml::escape::escape;
use time::OffsetDateTime;
use vigil_gateway::camera::onvif::soap::{
    Credentials, Element, Notification, envelope, parse_time, password_digest,
};

/// A `wsnt:NotificationMessage` element for `n`.
pub fn notification_xml(n: &Notification) -> String {
    let items = |items: &[(String, String)]| {
        items
            .iter()
            .map(|(k, v)| {
                format!(
                    "<tt:SimpleItem Name=\"{}\" Value=\"{}\"/>",
                    escape(k.as_str()),
                    escape(v.as_str())
                )
            })
            .collect::<String>()
    };
    let mut attrs = String::new();
    if let Some(t) = &n.utc_time {
        attrs.push_str(&format!(" UtcTime=\"{}\"", escape(t.as_str())));
    }
    if let Some(p) = &n.property_operation {
        attrs.push_str(&format!(" PropertyOperation=\"{}\"", escape(p.as_str())));
    }
    format!(
        "<wsnt:NotificationMessage><wsnt:Topic Dialect=\"http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet\">{}</wsnt:Topic>\
         <wsnt:Message><tt:Message{attrs}><tt:Source>{}</tt:Source><tt:Data>{}</tt:Data></tt:Message></wsnt:Message></wsnt:NotificationMessage>",
        escape(n.topic.as_str()),
        items(&n.source),
        items(&n.data)
    )
}

/// A SOAP 1.2 fault envelope.
pub fn fault_xml(code: &str, subcode: &str, reason: &str) -> String {
    envelope(
        "",
        &format!(
            "<s:Fault><s:Code><s:Value>{code}</s:Value><s:Subcode><s:Value>{subcode}</s:Value></s:Subcode></s:Code>\
             <s:Reason><s:Text xml:lang=\"en\">{}</s:Text></s:Reason></s:Fault>",
            escape(reason)
        ),
        &[],
    )
}

/// How far a token's `Created` may be from the checker's clock.
pub const MAX_CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

/// The UsernameToken of a request, checked against `credentials` and the
/// clock `now`. Returns why it is refused.
pub fn check_security(
    envelope: &Element,
    credentials: &Credentials,
    now: OffsetDateTime,
) -> Result<(), String> {
    let token = envelope
        .child("Header")
        .and_then(|h| h.child("Security"))
        .and_then(|s| s.child("UsernameToken"))
        .ok_or("no WS-Security UsernameToken")?;
    let field = |name: &str| token.child(name).map(|e| e.trimmed().to_owned());
    let username = field("Username").ok_or("UsernameToken without Username")?;
    let password = token
        .child("Password")
        .ok_or("UsernameToken without Password")?;
    if !password
        .attr("Type")
        .is_some_and(|t| t.ends_with("#PasswordDigest"))
    {
        return Err("only PasswordDigest is accepted".into());
    }
    let nonce = field("Nonce").ok_or("UsernameToken without Nonce")?;
    let nonce = B64
        .decode(nonce.as_bytes())
        .map_err(|_| "Nonce is not Base64")?;
    let created = field("Created").ok_or("UsernameToken without Created")?;
    let at = parse_time(&created).ok_or("Created is not a time")?;
    if (now - at).abs() > MAX_CLOCK_SKEW {
        return Err(format!(
            "Created {created} is more than {MAX_CLOCK_SKEW} from the camera's clock"
        ));
    }
    let expected = password_digest(&nonce, &created, &credentials.password);
    let user_ok = username.as_bytes() == credentials.username.as_bytes();
    let digest_ok = bool::from(subtle::ConstantTimeEq::ct_eq(
        expected.as_bytes(),
        password.trimmed().as_bytes(),
    ));
    if user_ok && digest_ok {
        Ok(())
    } else {
        Err("wrong username or password".into())
    }
}

#[cfg(test)]
mod tests {
    use vigil_gateway::camera::onvif::soap::{
        fault, parse, read_pull, security_header, unsubscribe_body,
    };

    use super::*;

    #[test]
    fn security_header_round_trips_through_the_checker() {
        let good = Credentials {
            username: "admin".into(),
            password: "s3cret&<".into(),
        };
        let text = envelope(
            &security_header(&good, OffsetDateTime::now_utc()),
            unsubscribe_body(),
            &[],
        );
        let env = parse(&text).unwrap();
        let now = OffsetDateTime::now_utc();
        assert_eq!(check_security(&env, &good, now), Ok(()));
        // A token made long ago (a replay, or a clock far off) is refused.
        let late = check_security(&env, &good, now + time::Duration::minutes(10));
        assert!(late.unwrap_err().contains("Created"));
        let bad = Credentials {
            password: "wrong".into(),
            ..good.clone()
        };
        assert!(check_security(&env, &bad, now).is_err());
        let other = Credentials {
            username: "root".into(),
            ..good
        };
        assert!(check_security(&env, &other, now).is_err());
    }

    #[test]
    fn reads_notifications_and_faults() {
        let n = Notification {
            topic: "tns1:RuleEngine/LineDetector/Crossed".into(),
            utc_time: Some("2026-11-26T09:00:00Z".into()),
            property_operation: None,
            source: vec![("Rule".into(), "Gate & fence".into())],
            data: vec![("ObjectId".into(), "7".into())],
        };
        let text = envelope(
            "",
            &format!(
                "<tev:PullMessagesResponse><tev:CurrentTime>2026-11-26T09:00:00Z</tev:CurrentTime>\
                 <tev:TerminationTime>2026-11-26T09:01:00Z</tev:TerminationTime>{}</tev:PullMessagesResponse>",
                notification_xml(&n)
            ),
            &[],
        );
        let (got, lease) = read_pull(&parse(&text).unwrap()).unwrap();
        assert_eq!(got, vec![n]);
        assert_eq!(lease.remaining(), Some(std::time::Duration::from_secs(60)));

        let f = fault(
            &parse(&fault_xml(
                "s:Sender",
                "ter:NotAuthorized",
                "Sender not authorized",
            ))
            .unwrap(),
        )
        .unwrap();
        assert!(f.is_not_authorized());
        assert_eq!(
            f.to_string(),
            "s:Sender/ter:NotAuthorized: Sender not authorized"
        );
    }
}
