//! Small helpers shared by modules that must not depend on each other.

/// Cuts user input that is echoed in an error message to 200 bytes (on a
/// character boundary), marking the cut with `…`.
pub(crate) fn clip(s: &str) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    #[test]
    fn clip_cuts_on_a_char_boundary() {
        assert_eq!(super::clip("abc"), "abc");
        let long = "é".repeat(150);
        let c = super::clip(&long);
        assert!(c.ends_with('…') && c.len() <= 200 + '…'.len_utf8());
    }
}
