//! The `detector` binary: everything is in the library; see [`detector::cli`].

#![expect(
    unused_crate_dependencies,
    reason = "the binary only calls the library, which uses the package's dependencies"
)]

fn main() -> std::process::ExitCode {
    detector::cli::main()
}
