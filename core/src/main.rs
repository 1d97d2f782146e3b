fn main() {
    ktstr::broken_pipe::install();
    std::process::exit(ktstr::cli::main());
}
