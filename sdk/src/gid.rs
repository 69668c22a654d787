//! Global transaction ids.

/// A new random gid: 22 base57 characters, the shape DTM's `newGid` returns. Use it when the process should
/// not ask the transaction manager ([`crate::DtmClient::new_gid`] does).
pub fn new_gid() -> String {
    const ALPHABET: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut n = uuid::Uuid::new_v4().as_u128();
    let mut out = String::with_capacity(22);
    for _ in 0..22 {
        out.push(char::from(ALPHABET[(n % 57) as usize]));
        n /= 57;
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn gids_are_22_chars_and_distinct() {
        let a = super::new_gid();
        let b = super::new_gid();
        assert_eq!(a.len(), 22);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
