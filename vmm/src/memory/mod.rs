//! Guest memory backings and the userfaultfd demand-paging service.

pub mod uffd;
