use clap::Args;

#[derive(Args, Debug)]
pub struct ProduceArgs {
    /// Topic to produce to.
    pub topic: String,
}

pub async fn run(_bootstrap: &str, _args: ProduceArgs) -> anyhow::Result<()> {
    anyhow::bail!("`weir produce` is not available yet")
}
