//! Built-in guest programs (resources/guests/), compiled by build.rs and embedded.

/// The guest `faultline run` runs when neither --kernel nor --guest is given.
pub const DEFAULT_GUEST: &str = "hello";

/// A built-in guest program: a static no_std ELF.
#[derive(Debug)]
pub struct BuiltinGuest {
    /// Name (`--guest NAME`), the bin's file stem in resources/guests/src/bin/.
    pub name: &'static str,
    /// One-line description (the bin's first `//!` line).
    pub description: &'static str,
    /// The ELF image.
    pub elf: &'static [u8],
}

/// All built-in guests.
pub static GUESTS: &[BuiltinGuest] = &[];

/// Looks a guest up by name.
pub fn find(name: &str) -> Option<&'static BuiltinGuest> {
    GUESTS.iter().find(|g| g.name == name)
}
