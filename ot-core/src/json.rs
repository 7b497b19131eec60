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
                Value::Number(n) => {
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
                }
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

impl<'de> serde::Deserialize<'de> for Operation {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Operation::from_json_value(&value).map_err(D::Error::custom)
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
