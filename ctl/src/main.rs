//! The `sockctl` binary: parses the command line, runs the command on a
//! single-threaded tokio runtime and exits with its status.

use clap::Parser;
use sockctl::cli::{Cli, run};
use sockd_proto::code::exit;

/// Every frame arrives in a fresh buffer of up to 256 KiB. With glibc's
/// default, adaptive thresholds each free at the top of the heap returns the
/// memory to the kernel and the next frame faults it in again: for bulk
/// transfers a third of sockctl's CPU time. Keeping a few MiB is ~20% faster.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator, before any thread exists.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 1 << 20);
        nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, 8 << 20);
    }
}

fn main() {
    keep_freed_memory();
    // Usage errors exit 2 (clap's own status), --help and --version exit 0.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sockctl: cannot start the async runtime: {e}");
            std::process::exit(exit::FAILURE.into());
        }
    };
    let status = runtime.block_on(run(cli));
    // Exit without dropping the runtime: a blocking read of stdin may still be
    // pending, and the runtime would wait for it.
    std::process::exit(status.into());
}
