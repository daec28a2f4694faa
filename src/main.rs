fn main() -> std::process::ExitCode {
    // Writing to a closed pipe (`regraft inspect m.onnx | head`) ends the process quietly,
    // as other command-line tools do, instead of failing in `println!`.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    regraft::cli::main()
}
