//! `sockctl completions SHELL`: prints the completion script for bash, zsh
//! or fish, generated from the same clap definition that parses the command
//! line, so it cannot drift from it. The Debian package ships the output.

use crate::cli::Cli;
use crate::client::ClientError;
use crate::output;
use clap::{Args, CommandFactory, ValueEnum};
use clap_complete::Shell;
use sockd_proto::code::exit;

#[derive(Debug, Args)]
#[command(after_help = "Install, for example:\n  \
    sockctl completions bash > ~/.local/share/bash-completion/completions/sockctl\n  \
    sockctl completions zsh > ~/.zfunc/_sockctl   (with fpath+=~/.zfunc before compinit)\n  \
    sockctl completions fish > ~/.config/fish/completions/sockctl.fish")]
pub struct CompletionsArgs {
    /// The shell to print the script for
    pub shell: CompletionShell,
}

/// The shells the Debian package installs completions for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

/// Needs neither a config file nor the daemon.
pub fn run(args: CompletionsArgs) -> Result<u8, ClientError> {
    let shell = match args.shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "sockctl", &mut script);
    output::print(&String::from_utf8_lossy(&script))?;
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn script(shell: Shell) -> String {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "sockctl", &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn scripts_cover_the_real_subcommands_and_global_options() {
        let subcommands: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        assert!(subcommands.iter().any(|c| c == "completions"));
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let text = script(shell);
            for name in &subcommands {
                assert!(text.contains(name.as_str()), "{shell}: no {name}");
            }
            assert!(text.contains("socket"), "{shell}: no --socket");
        }
    }

    #[test]
    fn only_the_packaged_shells_are_accepted() {
        assert!(Cli::try_parse_from(["sockctl", "completions", "zsh"]).is_ok());
        let e = Cli::try_parse_from(["sockctl", "completions", "powershell"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }
}
