#!/bin/sh
# packaging/build-deb.sh — builds the Debian package of sockd and prints its
# path (the last line of output).
#
# Release-builds the workspace (the README's command: building only the
# packaged crates would resolve features differently and rebuild them
# twice), writes the shell completions with `sockctl completions` (so they
# always match the CLI), then packages with cargo-deb (metadata in
# daemon/Cargo.toml). Binaries are stripped: the release profile's line
# tables make them 6.7 times larger (111 MB instead of 17 MB installed).
# Extra arguments go to `cargo deb`, e.g. --fast or --deb-revision 2.
#
# SOCKD_DEB_PROFILE=dev packages the debug build instead. The tests use it
# to check the package (same paths, modes and scripts) without a second,
# release build of the whole workspace; such a package is not for shipping.
set -eu
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    echo "build-deb.sh: cargo-deb is not installed: run \`cargo install cargo-deb --locked\`" >&2
    exit 1
fi

profile=${SOCKD_DEB_PROFILE:-release}
case $profile in
release) dir=release ;;
dev) dir=debug ;;
*)
    echo "build-deb.sh: SOCKD_DEB_PROFILE must be release or dev, not $profile" >&2
    exit 2
    ;;
esac
cargo build --profile "$profile" --locked --workspace

# The real target directory (CARGO_TARGET_DIR, a config file, or target/).
target=$(cargo metadata --format-version 1 --no-deps --locked |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
completions="$target/$dir/completions"
mkdir -p "$completions"
"$target/$dir/sockctl" completions bash >"$completions/sockctl.bash"
"$target/$dir/sockctl" completions zsh >"$completions/_sockctl"
"$target/$dir/sockctl" completions fish >"$completions/sockctl.fish"

# cargo-deb maps the assets' target/release/ paths to the profile's directory.
deb=$(cargo deb --locked -p sockd --no-build --strip --profile "$profile" --output "$target/debian" "$@")
printf '%s\n' "$deb" | tail -n 1
