//! Empty library target: it lets `detector`'s build script depend on this crate, so cargo rebuilds
//! the daemon when the kernel programs change. The programs themselves are the `detector` binary.
#![no_std]
