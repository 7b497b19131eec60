//! The ot.js JSON form of an operation: an array in which a positive integer
//! retains, a string inserts and a negative integer deletes, e.g. `[5,"hi",-2,3]`.
//!
//! Parsing accepts any valid array, including non-canonical ones
//! (`[1,2,"a","",-1]`), and returns the canonical operation (`[3,"a",-1]`);
//! empty strings are valid and dropped. Everything else is rejected with an
//! [`OpJsonError`] that names the component index and what is wrong.

use serde::de::Error as _;
use serde::ser::SerializeSeq;
use serde_json::Value;

use crate::error::OpJsonError;
use crate::operation::{Component, Operation};

/// The largest integer JSON numbers can carry exactly in JavaScript (2^53−1).
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

impl Operation {
    /// Parse the ot.js JSON text form.
    pub fn from_json(text: &str) -> Result<Operation, OpJsonError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| OpJsonError::InvalidJson(e.to_string()))?;
        Self::from_json_value(&value)
    }

    /// Read an operation from an already parsed JSON value.
    pub fn from_json_value(value: &Value) -> Result<Operation, OpJsonError> {
        let items = match value {
            Value::Array(items) => items,
            other => {
                return Err(OpJsonError::NotAnArray {
                    found: json_type(other),
                })
            }
        };
        let mut op = Operation::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            match item {
                Value::String(s) => {
                    op.insert(s);
                }
                Value::Number(n) => push_number(&mut op, index, n)?,
                other => {
                    return Err(OpJsonError::InvalidComponent {
                        index,
                        found: json_type(other),
                    })
                }
            }
        }
        Ok(op)
    }

    /// The ot.js JSON form as a value.
    pub fn to_json_value(&self) -> Value {
        Value::Array(
            self.components()
                .iter()
                .map(|c| match c {
                    Component::Retain(n) => Value::from(*n as u64),
                    Component::Insert(s) => Value::from(s.as_str()),
                    Component::Delete(n) => Value::from(-(*n as i64)),
                })
                .collect(),
        )
    }

    /// The ot.js JSON form as compact text (`[5,"hi",-2,3]`).
    pub fn to_json(&self) -> String {
        // Serialising our own components cannot fail; fall back defensively anyway.
        serde_json::to_string(self).unwrap_or_else(|_| "[]".to_owned())
    }
}

/// Append the component the JSON number `n` (component `index`) stands for:
/// a positive integer retains, a negative one deletes.
fn push_number(
    op: &mut Operation,
    index: usize,
    n: &serde_json::Number,
) -> Result<(), OpJsonError> {
    let too_large = || OpJsonError::TooLarge {
        index,
        value: n.to_string(),
    };
    if let Some(u) = n.as_u64() {
        if u == 0 {
            return Err(OpJsonError::ZeroLength { index });
        }
        if u > MAX_SAFE_INTEGER {
            return Err(too_large());
        }
        let len = usize::try_from(u).map_err(|_| too_large())?;
        // Keep the running lengths far from overflow.
        if op.base_len().saturating_add(len) > MAX_SAFE_INTEGER as usize {
            return Err(too_large());
        }
        op.retain(len);
    } else if let Some(i) = n.as_i64() {
        // as_u64 failed, so this is negative.
        let magnitude = i.unsigned_abs();
        if magnitude > MAX_SAFE_INTEGER {
            return Err(too_large());
        }
        let len = usize::try_from(magnitude).map_err(|_| too_large())?;
        if op.base_len().saturating_add(len) > MAX_SAFE_INTEGER as usize {
            return Err(too_large());
        }
        op.delete(len);
    } else {
        let f = n.as_f64().unwrap_or(f64::NAN);
        if f == 0.0 {
            return Err(OpJsonError::ZeroLength { index });
        }
        if f.is_finite() && f.fract() == 0.0 && f.abs() > MAX_SAFE_INTEGER as f64 {
            return Err(too_large());
        }
        return Err(OpJsonError::NotAnInteger {
            index,
            value: n.to_string(),
        });
    }
    Ok(())
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl serde::Serialize for Operation {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.components().len()))?;
        for component in self.components() {
            match component {
                Component::Retain(n) => seq.serialize_element(&(*n as u64))?,
                Component::Insert(s) => seq.serialize_element(s.as_str())?,
                Component::Delete(n) => seq.serialize_element(&-(*n as i64))?,
            }
        }
        seq.end()
    }
}

/// Read straight from the deserializer, component by component, by the
/// same rules and with the same errors as [`Operation::from_json_value`]
/// (each JSON item is seen as the value a `Value` would hold), without
/// building a JSON tree first: every op a server receives and every op a
/// client is sent is read here.
impl<'de> serde::Deserialize<'de> for Operation {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(OperationVisitor)
    }
}

struct OperationVisitor;

impl OperationVisitor {
    fn not_an_array<E: serde::de::Error>(found: &'static str) -> Result<Operation, E> {
        Err(E::custom(OpJsonError::NotAnArray { found }))
    }
}

impl<'de> serde::de::Visitor<'de> for OperationVisitor {
    type Value = Operation;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an operation in ot.js JSON form (an array)")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Operation, A::Error> {
        // The hint is the sender's claim: trust it only so far.
        let mut op = Operation::with_capacity(seq.size_hint().unwrap_or(0).min(16));
        let mut index = 0;
        while let Some(item) = seq.next_element::<JsonItem<'de>>()? {
            match item {
                JsonItem::Str(s) => {
                    op.insert(&s);
                }
                JsonItem::Number(n) => push_number(&mut op, index, &n).map_err(A::Error::custom)?,
                JsonItem::Other(found) => {
                    return Err(A::Error::custom(OpJsonError::InvalidComponent {
                        index,
                        found,
                    }))
                }
            }
            index += 1;
        }
        Ok(op)
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Operation, E> {
        Self::not_an_array("a boolean")
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Operation, E> {
        Self::not_an_array("a number")
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Operation, E> {
        Self::not_an_array("a number")
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Operation, E> {
        // A `Value` holds a non-finite float as null.
        Self::not_an_array(if v.is_finite() { "a number" } else { "null" })
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Operation, E> {
        Self::not_an_array("a string")
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Operation, E> {
        Self::not_an_array("null")
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Operation, E> {
        Self::not_an_array("null")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<Operation, A::Error> {
        Self::not_an_array("an object")
    }
}

/// One item of an operation's array, as the `Value` it would be.
enum JsonItem<'de> {
    Str(std::borrow::Cow<'de, str>),
    Number(serde_json::Number),
    /// Anything else, named as [`json_type`] names it.
    Other(&'static str),
}

impl<'de> serde::Deserialize<'de> for JsonItem<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonItemVisitor)
    }
}

struct JsonItemVisitor;

impl<'de> serde::de::Visitor<'de> for JsonItemVisitor {
    type Value = JsonItem<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a component of an operation")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<JsonItem<'de>, E> {
        Ok(JsonItem::Str(std::borrow::Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<JsonItem<'de>, E> {
        Ok(JsonItem::Str(std::borrow::Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<JsonItem<'de>, E> {
        Ok(JsonItem::Str(std::borrow::Cow::Owned(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<JsonItem<'de>, E> {
        Ok(JsonItem::Number(v.into()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<JsonItem<'de>, E> {
        Ok(JsonItem::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<JsonItem<'de>, E> {
        Ok(serde_json::Number::from_f64(v).map_or(JsonItem::Other("null"), JsonItem::Number))
    }
    fn visit_bool<E>(self, _: bool) -> Result<JsonItem<'de>, E> {
        Ok(JsonItem::Other("a boolean"))
    }
    fn visit_unit<E>(self) -> Result<JsonItem<'de>, E> {
        Ok(JsonItem::Other("null"))
    }
    fn visit_none<E>(self) -> Result<JsonItem<'de>, E> {
        Ok(JsonItem::Other("null"))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> Result<JsonItem<'de>, A::Error> {
        // Read to its end (the caller refuses it; the reader must stay in step).
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(JsonItem::Other("an array"))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> Result<JsonItem<'de>, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(JsonItem::Other("an object"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_normalise() {
        let op = Operation::from_json(r#"[1,2,-1,"a","",-1,"b",3]"#).unwrap();
        assert_eq!(op.to_json(), r#"[3,"ab",-2,3]"#);
        assert_eq!(Operation::from_json("[]").unwrap(), Operation::new());
    }

    #[test]
    fn rejections_have_codes() {
        let code = |s: &str| Operation::from_json(s).unwrap_err().code();
        assert_eq!(code("[0]"), "zero_length");
        assert_eq!(code("[-0]"), "zero_length");
        assert_eq!(code("[1.5]"), "not_an_integer");
        assert_eq!(code("[2.0]"), "not_an_integer");
        assert_eq!(code("[9007199254740992]"), "too_large");
        assert_eq!(code("[-9007199254740992]"), "too_large");
        assert_eq!(code("[1e300]"), "too_large");
        assert_eq!(code("[[1]]"), "invalid_component");
        assert_eq!(code("[{}]"), "invalid_component");
        assert_eq!(code("[true]"), "invalid_component");
        assert_eq!(code("[null]"), "invalid_component");
        assert_eq!(code("{}"), "not_an_array");
        assert_eq!(code("\"x\""), "not_an_array");
        assert_eq!(code("[1,"), "invalid_json");
        assert_eq!(code(r#"["\ud800"]"#), "invalid_json");
        assert_eq!(
            code(&format!("{}1{}", "[".repeat(200), "]".repeat(200))),
            "invalid_json"
        );
        assert_eq!(code("[9007199254740991,9007199254740991]"), "too_large");
    }
}
