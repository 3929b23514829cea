//! Wall-clock time stamps.

/// The current time in UTC as "YYYY-MM-DD HH:MM:SS".
pub fn utc_now() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_stamp_has_the_documented_shape() {
        let s = super::utc_now();
        let digits: String = s.chars().filter(char::is_ascii_digit).collect();
        assert_eq!((s.len(), digits.len()), (19, 14), "{s}");
        assert_eq!((&s[4..5], &s[10..11], &s[13..14]), ("-", " ", ":"), "{s}");
    }
}
