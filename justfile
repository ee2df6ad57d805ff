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

# Check Cargo.lock against the RustSec advisory database (offline copy; pass
# its path if it is not at ../shared/advisory-db).
audit db="../shared/advisory-db":
    python3 .ci/audit.py {{db}} Cargo.lock

# Check a config file.
validate config:
    cargo run --release -- validate --config {{config}}
