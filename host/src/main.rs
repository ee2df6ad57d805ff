//! The `weft` binary; everything lives in the library (see `weft::cli`).

#[global_allocator]
static ALLOCATOR: weft::Allocator = weft::Allocator;

fn main() -> anyhow::Result<()> {
    weft::cli::main()
}
