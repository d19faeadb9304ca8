use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum TopicsCommand {
    /// List topics.
    List,
}

pub async fn run(_bootstrap: &str, _cmd: TopicsCommand) -> anyhow::Result<()> {
    anyhow::bail!("`weir topics` is not available yet")
}
