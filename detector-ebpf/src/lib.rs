//! Empty library target: it lets `detector`'s build script depend on this crate, so cargo rebuilds
//! the daemon when the kernel programs change. The programs themselves are the `detector` binary.
#![no_std]
#![expect(
    unused_crate_dependencies,
    reason = "the dependencies are the kernel programs' (the `detector` binary target), not this empty library's"
)]
