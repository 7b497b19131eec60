//! The full-screen terminal editor (`ot-client edit`).

use crate::commands::Common;

/// Run the editor on `doc` until the user quits.
pub async fn run(_common: &Common, doc: &str) -> anyhow::Result<()> {
    anyhow::bail!("the editor for {doc} is not built yet")
}
