fn main() -> std::process::ExitCode {
    keel::cli::tls::install_crypto_provider();
    keel::cli::main()
}
