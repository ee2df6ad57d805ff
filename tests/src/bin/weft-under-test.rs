//! The `weft` command line, built inside the test crate so tests can run it
//! as a real process.

#[global_allocator]
static ALLOCATOR: weft::Allocator = weft::Allocator;

fn main() -> anyhow::Result<()> {
    weft::cli::main()
}
