fn main() -> std::process::ExitCode {
    regraft::cli::main()
}
