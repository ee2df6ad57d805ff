//! The `weft` binary; everything lives in the library (see `weft::cli`).

#[global_allocator]
static ALLOCATOR: weft::Allocator = weft::Allocator;

fn main() -> anyhow::Result<()> {
    // Error values capture no stack trace unless asked for explicitly with
    // RUST_LIB_BACKTRACE=1. With RUST_BACKTRACE=1 alone, every error a
    // plugin's host call returns would capture one (tens of µs each), and its
    // debug text, which plugins can read, would carry it. Panics still print
    // theirs (RUST_BACKTRACE).
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // No other thread exists yet.
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    weft::cli::main()
}
