//! `server token …`: mint a token with the server's secret, or revoke one on
//! a running server, so that a secured set-up needs no other program.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use ot_protocol::{Access, DocId};

use crate::auth::{mint_hs256, now, read_secret, Claims};

/// `server token`: print a signed token (HS256, with the secret the server
/// runs with), or with `revoke`, revoke one.
#[derive(Debug, Clone, clap::Args)]
#[command(subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
pub struct TokenArgs {
    /// The secret file the server runs with (`--auth-secret-file`).
    #[arg(long, env = "OT_AUTH_SECRET_FILE", required = true)]
    pub secret_file: Option<PathBuf>,
    /// A document pattern the token covers (`*` matches any run of id
    /// characters); repeat for several.
    #[arg(long = "doc", value_name = "PATTERN", required = true)]
    pub docs: Vec<String>,
    /// What the token allows: read, write or admin.
    #[arg(long, default_value = "write")]
    pub access: Access,
    /// The display name shown on the user's cursor (default: the subject).
    #[arg(long)]
    pub name: Option<String>,
    /// The user (`sub`); default: the name.
    #[arg(long)]
    pub sub: Option<String>,
    /// How long the token is valid, e.g. `8h`, `30m`, `7d`.
    #[arg(long, default_value = "8h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Print an editor link carrying the token instead (e.g. `http://127.0.0.1:8080`).
    #[arg(long)]
    pub url: Option<String>,
    /// Revoke a token.
    #[command(subcommand)]
    pub command: Option<TokenCommand>,
}

/// What `server token` does besides minting.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokenCommand {
    /// Revoke a token on a running server: it is refused from now on and the
    /// connections it opened are closed.
    Revoke(RevokeArgs),
}

/// `server token revoke`.
#[derive(Debug, Clone, clap::Args)]
pub struct RevokeArgs {
    /// The token's id (`jti`, printed when it was minted).
    #[arg(long)]
    pub jti: String,
    /// The running server, e.g. `http://127.0.0.1:8080`.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The server's secret file: a short-lived admin token is minted with it.
    #[arg(long, env = "OT_AUTH_SECRET_FILE", conflicts_with = "token_file")]
    pub secret_file: Option<PathBuf>,
    /// Or a file holding an admin token for `*` (servers whose tokens are minted elsewhere).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Extra certificate authorities (PEM) for an `https://` server.
    #[arg(long, env = "OT_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

/// A random 128-bit token id.
fn new_jti() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Mint the token `args` describe; returns the token and its claims.
pub fn mint(args: &TokenArgs) -> anyhow::Result<(String, Claims)> {
    let Some(secret_file) = &args.secret_file else {
        bail!("--secret-file is required");
    };
    let secret = read_secret(secret_file)?;
    if args.docs.is_empty() {
        bail!("give at least one --doc PATTERN");
    }
    let sub = args
        .sub
        .clone()
        .or_else(|| args.name.clone())
        .context("give --name or --sub (the user the token is for)")?;
    let issued = now();
    let claims = Claims {
        sub,
        name: args.name.clone(),
        docs: args.docs.clone(),
        access: args.access,
        exp: issued.saturating_add(args.ttl.as_secs()),
        jti: new_jti(),
        nbf: None,
        iat: Some(issued),
    };
    Ok((mint_hs256(&claims, &secret)?, claims))
}

/// The editor link for a minted token: the document's page when the first
/// pattern names one document, else the index. The token is in the fragment,
/// which browsers never send to a server.
pub fn editor_link(url: &str, claims: &Claims, token: &str) -> String {
    let base = url.trim_end_matches('/');
    match claims.docs.first().map(|d| DocId::parse(d)) {
        Some(Ok(doc)) => format!("{base}/d/{doc}#token={token}"),
        _ => format!("{base}/#token={token}"),
    }
}

/// Revoke as `args` say; returns the server's answer.
pub async fn revoke(args: &RevokeArgs) -> anyhow::Result<String> {
    let admin_token = match (&args.secret_file, &args.token_file) {
        (Some(secret_file), _) => {
            let secret = read_secret(secret_file)?;
            let issued = now();
            let claims = Claims {
                sub: "server-token-revoke".into(),
                name: None,
                docs: vec!["*".into()],
                access: Access::Admin,
                exp: issued + 60,
                jti: new_jti(),
                nbf: None,
                iat: Some(issued),
            };
            mint_hs256(&claims, &secret)?
        }
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("reading {}", file.display()))?
            .trim()
            .to_owned(),
        (None, None) => bail!("give --secret-file (or --token-file with an admin token)"),
    };
    let server = ot_driver::ServerUrl::parse(&args.url)?;
    let options = ot_driver::ConnectOptions {
        ca_file: args.ca_file.clone(),
        token: Some(ot_driver::TokenSource::Value(admin_token)),
    };
    let (status, body) = ot_driver::http::post_json_with(
        &server,
        "/api/admin/revoke",
        &serde_json::json!({ "jti": args.jti }),
        &options,
    )
    .await
    .with_context(|| format!("reaching {}", args.url))?;
    if status != 200 {
        bail!("the server refused ({status}): {body}");
    }
    Ok(body)
}
