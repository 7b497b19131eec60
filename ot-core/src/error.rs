//! Typed errors of the operation algebra.
//!
//! Every error has a stable, machine-readable [`code`](OtError::code) so that
//! the server, the conformance runner and other implementations can report the
//! same failure the same way. The sets of codes are fixed and documented here.

/// An operation did not fit the text or the other operation it was combined with.
///
/// | code | meaning |
/// |---|---|
/// | `length_mismatch` | the operation's base length is not the length of the text it was applied to (or inverted against) |
/// | `compose_mismatch` | `compose(a, b)`: `a`'s target length is not `b`'s base length |
/// | `transform_mismatch` | `transform(a, b)`: `a` and `b` do not have the same base length |
/// | `out_of_range` | an edit helper got a position or range outside the document |
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OtError {
    /// The operation expects a document of `expected` characters but got `actual`.
    #[error("the operation expects a document of {expected} characters but it has {actual}")]
    LengthMismatch {
        /// The operation's base length.
        expected: usize,
        /// The length of the text it was given.
        actual: usize,
    },
    /// `compose(a, b)` where `a` does not produce the document `b` expects.
    #[error("cannot compose: the first operation produces {first_target} characters but the second expects {second_base}")]
    ComposeMismatch {
        /// Target length of the first operation.
        first_target: usize,
        /// Base length of the second operation.
        second_base: usize,
    },
    /// `transform(a, b)` where `a` and `b` start from documents of different lengths.
    #[error(
        "cannot transform: the operations start from documents of {a_base} and {b_base} characters"
    )]
    TransformMismatch {
        /// Base length of `a`.
        a_base: usize,
        /// Base length of `b`.
        b_base: usize,
    },
    /// A position or range passed to an edit helper lies outside the document.
    #[error("range {start}..{end} is outside a document of {len} characters")]
    OutOfRange {
        /// Start of the requested range (in characters).
        start: usize,
        /// End of the requested range (in characters).
        end: usize,
        /// Length of the document.
        len: usize,
    },
}

impl OtError {
    /// The stable machine-readable code of this error (see the table above).
    pub fn code(&self) -> &'static str {
        match self {
            OtError::LengthMismatch { .. } => "length_mismatch",
            OtError::ComposeMismatch { .. } => "compose_mismatch",
            OtError::TransformMismatch { .. } => "transform_mismatch",
            OtError::OutOfRange { .. } => "out_of_range",
        }
    }
}

/// A JSON value could not be read as an operation.
///
/// | code | meaning |
/// |---|---|
/// | `invalid_json` | the text is not JSON at all (syntax, lone surrogate escape, nesting too deep) |
/// | `not_an_array` | the top-level value is not an array |
/// | `zero_length` | a component is `0`, which is neither a retain nor a delete |
/// | `not_an_integer` | a numeric component has a fraction or an exponent (`1.5`, `2.0`, `1e3`) |
/// | `too_large` | a component's magnitude exceeds 2^53−1, or the lengths add up past what fits |
/// | `invalid_component` | a component is not a number or a string (array, object, boolean, null) |
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpJsonError {
    /// The input is not valid JSON.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// The top-level value is not an array.
    #[error("an operation must be a JSON array, found {found}")]
    NotAnArray {
        /// The JSON type that was found.
        found: &'static str,
    },
    /// A component is zero.
    #[error("component {index}: 0 is neither a retain nor a delete")]
    ZeroLength {
        /// Index of the component in the array.
        index: usize,
    },
    /// A numeric component is not an integer.
    #[error("component {index}: {value} is not an integer")]
    NotAnInteger {
        /// Index of the component in the array.
        index: usize,
        /// The number as written.
        value: String,
    },
    /// A numeric component is too large.
    #[error("component {index}: {value} is larger than 2^53-1 or makes the operation too long")]
    TooLarge {
        /// Index of the component in the array.
        index: usize,
        /// The number as written.
        value: String,
    },
    /// A component is neither a number nor a string.
    #[error("component {index}: expected a number or a string, found {found}")]
    InvalidComponent {
        /// Index of the component in the array.
        index: usize,
        /// The JSON type that was found.
        found: &'static str,
    },
}

impl OpJsonError {
    /// The stable machine-readable code of this error (see the table above).
    pub fn code(&self) -> &'static str {
        match self {
            OpJsonError::InvalidJson(_) => "invalid_json",
            OpJsonError::NotAnArray { .. } => "not_an_array",
            OpJsonError::ZeroLength { .. } => "zero_length",
            OpJsonError::NotAnInteger { .. } => "not_an_integer",
            OpJsonError::TooLarge { .. } => "too_large",
            OpJsonError::InvalidComponent { .. } => "invalid_component",
        }
    }
}
