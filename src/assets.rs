//! The man page and shell completions, generated from the command line's
//! definition (clap_mangen, clap_complete) so that they never drift from
//! it; written by the hidden `generate-assets` subcommand at packaging.

use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

pub fn write(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("completions"))?;
    let command = Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut page)?;
    std::fs::write(dir.join("powa-fleet.1"), page)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(
            shell,
            &mut command.clone(),
            "powa-fleet",
            dir.join("completions"),
        )?;
    }
    Ok(())
}
