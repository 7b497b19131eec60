//! Reading the most frequent server frames without serde's buffering.
//!
//! [`ServerMessage`] is an internally tagged enum: serde reads one by first
//! buffering the whole message (its `Content`), then reading the variant
//! from that buffer, and a `batch` is buffered whole and then each element
//! again. That was a quarter of a client's time at 1 document × 64 clients
//! (BENCHMARKS.md). The server writes `type` first, so a frame that starts
//! with `{"type":"op",`, `{"type":"ack",` or `{"type":"batch",` is read
//! here straight into the variant's own fields, by the same field rules
//! (unknown fields ignored, integers above 2^53−1 refused, missing fields
//! refused). Any other frame is left to the enum, which reads it the same
//! way (the tests check both readers agree).

use std::borrow::Cow;

use ot_core::Operation;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::numbers::safe_u64;
use crate::server_message::{FrameError, ServerMessage};

#[derive(Deserialize)]
struct OpFields {
    #[serde(deserialize_with = "safe_u64")]
    rev: u64,
    op: Operation,
    client: String,
    #[serde(deserialize_with = "safe_u64")]
    seq: u64,
}

#[derive(Deserialize)]
struct AckFields {
    #[serde(deserialize_with = "safe_u64")]
    rev: u64,
    #[serde(deserialize_with = "safe_u64")]
    seq: u64,
}

#[derive(Deserialize)]
struct BatchFields<'a> {
    #[serde(borrow)]
    messages: Vec<&'a RawValue>,
}

/// The frame read, if it is one of the frames read here; `None` for the
/// enum's reader.
pub(crate) fn parse(text: &str) -> Option<Result<ServerMessage<'static>, FrameError>> {
    let rest = text.strip_prefix(r#"{"type":""#)?;
    let (kind, _) = rest.split_once('"')?;
    // A second `type` key would make the enum refuse the frame: leave such
    // frames (and any other oddity) to it.
    if rest.contains(r#""type""#) && kind != "batch" {
        return None;
    }
    Some(match kind {
        "op" => serde_json::from_str::<OpFields>(text)
            .map(|f| ServerMessage::Op {
                rev: f.rev,
                op: Cow::Owned(f.op),
                client: f.client.into(),
                seq: f.seq,
            })
            .map_err(FrameError::from),
        "ack" => serde_json::from_str::<AckFields>(text)
            .map(|f| ServerMessage::Ack {
                rev: f.rev,
                seq: f.seq,
            })
            .map_err(FrameError::from),
        "batch" => read_batch(text),
        _ => return None,
    })
}

/// A batch whose elements are all `op`s and `ack`s with `type` first, read
/// in one pass (each element straight into its variant's fields).
#[derive(Deserialize)]
struct PlainBatch {
    messages: Vec<PlainElement>,
}

/// An `op` or `ack` element of a [`PlainBatch`].
struct PlainElement(ServerMessage<'static>);

/// The fields after `type` of an `op` element, by [`OpFields`]' rules.
#[derive(Deserialize)]
struct OpRest {
    #[serde(deserialize_with = "safe_u64")]
    rev: u64,
    op: Operation,
    client: String,
    #[serde(deserialize_with = "safe_u64")]
    seq: u64,
    /// A second `type`: the enum refuses such an element, so this pass does not read it.
    #[serde(rename = "type", default)]
    second_type: Option<serde::de::IgnoredAny>,
}

/// The fields after `type` of an `ack` element.
#[derive(Deserialize)]
struct AckRest {
    #[serde(deserialize_with = "safe_u64")]
    rev: u64,
    #[serde(deserialize_with = "safe_u64")]
    seq: u64,
    #[serde(rename = "type", default)]
    second_type: Option<serde::de::IgnoredAny>,
}

impl<'de> Deserialize<'de> for PlainElement {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(PlainElementVisitor)
    }
}

struct PlainElementVisitor;

impl<'de> serde::de::Visitor<'de> for PlainElementVisitor {
    type Value = PlainElement;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an op or ack message with `type` first")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<PlainElement, A::Error> {
        use serde::de::Error as _;
        let not_plain = || A::Error::custom("not a plain element");
        if map.next_key::<Cow<'de, str>>()?.as_deref() != Some("type") {
            return Err(not_plain());
        }
        let kind: Cow<'de, str> = map.next_value()?;
        let rest = serde::de::value::MapAccessDeserializer::new(map);
        match &*kind {
            "op" => {
                let f = OpRest::deserialize(rest)?;
                if f.second_type.is_some() {
                    return Err(not_plain());
                }
                Ok(PlainElement(ServerMessage::Op {
                    rev: f.rev,
                    op: Cow::Owned(f.op),
                    client: f.client.into(),
                    seq: f.seq,
                }))
            }
            "ack" => {
                let f = AckRest::deserialize(rest)?;
                if f.second_type.is_some() {
                    return Err(not_plain());
                }
                Ok(PlainElement(ServerMessage::Ack {
                    rev: f.rev,
                    seq: f.seq,
                }))
            }
            _ => Err(not_plain()),
        }
    }
}

/// A batch of only `op` and `ack` elements (what a busy document sends),
/// read in one pass; `None` for any other batch (or a malformed one), which
/// [`read_batch`] reads element by element.
fn read_plain_batch(text: &str) -> Option<ServerMessage<'static>> {
    let batch: PlainBatch = serde_json::from_str(text).ok()?;
    Some(ServerMessage::Batch {
        messages: batch.messages.into_iter().map(|e| e.0).collect(),
    })
}

/// A batch: each element read as a frame of its own.
fn read_batch(text: &str) -> Result<ServerMessage<'static>, FrameError> {
    if let Some(batch) = read_plain_batch(text) {
        return Ok(batch);
    }
    let fields: BatchFields<'_> = serde_json::from_str(text)?;
    let messages = fields
        .messages
        .iter()
        .map(|raw| ServerMessage::parse(raw.get()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ServerMessage::Batch { messages })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the enum's own reader makes of `text`.
    fn by_the_enum(text: &str) -> Result<ServerMessage<'static>, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    fn by_parse(text: &str) -> Result<ServerMessage<'static>, String> {
        ServerMessage::parse(text).map_err(|e| e.to_string())
    }

    #[test]
    fn both_readers_agree_on_every_frame() {
        let mut frames: Vec<String> = crate::fixture::server_examples()
            .iter()
            .map(ServerMessage::to_text)
            .collect();
        frames.extend(
            [
                r#"{"type":"op","rev":3,"op":[1,"a",-2],"client":"c","seq":2}"#,
                r#"{"type":"op","rev":3,"op":[1,"a",-2],"client":"c","seq":2,"later":{"x":[1]}}"#,
                r#"{"type":"op","rev":3,"op":["\"type\""],"client":"type","seq":2}"#,
                r#"{"type":"op","rev":9007199254740992,"op":[],"client":"c","seq":1}"#,
                r#"{"type":"op","rev":3,"op":[1.5],"client":"c","seq":1}"#,
                r#"{"type":"op","rev":3,"client":"c","seq":1}"#,
                r#"{"type":"op","rev":3,"op":[0],"client":"c","seq":1}"#,
                r#"{"type":"op","rev":-3,"op":[],"client":"c","seq":1}"#,
                r#"{"type":"op","type":"ack","rev":3,"seq":1}"#,
                r#"{"type":"ack","rev":4,"seq":2}"#,
                r#"{"type":"ack","rev":4}"#,
                r#"{"type":"ack","rev":4,"seq":18446744073709551616}"#,
                r#"{"type":"ack","rev":4,"seq":2,"type":"ack"}"#,
                r#"{"type":"batch","messages":[]}"#,
                r#"{"type":"batch","messages":[{"type":"ack","rev":4,"seq":2},{"type":"later"}]}"#,
                r#"{"type":"batch","messages":[{"type":"ack","rev":-4,"seq":2}]}"#,
                r#"{"type":"batch","messages":{}}"#,
                r#"{"type":"batch","messages":[{"type":"op","rev":3,"op":[1,"a"],"client":"c","seq":2},{"type":"ack","rev":4,"seq":2}]}"#,
                r#"{"type":"batch","messages":[{"type":"op","rev":3,"op":[1,"a"],"client":"type","seq":2,"x":{"type":1}}]}"#,
                r#"{"type":"batch","messages":[{"type":"op","rev":3,"op":[1,"a"],"client":"c","seq":2,"type":"ack"}]}"#,
                r#"{"type":"batch","messages":[{"type":"ack","rev":4,"seq":2,"seq":3}]}"#,
                r#"{"type":"batch","messages":[{"type":"ack","rev":4}]}"#,
                r#"{"type":"batch","messages":[{"type":"op","rev":3,"op":[0],"client":"c","seq":2}]}"#,
                r#"{"type":"batch","messages":[{"type":"op","rev":9007199254740992,"op":[],"client":"c","seq":1}]}"#,
                r#"{"type":"batch","messages":[{"rev":4,"seq":2,"type":"ack"}]}"#,
                r#"{"type":"batch","messages":[{"type":"ack","rev":4,"seq":2},{"type":"cursor","client":"c","rev":1,"ranges":[]},{"type":"leave","client":"c"}]}"#,
                r#"{"type":"batch","messages":[{"type":"batch","messages":[{"type":"ack","rev":4,"seq":2}]}]}"#,
                r#"{"type":"batch","messages":[{"type":"ack","rev":4,"seq":2}],"messages":[]}"#,
                r#"{"type":"batch"}"#,
                r#"{"type":"opx","rev":1}"#,
                r#"{"rev":4,"seq":2,"type":"ack"}"#,
                r#"{"type":"op""#,
            ]
            .map(str::to_owned),
        );
        for text in &frames {
            let (fast, enum_read) = (by_parse(text), by_the_enum(text));
            assert_eq!(
                fast.is_ok(),
                enum_read.is_ok(),
                "{text}: {fast:?} / {enum_read:?}"
            );
            if let (Ok(fast), Ok(enum_read)) = (fast, enum_read) {
                assert_eq!(fast, enum_read, "{text}");
            }
        }
    }

    #[test]
    fn a_batch_of_ops_and_acks_is_read_in_one_pass_and_any_other_batch_is_not() {
        let plain = r#"{"type":"batch","messages":[{"type":"op","rev":3,"op":[1,"a"],"client":"c","seq":2},{"type":"ack","rev":4,"seq":2}]}"#;
        assert_eq!(
            read_plain_batch(plain).as_ref(),
            Some(&by_the_enum(plain).unwrap())
        );
        for other in [
            r#"{"type":"batch","messages":[{"type":"ack","rev":4,"seq":2},{"type":"leave","client":"c"}]}"#,
            r#"{"type":"batch","messages":[{"rev":4,"seq":2,"type":"ack"}]}"#,
            r#"{"type":"batch","messages":[{"type":"ack","rev":4,"seq":2,"type":"ack"}]}"#,
        ] {
            assert!(read_plain_batch(other).is_none(), "{other}");
        }
    }

    #[test]
    fn the_frequent_frames_take_the_fast_reader() {
        for text in [
            r#"{"type":"op","rev":3,"op":["a"],"client":"c","seq":2}"#,
            r#"{"type":"ack","rev":4,"seq":2}"#,
            r#"{"type":"batch","messages":[{"type":"ack","rev":4,"seq":2}]}"#,
        ] {
            assert!(parse(text).is_some_and(|r| r.is_ok()), "{text}");
        }
        for text in [
            r#"{"rev":4,"seq":2,"type":"ack"}"#,
            r#"{"type":"cursor","client":"c","rev":1,"ranges":[]}"#,
        ] {
            assert!(parse(text).is_none(), "{text}");
        }
    }
}
