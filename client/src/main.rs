fn main() -> std::process::ExitCode {
    tim::main()
}
