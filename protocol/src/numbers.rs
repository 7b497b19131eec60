//! Integers on the wire: JSON numbers that JavaScript reads exactly.

use serde::{Deserialize, Deserializer};

pub use ot_core::MAX_SAFE_INTEGER;

/// Deserialize a `u64` that must be at most 2^53−1 (a larger one would be
/// rounded by a JavaScript peer, so it is refused rather than overflowed).
pub fn safe_u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let n = u64::deserialize(deserializer)?;
    if n > MAX_SAFE_INTEGER {
        return Err(serde::de::Error::custom(format!(
            "{n} is above 2^53-1, the largest integer the protocol allows"
        )));
    }
    Ok(n)
}

/// [`safe_u64`] for an optional field.
pub fn safe_opt_u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    match Option::<u64>::deserialize(deserializer)? {
        Some(n) if n > MAX_SAFE_INTEGER => Err(serde::de::Error::custom(format!(
            "{n} is above 2^53-1, the largest integer the protocol allows"
        ))),
        other => Ok(other),
    }
}
