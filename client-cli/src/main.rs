//! `ot-client`: the terminal client.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use client_cli::commands::{self, Common};
use client_cli::session::ServerUrl;
use client_cli::store::Store;
use ot_driver::TokenSource;
use ot_protocol::{ClientId, DocId};

/// The end of `ot-client --help`: commands to copy (a test parses each one).
const EXAMPLES: &str = "\
Examples:
  ot-client edit notes                              # the full-screen editor on document notes
  ot-client append notes \"a line from a script\"     # one edit, then exit
  ot-client --server ws://127.0.0.1:9000 cat notes  # print a document of another server";

#[derive(Parser)]
#[command(
    name = "ot-client",
    version,
    about = "Collaborative plain-text editing from the terminal",
    after_help = EXAMPLES
)]
struct Cli {
    /// Server address (ws://HOST:PORT or http://HOST:PORT; wss:// or https:// for TLS).
    #[arg(
        long,
        global = true,
        env = "OT_SERVER",
        default_value = "ws://127.0.0.1:8080"
    )]
    server: String,
    /// Display name shown to other users.
    #[arg(long, global = true, env = "OT_NAME")]
    name: Option<String>,
    /// Use this client id (one running writer) instead of a saved or new one.
    #[arg(long, global = true)]
    client_id: Option<String>,
    /// Where the client keeps its state (default: the user's data directory).
    #[arg(long, global = true, env = "OT_CLIENT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Also trust the certificate authorities in this PEM file for wss:// and
    /// https:// (besides the system's), e.g. a self-signed server's certificate.
    #[arg(long, global = true, env = "OT_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// A file holding the access token for a server with authentication
    /// (read again on every connection, so a renewed token is picked up).
    #[arg(long, global = true, env = "OT_TOKEN_FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// The access token itself (prefer --token-file: the environment of a
    /// process can be read by others on some systems).
    #[arg(long, global = true, env = "OT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open the full-screen editor on DOC (works offline; Ctrl-Q quits).
    Edit {
        /// Document id.
        doc: String,
    },
    /// Print the text of DOC.
    Cat {
        /// Document id.
        doc: String,
        /// The text as of this revision.
        #[arg(long)]
        rev: Option<u64>,
    },
    /// Insert TEXT at character position POS.
    Insert {
        /// Document id.
        doc: String,
        /// Position (characters from the start).
        pos: usize,
        /// Text to insert.
        text: String,
    },
    /// Delete LEN characters at POS.
    Delete {
        /// Document id.
        doc: String,
        /// Position (characters from the start).
        pos: usize,
        /// Number of characters.
        len: usize,
    },
    /// Append TEXT at the end.
    Append {
        /// Document id.
        doc: String,
        /// Text to append.
        text: String,
    },
    /// Make DOC equal to a file, by sending the difference.
    Replace {
        /// Document id.
        doc: String,
        /// The file with the wanted text.
        #[arg(long)]
        file: PathBuf,
    },
    /// Print each change as it happens.
    Watch {
        /// Document id.
        doc: String,
        /// Print the whole text after each change.
        #[arg(long)]
        text: bool,
        /// Stop after this many changes.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Print the revisions: rev, time (ms), client, seq, op.
    History {
        /// Document id.
        doc: String,
        /// Start after this revision.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// At most this many.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Print the detected conflicts (ops transformed past concurrent ops);
    /// `conflicts replay DOC` has the server recompute every journaled
    /// resolution from the stored ops and says which differ (needs admin on
    /// the document; exits non-zero if any differs under the rule in force).
    Conflicts {
        /// `DOC`, or `replay DOC`.
        #[arg(required = true, num_args = 1..=2, value_names = ["replay", "DOC"])]
        words: Vec<String>,
        /// With `replay`: recompute under the other insert tie rule instead,
        /// listing the resolutions that would change.
        #[arg(long, value_enum)]
        tie: Option<commands::Tie>,
        /// At a regional server: its own journal instead (each op of the
        /// home transformed past the region's unsent work).
        #[arg(long)]
        upstream: bool,
    },
    /// Print the conflict copies the server keeps of a document (work a
    /// regional server accepted that its home could not take).
    Copies {
        /// Document id.
        doc: String,
    },
    /// Send edits saved by earlier runs (made offline or unacknowledged) and exit.
    Sync {
        /// Document id.
        doc: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ot-client: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ot-client: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_doc(doc: &str) -> anyhow::Result<()> {
    DocId::parse(doc)
        .map(drop)
        .map_err(|e| anyhow::anyhow!("invalid document id {doc:?}: {e}"))
}

fn check_client_id(id: Option<String>) -> anyhow::Result<Option<String>> {
    match id {
        Some(id) => match ClientId::parse(&id) {
            Ok(_) => Ok(Some(id)),
            Err(e) => anyhow::bail!("invalid client id {id:?}: {e}"),
        },
        None => Ok(None),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let common = Common {
        server: ServerUrl::parse(&cli.server)?,
        name: cli.name,
        client_id: check_client_id(cli.client_id)?,
        store: cli
            .data_dir
            .map(Store::new)
            .unwrap_or_else(Store::default_location),
        connect: client_cli::session::ConnectOptions {
            ca_file: cli.ca_file,
            token: match (cli.token_file, cli.token) {
                (Some(file), _) => Some(TokenSource::File(file)),
                (None, Some(token)) => Some(TokenSource::Value(token)),
                (None, None) => None,
            },
        },
    };
    match cli.command {
        Command::Edit { doc } => {
            check_doc(&doc)?;
            client_cli::editor::run(&common, &doc).await
        }
        Command::Cat { doc, rev } => {
            check_doc(&doc)?;
            commands::cat(&common, &doc, rev).await
        }
        Command::Insert { doc, pos, text } => {
            check_doc(&doc)?;
            commands::insert(&common, &doc, pos, &text).await
        }
        Command::Delete { doc, pos, len } => {
            check_doc(&doc)?;
            commands::delete(&common, &doc, pos, len).await
        }
        Command::Append { doc, text } => {
            check_doc(&doc)?;
            commands::append(&common, &doc, &text).await
        }
        Command::Replace { doc, file } => {
            check_doc(&doc)?;
            commands::replace(&common, &doc, &file).await
        }
        Command::Watch { doc, text, count } => {
            check_doc(&doc)?;
            commands::watch(&common, &doc, text, count).await
        }
        Command::History { doc, from, limit } => {
            check_doc(&doc)?;
            commands::history(&common, &doc, from, limit).await
        }
        Command::Conflicts {
            words,
            tie,
            upstream,
        } => match words.as_slice() {
            [doc] if tie.is_none() => {
                check_doc(doc)?;
                commands::conflicts(&common, doc, upstream).await
            }
            [replay, doc] if replay == "replay" => {
                check_doc(doc)?;
                commands::conflicts_replay(&common, doc, tie.unwrap_or_default(), upstream).await
            }
            [_] => anyhow::bail!("--tie goes with `conflicts replay DOC`"),
            _ => anyhow::bail!("expected `conflicts DOC` or `conflicts replay DOC`"),
        },
        Command::Copies { doc } => {
            check_doc(&doc)?;
            commands::copies(&common, &doc).await
        }
        Command::Sync { doc } => {
            check_doc(&doc)?;
            commands::sync(&common, &doc).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `command` split into words as a shell would (double quotes only).
    fn words(command: &str) -> Vec<String> {
        let mut words = Vec::new();
        for (i, part) in command.split('"').enumerate() {
            if i % 2 == 1 {
                words.push(part.to_owned());
            } else {
                words.extend(part.split_whitespace().map(str::to_owned));
            }
        }
        words
    }

    /// Every example at the end of `--help` is a command line the client accepts.
    #[test]
    fn the_help_examples_parse() {
        let commands: Vec<&str> = EXAMPLES
            .lines()
            .skip(1)
            .map(|line| line.split('#').next().unwrap_or_default().trim())
            .collect();
        assert!((2..=3).contains(&commands.len()), "{commands:?}");
        for command in commands {
            let words = words(command);
            assert_eq!(words.first().map(String::as_str), Some("ot-client"));
            if let Err(e) = Cli::try_parse_from(&words) {
                panic!("`{command}` does not parse: {e}");
            }
        }
    }
}
