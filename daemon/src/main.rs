//! The `timd` executable. It is built by the `client` package (so that
//! `cargo install --path client` installs it next to `tim`); all of its code
//! lives in the `tim-daemon` library.

fn main() -> std::process::ExitCode {
    tim_daemon::main()
}
