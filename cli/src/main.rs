fn main() {
    eprintln!("coreflow: no subcommands yet");
    std::process::exit(2);
}
