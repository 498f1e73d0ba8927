//! The engine's ids: an account and a cluster of linked accounts, each a
//! 64-bit value shown as 16 hex digits.

use std::fmt;

/// An account: the keyed hash of its API key (or of an anonymous client's
/// address prefix), computed by the identify step. Shown as 16 hex digits.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(pub u64);

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountId({self})")
    }
}

/// A cluster of linked accounts (the id of its root). Shown as 16 hex
/// digits, the form the admin API, the audit log and the traffic record use.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterId(pub u64);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_show_as_sixteen_hex_digits() {
        assert_eq!(AccountId(0xab).to_string(), "00000000000000ab");
        assert_eq!(ClusterId(u64::MAX).to_string(), "ffffffffffffffff");
        assert_eq!(format!("{:?}", ClusterId(1)), "ClusterId(0000000000000001)");
    }
}
