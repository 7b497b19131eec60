//! What the load tool's clients type: the edit each client makes next.
//!
//! - **cursor** (the default): edits near each client's own cursor, which
//!   follows remote ops; documents are held under `--max-len` (2,000 by default).
//! - **random**: each edit inserts or deletes at a uniformly random position;
//!   inserts outweigh deletes, so documents grow (deletes win only above
//!   `--max-len`, 200,000 by default, under Rustpad's 256 KiB limit).

use anyhow::Result;
use clap::ValueEnum;
use ot_core::Operation;
use rand::rngs::StdRng;
use rand::Rng;

/// Which edits the clients make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Typing and backspacing at each client's cursor; documents stay short.
    Cursor,
    /// Inserts and deletes at random positions; documents grow.
    Random,
}

impl Workload {
    /// The document length above which deletes win, unless `--max-len` says otherwise.
    pub fn default_max_len(self) -> usize {
        match self {
            Workload::Cursor => 2000,
            Workload::Random => 200_000,
        }
    }
}

/// Probability that a random-workload edit inserts (below the length cap).
const RANDOM_INSERT_P: f64 = 0.7;
/// Longest insert of the random workload, in characters (1 to this many).
const RANDOM_INSERT_MAX: usize = 4;
/// Longest delete of the random workload, in characters (1 to this many).
const RANDOM_DELETE_MAX: usize = 3;

/// The next edit of one client on a text of `len` characters. `cursor` is the
/// client's cursor (the cursor workload moves it; the random one ignores it).
pub fn next_edit(
    workload: Workload,
    rng: &mut StdRng,
    cursor: &mut usize,
    len: usize,
    max_len: usize,
) -> Result<Operation> {
    match workload {
        Workload::Cursor => cursor_edit(rng, cursor, len, max_len),
        Workload::Random => random_edit(rng, len, max_len),
    }
}

/// One random local edit near the client's cursor (the tool's original workload).
fn cursor_edit(
    rng: &mut StdRng,
    cursor: &mut usize,
    len: usize,
    max_len: usize,
) -> Result<Operation> {
    if rng.random_bool(0.05) {
        *cursor = rng.random_range(0..=len);
    }
    *cursor = (*cursor).min(len);
    let insert = len < 8 || (len < max_len && rng.random_bool(0.8));
    let op = if insert {
        let ch = random_char(rng);
        let op = Operation::insert_at(len, *cursor, ch.encode_utf8(&mut [0u8; 4]))?;
        *cursor += 1;
        op
    } else {
        // Backspace (or a small deletion) at the cursor.
        let n = rng.random_range(1..=3usize).min(len);
        let pos = cursor.saturating_sub(n).min(len - n);
        *cursor = pos;
        Operation::delete_range(len, pos, n)?
    };
    Ok(op)
}

/// An insert of 1–4 characters or a delete of 1–3 at a uniformly random position.
fn random_edit(rng: &mut StdRng, len: usize, max_len: usize) -> Result<Operation> {
    let insert = len < RANDOM_DELETE_MAX || (len < max_len && rng.random_bool(RANDOM_INSERT_P));
    let op = if insert {
        let n = rng.random_range(1..=RANDOM_INSERT_MAX);
        let text: String = (0..n).map(|_| random_char(rng)).collect();
        let pos = rng.random_range(0..=len);
        Operation::insert_at(len, pos, &text)?
    } else {
        let n = rng.random_range(1..=RANDOM_DELETE_MAX).min(len);
        let pos = rng.random_range(0..=len - n);
        Operation::delete_range(len, pos, n)?
    };
    Ok(op)
}

/// Mostly lowercase ASCII and spaces; now and then a newline or a non-ASCII scalar.
pub fn random_char(rng: &mut StdRng) -> char {
    const OTHER: [char; 6] = ['é', 'ß', 'ж', '中', '😀', '\n'];
    match rng.random_range(0..100u32) {
        0..=1 => OTHER[rng.random_range(0..OTHER.len())],
        2..=16 => ' ',
        _ => char::from(b'a' + rng.random_range(0..26u8)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Random edits apply to the text they were made for, and documents grow.
    #[test]
    fn random_edits_fit_and_grow() -> Result<()> {
        let mut rng = StdRng::seed_from_u64(7);
        let mut text = String::new();
        let mut cursor = 0;
        for _ in 0..5000 {
            let len = text.chars().count();
            let op = next_edit(Workload::Random, &mut rng, &mut cursor, len, 200_000)?;
            text = op.apply(&text)?;
        }
        // About 0.7 × 2.5 − 0.3 × 2 = 1.15 characters per edit.
        let len = text.chars().count();
        assert!(
            (4000..7500).contains(&len),
            "{len} characters after 5000 edits"
        );
        Ok(())
    }

    /// Above the cap, random edits delete.
    #[test]
    fn random_edits_delete_above_the_cap() -> Result<()> {
        let mut rng = StdRng::seed_from_u64(8);
        let mut cursor = 0;
        for _ in 0..100 {
            let op = next_edit(Workload::Random, &mut rng, &mut cursor, 50, 40)?;
            assert!(op.target_len() < 50, "{op:?}");
        }
        Ok(())
    }
}
