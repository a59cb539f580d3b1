//! "Nearly the same" for names people type by hand: label values, label keys, field names.
//! Pure.

/// How a typed name relates to the expected one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Nearness {
    /// Byte for byte equal.
    Exact,
    /// Equal but for letter case (label values and selectors are compared exactly).
    CaseOnly,
    /// A typo: this many single-character edits (insert, delete, substitute, swap) apart.
    Typo(usize),
}

/// `None` when the two are too different to be the same name mistyped: more than two edits,
/// or a name shorter than four letters, or more than one edit per three letters (so `app` and `api` are not taken for typos).
pub(crate) fn nearness(typed: &str, expected: &str) -> Option<Nearness> {
    if typed == expected {
        return Some(Nearness::Exact);
    }
    if typed.to_lowercase() == expected.to_lowercase() {
        return Some(Nearness::CaseOnly);
    }
    let edits = strsim::damerau_levenshtein(typed, expected);
    let shorter = typed.chars().count().min(expected.chars().count());
    (edits <= 2 && shorter >= 4 && edits * 3 <= shorter).then_some(Nearness::Typo(edits))
}

/// The candidate nearest to `typed` that is not exact, if any is near.
pub(crate) fn suggest<'a>(typed: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .filter_map(|c| match nearness(typed, c)? {
            Nearness::Exact => None,
            Nearness::CaseOnly => Some((0, c)),
            Nearness::Typo(n) => Some((n, c)),
        })
        .min_by_key(|(n, _)| *n)
        .map(|(_, c)| c)
}

impl std::fmt::Display for Nearness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact => f.write_str("equal"),
            Self::CaseOnly => f.write_str("equal but for letter case"),
            Self::Typo(1) => f.write_str("one character apart"),
            Self::Typo(n) => write!(f, "{n} characters apart"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_and_case_are_near_other_words_are_not() {
        assert_eq!(nearness("myidentity", "myidentity"), Some(Nearness::Exact));
        assert_eq!(nearness("MyIdentity", "myidentity"), Some(Nearness::CaseOnly));
        assert_eq!(nearness("myidentiy", "myidentity"), Some(Nearness::Typo(1)));
        assert_eq!(nearness("myidnetity", "myidentity"), Some(Nearness::Typo(1)), "a swap is one edit");
        assert_eq!(nearness("api", "app"), None, "short words one letter apart are different words");
        assert_eq!(nearness("frontend", "backend"), None);
    }

    #[test]
    fn the_nearest_candidate_is_suggested() {
        assert_eq!(suggest("Selecter", ["selector", "Selector", "weight"]), Some("Selector"));
        assert_eq!(suggest("selector", ["selector"]), None, "an exact name needs no suggestion");
        assert_eq!(suggest("zzz", ["selector"]), None);
    }
}
