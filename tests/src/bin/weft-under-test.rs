//! The `weft` command line, built inside the test crate so tests can run it
//! as a real process.

fn main() -> anyhow::Result<()> {
    weft::cli::main()
}
