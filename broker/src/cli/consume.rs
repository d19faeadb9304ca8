use clap::Args;

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    /// Topic to consume from.
    pub topic: String,
}

pub async fn run(_bootstrap: &str, _args: ConsumeArgs) -> anyhow::Result<()> {
    anyhow::bail!("`weir consume` is not available yet")
}
