# Weft tasks. The two commands that matter are in the README; these are shortcuts.

# Run the zero-setup demo (shop example).
demo:
    cargo run --release -- demo

# Run every test (what CI runs).
test:
    cargo test --workspace

# Webhook relay benchmark (numbers go to docs/BENCHMARKS.md).
bench:
    cargo bench -p weft-tests --bench relay

# Lints.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Check a config file.
validate config:
    cargo run --release -- validate --config {{config}}
