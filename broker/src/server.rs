//! The broker server (being written).
use crate::config::ServeArgs;

pub async fn serve(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
