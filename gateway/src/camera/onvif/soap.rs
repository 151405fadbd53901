//! The SOAP side of ONVIF events, as the PullPoint client speaks it (the
//! camera simulator in `vigil-sim` uses the same vocabulary): a small
//! element tree over `quick-xml`, the request envelopes (with WS-Security
//! UsernameToken digests and WS-Addressing headers), and readers for the
//! answers (event service address, subscription reference, notification
//! messages, faults). What only a device writes or checks (notification
//! messages, fault envelopes, the UsernameToken check) lives with the
//! simulator.
//!
//! Element and attribute names are matched by their local name: the
//! prefixes cameras use differ (`tev:`, `ns2:`, none), the local names in
//! the ONVIF and WS-Notification schemas do not clash for what is read here.

use std::ops::Range;

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use quick_xml::{escape::escape, events::Event as XmlEvent};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

pub const NS_SOAP: &str = "http://www.w3.org/2003/05/soap-envelope";
pub const NS_WSSE: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
pub const NS_WSU: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd";
pub const NS_WSA: &str = "http://www.w3.org/2005/08/addressing";
pub const NS_TDS: &str = "http://www.onvif.org/ver10/device/wsdl";
pub const NS_TEV: &str = "http://www.onvif.org/ver10/events/wsdl";
pub const NS_WSNT: &str = "http://docs.oasis-open.org/wsn/b-2";
pub const NS_TT: &str = "http://www.onvif.org/ver10/schema";
pub const NS_TNS1: &str = "http://www.onvif.org/ver10/topics";
pub const NS_TER: &str = "http://www.onvif.org/ver10/error";
pub const PASSWORD_DIGEST: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordDigest";
pub const BASE64_BINARY: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary";

/// SOAP actions, also sent as the `action` parameter of the content type.
pub mod action {
    pub const GET_CAPABILITIES: &str = "http://www.onvif.org/ver10/device/wsdl/GetCapabilities";
    pub const CREATE_PULL_POINT: &str =
        "http://www.onvif.org/ver10/events/wsdl/EventPortType/CreatePullPointSubscriptionRequest";
    pub const PULL_MESSAGES: &str =
        "http://www.onvif.org/ver10/events/wsdl/PullPointSubscription/PullMessagesRequest";
    pub const RENEW: &str = "http://docs.oasis-open.org/wsn/bw-2/SubscriptionManager/RenewRequest";
    pub const UNSUBSCRIBE: &str =
        "http://docs.oasis-open.org/wsn/bw-2/SubscriptionManager/UnsubscribeRequest";
}

/// Deepest element nesting accepted; ONVIF answers are a dozen deep.
pub const MAX_DEPTH: usize = 64;
/// Most elements in one document.
pub const MAX_ELEMENTS: usize = 50_000;

/// Why a document could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum XmlError {
    #[error("malformed XML at byte {at}: {reason}")]
    Malformed { at: u64, reason: String },
    #[error("XML nested deeper than {MAX_DEPTH} elements")]
    TooDeep,
    #[error("XML with more than {MAX_ELEMENTS} elements")]
    TooLarge,
    #[error("XML without a root element")]
    Empty,
    #[error("{0}")]
    Missing(String),
}

/// One element: local name, attributes by local name, children, text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Element {
    /// Local name (without prefix).
    pub name: String,
    /// Attributes as `(local name, value)`; namespace declarations are in
    /// `ns_decls` instead.
    pub attrs: Vec<(String, String)>,
    /// `xmlns:p="uri"` declarations on this element, as `("xmlns:p", uri)`.
    pub ns_decls: Vec<(String, String)>,
    pub children: Vec<Element>,
    /// Text directly inside this element, entities resolved.
    pub text: String,
    /// Where the element is in the parsed text.
    pub raw: Range<usize>,
}

impl Element {
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The first descendant (depth first, self included) named `name`.
    pub fn find(&self, name: &str) -> Option<&Element> {
        if self.name == name {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(name))
    }

    /// Follows a path of child names.
    pub fn path(&self, names: &[&str]) -> Option<&Element> {
        names.iter().try_fold(self, |e, n| e.child(n))
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn trimmed(&self) -> &str {
        self.text.trim()
    }
}

fn local(qname: &str) -> &str {
    qname.rsplit_once(':').map_or(qname, |(_, l)| l)
}

fn malformed(at: u64, reason: impl std::fmt::Display) -> XmlError {
    XmlError::Malformed {
        at,
        reason: reason.to_string(),
    }
}

/// Parses a whole document into its root element.
pub fn parse(text: &str) -> Result<Element, XmlError> {
    let mut reader = quick_xml::Reader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root = None;
    let mut count = 0usize;
    loop {
        let before = reader.buffer_position();
        let event = reader
            .read_event()
            .map_err(|e| malformed(reader.error_position(), e))?;
        let after = reader.buffer_position();
        match event {
            XmlEvent::Start(ref start) | XmlEvent::Empty(ref start) => {
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(XmlError::TooLarge);
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::TooDeep);
                }
                if root.is_some() {
                    return Err(malformed(before, "content after the root element"));
                }
                let mut element = Element {
                    name: local(start.name().as_ref()).to_owned(),
                    raw: before as usize..after as usize,
                    ..Default::default()
                };
                for attr in start.attributes() {
                    let attr = attr.map_err(|e| malformed(before, e))?;
                    let key = attr.key.as_ref().to_owned();
                    let value = attr
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .map_err(|e| malformed(before, e))?
                        .into_owned();
                    if key == "xmlns" || key.starts_with("xmlns:") {
                        element.ns_decls.push((key, value));
                    } else {
                        element.attrs.push((local(&key).to_owned(), value));
                    }
                }
                if matches!(event, XmlEvent::Empty(_)) {
                    close(&mut stack, &mut root, element);
                } else {
                    stack.push(element);
                }
            }
            XmlEvent::End(end) => {
                let mut element = stack
                    .pop()
                    .ok_or_else(|| malformed(before, "end tag without start"))?;
                if element.name != local(end.name().as_ref()) {
                    return Err(malformed(before, "mismatched end tag"));
                }
                element.raw.end = after as usize;
                close(&mut stack, &mut root, element);
            }
            XmlEvent::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t.xml10_content());
                } else if !t.xml10_content().trim().is_empty() {
                    return Err(malformed(before, "text outside the root element"));
                }
            }
            XmlEvent::CData(c) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&c.xml10_content());
                }
            }
            XmlEvent::GeneralRef(r) => {
                let resolved = if r.is_char_ref() {
                    r.resolve_char_ref()
                        .map_err(|e| malformed(before, e))?
                        .map(String::from)
                } else {
                    quick_xml::escape::resolve_predefined_entity(&r.xml10_content())
                        .map(str::to_owned)
                };
                let resolved = resolved.ok_or_else(|| malformed(before, "unknown entity"))?;
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&resolved);
                }
            }
            XmlEvent::DocType(_) => {
                return Err(malformed(before, "DOCTYPE is not accepted"));
            }
            XmlEvent::Eof => break,
            XmlEvent::Comment(_) | XmlEvent::Decl(_) | XmlEvent::PI(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(malformed(text.len() as u64, "unexpected end of document"));
    }
    root.ok_or(XmlError::Empty)
}

fn close(stack: &mut [Element], root: &mut Option<Element>, element: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(element),
        None => *root = Some(element),
    }
}

/// A SOAP fault, as the camera described it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Fault {
    /// `Code/Value`, e.g. `env:Sender`.
    pub code: String,
    /// The innermost `Subcode/Value`, e.g. `ter:NotAuthorized`.
    pub subcode: String,
    /// `Reason/Text`.
    pub reason: String,
}

impl Fault {
    /// The camera refused the credentials.
    pub fn is_not_authorized(&self) -> bool {
        let sub = local(&self.subcode);
        sub == "NotAuthorized" || sub == "FailedAuthentication" || sub == "InvalidSecurity"
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.code)?;
        if !self.subcode.is_empty() {
            write!(f, "/{}", self.subcode)?;
        }
        if !self.reason.is_empty() {
            write!(f, ": {}", self.reason)?;
        }
        Ok(())
    }
}

/// The `Body` of an envelope.
pub fn body(envelope: &Element) -> Result<&Element, XmlError> {
    if envelope.name != "Envelope" {
        return Err(XmlError::Missing(format!(
            "expected a SOAP Envelope, got <{}>",
            envelope.name
        )));
    }
    envelope
        .child("Body")
        .ok_or_else(|| XmlError::Missing("SOAP Envelope without Body".into()))
}

/// The fault in an envelope's body, if it is one (SOAP 1.2 or 1.1 shape).
pub fn fault(envelope: &Element) -> Option<Fault> {
    let f = body(envelope).ok()?.child("Fault")?;
    if let Some(code) = f.child("Code") {
        let mut subcode = String::new();
        let mut sub = code.child("Subcode");
        while let Some(s) = sub {
            if let Some(v) = s.child("Value") {
                subcode = v.trimmed().to_owned();
            }
            sub = s.child("Subcode");
        }
        return Some(Fault {
            code: code
                .child("Value")
                .map(|v| v.trimmed().to_owned())
                .unwrap_or_default(),
            subcode,
            reason: f
                .child("Reason")
                .and_then(|r| r.child("Text"))
                .map(|t| t.trimmed().to_owned())
                .unwrap_or_default(),
        });
    }
    Some(Fault {
        code: f
            .child("faultcode")
            .map(|v| v.trimmed().to_owned())
            .unwrap_or_default(),
        subcode: String::new(),
        reason: f
            .child("faultstring")
            .map(|v| v.trimmed().to_owned())
            .unwrap_or_default(),
    })
}

/// `Base64(SHA-1(nonce + created + password))`, the UsernameToken digest.
pub fn password_digest(nonce: &[u8], created: &str, password: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(nonce);
    ctx.update(created.as_bytes());
    ctx.update(password.as_bytes());
    B64.encode(ctx.finish().as_ref())
}

/// Credentials for the WS-Security header.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// An RFC 3339 UTC time with seconds, as ONVIF writes `xs:dateTime`.
pub fn format_time(t: OffsetDateTime) -> String {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

/// Reads an `xs:dateTime`; one without an offset is taken as UTC.
pub fn parse_time(text: &str) -> Option<OffsetDateTime> {
    let text = text.trim();
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .or_else(|| OffsetDateTime::parse(&format!("{text}Z"), &Rfc3339).ok())
}

/// The `wsse:Security` header for `credentials`, with a fresh nonce.
pub fn security_header(credentials: &Credentials, now: OffsetDateTime) -> String {
    let nonce: [u8; 16] = rand::random();
    security_header_with(credentials, &nonce, &format_time(now))
}

pub fn security_header_with(credentials: &Credentials, nonce: &[u8], created: &str) -> String {
    format!(
        "<wsse:Security s:mustUnderstand=\"1\"><wsse:UsernameToken>\
         <wsse:Username>{}</wsse:Username>\
         <wsse:Password Type=\"{PASSWORD_DIGEST}\">{}</wsse:Password>\
         <wsse:Nonce EncodingType=\"{BASE64_BINARY}\">{}</wsse:Nonce>\
         <wsu:Created>{created}</wsu:Created>\
         </wsse:UsernameToken></wsse:Security>",
        escape(credentials.username.as_str()),
        password_digest(nonce, created, &credentials.password),
        B64.encode(nonce),
    )
}

/// A whole SOAP 1.2 envelope. `extra_ns` are more `xmlns:p="uri"`
/// declarations for raw header blocks (reference parameters).
pub fn envelope(headers: &str, body: &str, extra_ns: &[(String, String)]) -> String {
    let mut ns = String::new();
    for (k, v) in extra_ns {
        ns.push_str(&format!(" {k}=\"{}\"", escape(v.as_str())));
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <s:Envelope xmlns:s=\"{NS_SOAP}\" xmlns:wsse=\"{NS_WSSE}\" xmlns:wsu=\"{NS_WSU}\" \
         xmlns:wsa=\"{NS_WSA}\" xmlns:tds=\"{NS_TDS}\" xmlns:tev=\"{NS_TEV}\" \
         xmlns:wsnt=\"{NS_WSNT}\" xmlns:tt=\"{NS_TT}\" xmlns:tns1=\"{NS_TNS1}\" \
         xmlns:ter=\"{NS_TER}\"{ns}>\
         <s:Header>{headers}</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    )
}

/// Prefixes [`envelope`] declares itself; a camera's declaration of the
/// same prefix is not copied.
const OWN_PREFIXES: &[&str] = &[
    "xmlns:s",
    "xmlns:wsse",
    "xmlns:wsu",
    "xmlns:wsa",
    "xmlns:tds",
    "xmlns:tev",
    "xmlns:wsnt",
    "xmlns:tt",
    "xmlns:tns1",
    "xmlns:ter",
];

/// `wsa:Action` and `wsa:To` headers.
pub fn addressing(action: &str, to: &str) -> String {
    format!(
        "<wsa:Action s:mustUnderstand=\"1\">{action}</wsa:Action><wsa:To s:mustUnderstand=\"1\">{}</wsa:To>",
        escape(to)
    )
}

/// Formats a whole number of seconds as an `xs:duration` (`PT300S`).
pub fn duration(secs: u64) -> String {
    format!("PT{secs}S")
}

/// Reads an `xs:duration` of days, hours, minutes and seconds
/// (`PT1M30S`, `P1DT2H`, `PT0.5S`) as seconds. Years and months are refused.
pub fn parse_duration(text: &str) -> Option<f64> {
    let rest = text.trim().strip_prefix('P')?;
    let (date, time) = rest.split_once('T').unwrap_or((rest, ""));
    let mut total = 0.0;
    let mut number = String::new();
    for c in date.chars() {
        match c {
            '0'..='9' | '.' => number.push(c),
            'D' => total += number.parse::<f64>().ok()? * 86_400.0,
            _ => return None,
        }
        if c == 'D' {
            number.clear();
        }
    }
    if !number.is_empty() {
        return None;
    }
    for c in time.chars() {
        let unit = match c {
            '0'..='9' | '.' => {
                number.push(c);
                continue;
            }
            'H' => 3600.0,
            'M' => 60.0,
            'S' => 1.0,
            _ => return None,
        };
        total += number.parse::<f64>().ok()? * unit;
        number.clear();
    }
    (number.is_empty() && !rest.is_empty() && !rest.ends_with('T')).then_some(total)
}

/// Where to send requests for one subscription, as the camera named it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SubscriptionRef {
    pub address: String,
    /// The raw XML of each `ReferenceParameters` child, sent back as a
    /// header block with every request to the subscription.
    pub reference_parameters: Vec<String>,
    /// Namespace declarations in scope for those blocks.
    pub namespaces: Vec<(String, String)>,
}

/// A subscription's lease as the camera stated it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lease {
    pub current_time: Option<OffsetDateTime>,
    pub termination_time: Option<OffsetDateTime>,
}

impl Lease {
    fn read(e: &Element) -> Self {
        Self {
            current_time: e.child("CurrentTime").and_then(|t| parse_time(&t.text)),
            termination_time: e.child("TerminationTime").and_then(|t| parse_time(&t.text)),
        }
    }

    /// How long the subscription lives, measured on the camera's own
    /// clock (so a camera whose clock is off is still renewed in time).
    pub fn remaining(&self) -> Option<std::time::Duration> {
        let left = self.termination_time? - self.current_time?;
        (left.is_positive()).then(|| left.unsigned_abs())
    }
}

/// A request to the subscription at `sub`.
pub fn subscription_request(
    sub: &SubscriptionRef,
    action: &str,
    credentials: &Credentials,
    body: &str,
) -> String {
    let mut headers = security_header(credentials, OffsetDateTime::now_utc());
    headers.push_str(&addressing(action, &sub.address));
    for p in &sub.reference_parameters {
        headers.push_str(p);
    }
    envelope(&headers, body, &sub.namespaces)
}

/// A request to the device or event service at `to`.
pub fn service_request(to: &str, action: &str, credentials: &Credentials, body: &str) -> String {
    let mut headers = security_header(credentials, OffsetDateTime::now_utc());
    headers.push_str(&addressing(action, to));
    envelope(&headers, body, &[])
}

pub fn get_capabilities_body() -> &'static str {
    "<tds:GetCapabilities><tds:Category>Events</tds:Category></tds:GetCapabilities>"
}

pub fn create_pull_point_body(termination_secs: u64) -> String {
    format!(
        "<tev:CreatePullPointSubscription><tev:InitialTerminationTime>{}</tev:InitialTerminationTime></tev:CreatePullPointSubscription>",
        duration(termination_secs)
    )
}

pub fn pull_messages_body(timeout_secs: u64, limit: u32) -> String {
    format!(
        "<tev:PullMessages><tev:Timeout>{}</tev:Timeout><tev:MessageLimit>{limit}</tev:MessageLimit></tev:PullMessages>",
        duration(timeout_secs)
    )
}

pub fn renew_body(termination_secs: u64) -> String {
    format!(
        "<wsnt:Renew><wsnt:TerminationTime>{}</wsnt:TerminationTime></wsnt:Renew>",
        duration(termination_secs)
    )
}

pub fn unsubscribe_body() -> &'static str {
    "<wsnt:Unsubscribe/>"
}

/// The event service address from a `GetCapabilitiesResponse`, if the
/// camera names one.
pub fn read_events_address(envelope: &Element) -> Result<Option<String>, XmlError> {
    let b = body(envelope)?;
    let response = b
        .child("GetCapabilitiesResponse")
        .ok_or_else(|| XmlError::Missing("no GetCapabilitiesResponse".into()))?;
    Ok(response
        .find("Events")
        .and_then(|e| e.child("XAddr"))
        .map(|x| x.trimmed().to_owned())
        .filter(|x| !x.is_empty()))
}

/// The subscription and its lease from a
/// `CreatePullPointSubscriptionResponse`. `text` is the parsed document,
/// for copying reference parameters verbatim.
pub fn read_subscription(
    envelope: &Element,
    text: &str,
) -> Result<(SubscriptionRef, Lease), XmlError> {
    let b = body(envelope)?;
    let response = b
        .child("CreatePullPointSubscriptionResponse")
        .ok_or_else(|| XmlError::Missing("no CreatePullPointSubscriptionResponse".into()))?;
    let reference = response
        .child("SubscriptionReference")
        .ok_or_else(|| XmlError::Missing("no SubscriptionReference".into()))?;
    let address = reference
        .child("Address")
        .map(|a| a.trimmed().to_owned())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| XmlError::Missing("SubscriptionReference without Address".into()))?;
    let mut sub = SubscriptionRef {
        address,
        ..Default::default()
    };
    if let Some(params) = reference.child("ReferenceParameters") {
        for p in &params.children {
            if let Some(raw) = text.get(p.raw.clone()) {
                sub.reference_parameters.push(raw.to_owned());
            }
        }
        // Declarations of the prefixes the blocks may use, from every
        // element on the way down to them.
        let mut scope = Vec::new();
        for e in [envelope, b, response, reference, params] {
            scope.extend(e.ns_decls.iter().cloned());
        }
        for p in &params.children {
            scope.extend(p.ns_decls.iter().cloned());
        }
        for (k, v) in scope {
            if k != "xmlns"
                && !OWN_PREFIXES.contains(&k.as_str())
                && !sub.namespaces.iter().any(|(kk, _)| *kk == k)
            {
                sub.namespaces.push((k, v));
            }
        }
    }
    Ok((sub, Lease::read(response)))
}

/// The lease from a `RenewResponse`.
pub fn read_renew(envelope: &Element) -> Result<Lease, XmlError> {
    let response = body(envelope)?
        .child("RenewResponse")
        .ok_or_else(|| XmlError::Missing("no RenewResponse".into()))?;
    Ok(Lease::read(response))
}

/// One `wsnt:NotificationMessage` as the camera sent it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Notification {
    pub topic: String,
    pub utc_time: Option<String>,
    /// `Initialized`, `Changed` or `Deleted` for property events.
    pub property_operation: Option<String>,
    pub source: Vec<(String, String)>,
    pub data: Vec<(String, String)>,
}

fn simple_items(e: Option<&Element>) -> Vec<(String, String)> {
    e.map(|e| {
        e.children_named("SimpleItem")
            .filter_map(|i| Some((i.attr("Name")?.to_owned(), i.attr("Value")?.to_owned())))
            .collect()
    })
    .unwrap_or_default()
}

/// The messages and lease from a `PullMessagesResponse`.
pub fn read_pull(envelope: &Element) -> Result<(Vec<Notification>, Lease), XmlError> {
    let response = body(envelope)?
        .child("PullMessagesResponse")
        .ok_or_else(|| XmlError::Missing("no PullMessagesResponse".into()))?;
    let mut out = Vec::new();
    for n in response.children_named("NotificationMessage") {
        let topic = n
            .child("Topic")
            .map(|t| t.trimmed().to_owned())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| XmlError::Missing("NotificationMessage without Topic".into()))?;
        // wsnt:Message wraps tt:Message.
        let message = n.child("Message").and_then(|m| m.child("Message"));
        out.push(Notification {
            topic,
            utc_time: message.and_then(|m| m.attr("UtcTime")).map(str::to_owned),
            property_operation: message
                .and_then(|m| m.attr("PropertyOperation"))
                .map(str::to_owned),
            source: simple_items(message.and_then(|m| m.child("Source"))),
            data: simple_items(message.and_then(|m| m.child("Data"))),
        });
    }
    Ok((out, Lease::read(response)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_the_ws_security_example() {
        // The worked example of the ONVIF Application Programmer's Guide
        // (its nonce, creation time and password).
        let nonce = B64.decode("LKqI6G/AikKCQrN0zqZFlg==").unwrap();
        let digest = password_digest(&nonce, "2010-09-16T07:50:45Z", "userpassword");
        assert_eq!(digest, "tuOSpGlFlIXsozq4HFNeeGeFLEI=");
    }

    #[test]
    fn reads_a_camera_style_subscription_with_reference_parameters() {
        let text = r#"<?xml version="1.0" encoding="UTF-8"?>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://www.w3.org/2003/05/soap-envelope"
  xmlns:wsa5="http://www.w3.org/2005/08/addressing" xmlns:dom0="urn:vendor:sub"
  xmlns:wsnt="http://docs.oasis-open.org/wsn/b-2" xmlns:tev="http://www.onvif.org/ver10/events/wsdl">
 <SOAP-ENV:Body><tev:CreatePullPointSubscriptionResponse>
  <tev:SubscriptionReference>
   <wsa5:Address>http://10.0.0.5/onvif/services</wsa5:Address>
   <wsa5:ReferenceParameters><dom0:SubscriptionId>42</dom0:SubscriptionId></wsa5:ReferenceParameters>
  </tev:SubscriptionReference>
  <wsnt:CurrentTime>2026-11-26T10:00:00Z</wsnt:CurrentTime>
  <wsnt:TerminationTime>2026-11-26T10:05:00Z</wsnt:TerminationTime>
 </tev:CreatePullPointSubscriptionResponse></SOAP-ENV:Body></SOAP-ENV:Envelope>"#;
        let env = parse(text).unwrap();
        let (sub, lease) = read_subscription(&env, text).unwrap();
        assert_eq!(sub.address, "http://10.0.0.5/onvif/services");
        assert_eq!(
            sub.reference_parameters,
            ["<dom0:SubscriptionId>42</dom0:SubscriptionId>"]
        );
        assert!(
            sub.namespaces
                .contains(&("xmlns:dom0".to_owned(), "urn:vendor:sub".to_owned()))
        );
        assert_eq!(lease.remaining(), Some(std::time::Duration::from_secs(300)));
        // The request to the subscription carries the parameter and its
        // namespace, and is itself well-formed.
        let creds = Credentials {
            username: "u".into(),
            password: "p".into(),
        };
        let req = subscription_request(&sub, action::RENEW, &creds, &renew_body(60));
        let parsed = parse(&req).unwrap();
        let header = parsed.child("Header").unwrap();
        assert_eq!(header.child("SubscriptionId").unwrap().text, "42");
        assert!(req.contains("xmlns:dom0=\"urn:vendor:sub\""));
    }

    #[test]
    fn malformed_documents_are_errors() {
        for bad in [
            "",
            "<a>",
            "<a></b>",
            "<a/><b/>",
            "<a>&bogus;</a>",
            "<!DOCTYPE x [<!ENTITY e \"x\">]><a>&e;</a>",
            "not xml at all",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        assert_eq!(parse(&deep), Err(XmlError::TooDeep));
        // Well-formed but not what was asked for.
        let env = parse(&envelope("", "<tev:Other/>", &[])).unwrap();
        assert!(read_pull(&env).is_err());
        assert!(body(&parse("<x/>").unwrap()).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("PT300S"), Some(300.0));
        assert_eq!(parse_duration("PT1M30S"), Some(90.0));
        assert_eq!(parse_duration("P1DT1H"), Some(90000.0));
        assert_eq!(parse_duration("PT0.5S"), Some(0.5));
        for bad in ["", "P", "300", "P1Y", "PT", "PTS", "PT5X"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
