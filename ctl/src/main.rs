//! The `sockctl` binary: parses the command line, runs the command on a
//! single-threaded tokio runtime and exits with its status.

use clap::Parser;
use sockctl::cli::{Cli, run};
use sockd_proto::code::exit;

fn main() {
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
