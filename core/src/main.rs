fn main() {
    std::process::exit(ktstr::cli::main());
}
