//! Reading the pre-1.6 capitalised field names next to the current lower camel ones.
//!
//! The original (since 1.6) reads only lower camel case; its schema prunes `ResourceID` and
//! friends, so YAML copied from old tutorials silently loses those fields there. We keep both
//! in the schema and merge here: the lower camel value wins when both are present.

/// Picks the current-casing value, falling back to the legacy one.
pub(crate) fn prefer<T>(current: Option<T>, legacy: Option<T>) -> Option<T> {
    current.or(legacy)
}

#[cfg(test)]
mod tests {
    use super::prefer;

    #[test]
    fn lower_camel_wins_when_both_are_present() {
        assert_eq!(prefer(Some("new"), Some("old")), Some("new"));
        assert_eq!(prefer(None, Some("old")), Some("old"));
        assert_eq!(prefer::<&str>(None, None), None);
    }
}
