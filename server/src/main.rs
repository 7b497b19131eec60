//! `server`: the collaborative editing server binary.

use clap::Parser;
use server::token_command::{self, TokenCommand};
use server::{Command, Config};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Colours only on a terminal: logs piped to a file stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let mut config = Config::parse();
    if let Some(command) = config.command.take() {
        return run_command(command).await;
    }
    let listener = match tokio::net::TcpListener::bind(config.addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %config.addr, error = %e, "cannot listen");
            return std::process::ExitCode::FAILURE;
        }
    };
    match server::run(config, listener, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "server failed");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `server token …`: print to stdout what a script needs, the rest to stderr.
async fn run_command(command: Command) -> std::process::ExitCode {
    let args = match command {
        Command::Token(args) => args,
        Command::Epoch(args) => return epoch_command(args),
    };
    let result = match &args.command {
        Some(TokenCommand::Revoke(revoke)) => token_command::revoke(revoke)
            .await
            .map(|_| eprintln!("revoked {}", revoke.jti)),
        None => token_command::mint(&args).map(|(token, claims)| {
            eprintln!(
                "token for {} ({} on {}), id {}, expires at {} (Unix seconds)",
                claims.sub,
                claims.access,
                claims.docs.join(", "),
                claims.jti,
                claims.exp
            );
            match &args.url {
                Some(url) => println!("{}", token_command::editor_link(url, &claims, &token)),
                None => println!("{token}"),
            }
        }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `server epoch bump`: print the new epoch.
fn epoch_command(args: server::EpochArgs) -> std::process::ExitCode {
    let server::EpochCommand::Bump {
        database_url,
        database_ca_file,
    } = args.command;
    match server::bump_epoch(&database_url, database_ca_file) {
        Ok((old, new)) => {
            eprintln!("storage epoch {old} -> {new}: clients resync from a snapshot when they next connect");
            println!("{new}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
