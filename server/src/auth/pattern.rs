//! Document patterns in tokens: `*` matches any run of id characters
//! (including none); every other character matches itself.

/// Longest pattern a token may carry (longer ones match nothing).
pub(crate) const MAX_PATTERN_LEN: usize = 256;

/// Whether `pattern` covers document id `doc`.
///
/// Linear-time wildcard matching (the classic two-pointer scan that
/// backtracks only to the last `*`), so a hostile pattern costs at most
/// `pattern.len() × doc.len()` steps; both are short.
pub(crate) fn matches(pattern: &str, doc: &str) -> bool {
    if pattern.len() > MAX_PATTERN_LEN {
        return false;
    }
    let (p, d) = (pattern.as_bytes(), doc.as_bytes());
    let (mut pi, mut di) = (0, 0);
    // The last `*` seen, and where in `doc` its match currently ends.
    let mut star: Option<(usize, usize)> = None;
    while di < d.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, di));
            pi += 1;
        } else if pi < p.len() && p[pi] == d[di] {
            pi += 1;
            di += 1;
        } else if let Some((star_pi, star_di)) = star {
            // Let the `*` take one more character and retry.
            pi = star_pi + 1;
            di = star_di + 1;
            star = Some((star_pi, star_di + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::matches;
    use proptest::prelude::*;

    #[test]
    fn stars_match_runs_and_nothing_else_is_special() {
        assert!(matches("*", "notes"));
        assert!(matches("notes", "notes"));
        assert!(!matches("notes", "notes2"));
        assert!(matches("team-*", "team-a"));
        assert!(matches("team-*", "team-"));
        assert!(!matches("team-*", "tea"));
        assert!(matches("*-draft", "x-draft"));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(!matches("a*b*c", "aXXbYY"));
        assert!(matches("**", ""));
        // `.` and `?` are plain characters.
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "axb"));
        assert!(!matches("a?", "ab"));
        assert!(
            !matches(&"*".repeat(300), "a"),
            "overlong patterns match nothing"
        );
    }

    /// The reference: a regex-free recursive matcher.
    fn reference(p: &[u8], d: &[u8]) -> bool {
        match p.split_first() {
            None => d.is_empty(),
            Some((b'*', rest)) => (0..=d.len()).any(|i| reference(rest, &d[i..])),
            Some((c, rest)) => d.first() == Some(c) && reference(rest, &d[1..]),
        }
    }

    proptest! {
        #[test]
        fn agrees_with_the_reference(p in "[ab*]{0,8}", d in "[ab]{0,10}") {
            prop_assert_eq!(matches(&p, &d), reference(p.as_bytes(), d.as_bytes()));
        }
    }
}
