//! Guest memory backings and the userfaultfd demand-paging service.

pub mod backing;
pub mod uffd;

pub use backing::{create_guest_memory, GuestRamError};
