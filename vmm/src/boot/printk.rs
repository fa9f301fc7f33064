//! Lines of a Linux guest's console: printk's `[    1.234567] text` form.

/// A printk line split into its timestamp (the digits and dots between the brackets, as
/// `printk_time` formats them in kernel/printk/printk.c) and its text; None for a line
/// that is not printk's.
pub fn split(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix('[')?;
    let end = rest.find(']')?;
    let stamp = rest[..end].trim();
    if stamp.is_empty() || !stamp.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    Some((stamp, rest[end + 1..].trim_start()))
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn printk_lines_split_into_stamp_and_text_and_others_do_not() {
        assert_eq!(
            split("[    0.000000] random: crng init done"),
            Some(("0.000000", "random: crng init done"))
        );
        assert_eq!(split("[   12.5]x"), Some(("12.5", "x")));
        for not in ["faultline-init: running", "[ garbage ] x", "[] x", "[1.0 x"] {
            assert_eq!(split(not), None, "{not}");
        }
    }
}
