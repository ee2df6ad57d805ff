//! The `weft` binary; everything lives in the library (see `weft::cli`).

fn main() -> anyhow::Result<()> {
    weft::cli::main()
}
