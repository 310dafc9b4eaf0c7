//! Users over the control socket: `user add`, `user del`, `user list`.
//!
//! `user add` derives the stored credential here (salt, PBKDF2, StoredKey,
//! ServerKey), so the daemon never sees a password or key. A key is salted
//! with the daemon's realm, which `user add` asks the daemon for first.

use super::Context;
use super::admin::{JsonArg, done, show};
use crate::client::{ClientError, random_bytes};
use crate::output::Table;
use clap::{Args, Subcommand};
use sockd_proto::auth::{
    self, DEFAULT_ITERATIONS, KEY_LEN, MAX_ITERATIONS, MIN_ITERATIONS, REALM_LEN, SALT_LEN, Secret,
    StoredCredential,
};
use sockd_proto::control::{CredentialRecord, RealmInfo, Request, UserInfo};
use sockd_proto::hex;
use std::io::{BufRead, ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user with a password (from stdin) or a new key file (--key-file FILE)
    Add(AddArgs),
    /// Delete a user
    Del {
        name: String,
        #[command(flatten)]
        out: JsonArg,
    },
    /// List users
    List {
        #[command(flatten)]
        out: JsonArg,
    },
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// User name
    pub name: String,
    /// Read the password from one line of standard input
    #[arg(long)]
    pub password_stdin: bool,
    /// PBKDF2 iterations for a password
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(i64::from(MIN_ITERATIONS)..=i64::from(MAX_ITERATIONS)))]
    pub iterations: Option<u32>,
    /// Replace the user's credential if the user exists
    #[arg(long)]
    pub replace: bool,
    #[command(flatten)]
    pub out: JsonArg,
}

pub async fn run(ctx: &Context, command: UserCommand) -> Result<u8, ClientError> {
    match command {
        UserCommand::Add(args) => add(ctx, args).await,
        UserCommand::Del { name, out } => {
            let reply = ctx
                .control(&Request::UserDel { name: name.clone() })
                .await?;
            done(
                out,
                &reply,
                format!("deleted user {name} (and closed their sessions)"),
            )
        }
        UserCommand::List { out } => {
            let reply = ctx.control(&Request::UserList {}).await?;
            show(out, &reply, |users: Vec<UserInfo>| {
                if users.is_empty() {
                    return "no users\n".to_string();
                }
                let mut table = Table::new(&["NAME", "KIND", "ITERATIONS"]);
                for u in users {
                    let iterations = if u.kind == "key" {
                        "-".to_string()
                    } else {
                        u.iterations.to_string()
                    };
                    table.row(vec![u.name, u.kind, iterations]);
                }
                table.render()
            })
        }
    }
}

async fn add(ctx: &Context, args: AddArgs) -> Result<u8, ClientError> {
    // `--key-file` is the global option: for `user add` it names the key
    // file to create (only as given on the command line, never the config's).
    let key_file = ctx.global.key_file.clone();
    let socket = ctx.config.socket();
    if args.name.is_empty() {
        return Err(ClientError::usage("the user name must not be empty"));
    }
    let (secret, created) = match (args.password_stdin, key_file) {
        (true, Some(_)) => {
            return Err(ClientError::usage(
                "choose one of --password-stdin and --key-file FILE",
            ));
        }
        (false, None) => {
            return Err(ClientError::usage(
                "user add needs --password-stdin (read a password from standard input) \
                 or --key-file FILE (create a new key file)",
            ));
        }
        (true, None) => (Secret::Password(read_password_line()?), None),
        (false, Some(path)) => {
            if args.iterations.is_some() {
                return Err(ClientError::usage("--iterations applies to passwords only"));
            }
            let mut key = [0u8; KEY_LEN];
            random_bytes(&mut key)?;
            (Secret::Key(key), Some(path))
        }
    };

    // A key is salted with the daemon's realm (asked before the key file
    // is written, so that an unreachable daemon leaves none behind); a
    // password with a salt of its own.
    let salt = match (&secret, &created) {
        (Secret::Key(key), Some(path)) => {
            let realm = realm(socket).await?;
            create_key_file(path, key)?;
            realm
        }
        _ => {
            let mut salt = vec![0u8; SALT_LEN];
            random_bytes(&mut salt)?;
            salt
        }
    };
    let iterations = args.iterations.unwrap_or(DEFAULT_ITERATIONS);
    let stored =
        tokio::task::spawn_blocking(move || StoredCredential::new(&secret, salt, iterations))
            .await
            .map_err(|e| ClientError::failure(format!("key derivation failed: {e}")))?;
    let credential = CredentialRecord::from(&stored);
    let request = Request::UserAdd {
        name: args.name.clone(),
        credential,
        replace: args.replace,
    };
    let reply = match crate::client::control::request(socket, &request).await {
        Ok(reply) => reply,
        Err(e) => {
            let Some(path) = &created else {
                return Err(e);
            };
            // A refusal means the daemon did not take the key: it is
            // useless. Without an answer, the daemon may have saved the user
            // before the connection broke: deleting the key would leave a
            // user nobody can log in as.
            if e.code().is_some() {
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
            return Err(ClientError::new(
                e.status(),
                format!(
                    "{}; the key file {} is kept: the daemon may have added the user before \
                     the answer was lost. Check with `sockctl user list`; if {} is there, \
                     the key is theirs; if not, delete the key file and run this again",
                    e.message(),
                    path.display(),
                    args.name
                ),
            ));
        }
    };
    let verb = if args.replace {
        "added or replaced"
    } else {
        "added"
    };
    let summary = match &created {
        Some(path) => format!(
            "{verb} user {} (key); key written to {}",
            args.name,
            path.display()
        ),
        None => format!(
            "{verb} user {} (password, {} iterations)",
            args.name, stored.iterations
        ),
    };
    done(args.out, &reply, summary)
}

/// The realm of the daemon behind `socket`: the salt of its key credentials.
pub async fn realm(socket: &Path) -> Result<Vec<u8>, ClientError> {
    let reply = crate::client::control::request(socket, &Request::Realm {}).await?;
    serde_json::from_value::<RealmInfo>(reply.result)
        .ok()
        .and_then(|info| hex::decode(&info.realm))
        .filter(|realm| realm.len() == REALM_LEN)
        .ok_or_else(|| {
            ClientError::protocol(format!(
                "the daemon answered `realm` without a {REALM_LEN}-byte hex realm"
            ))
        })
}

/// The stored credential for `key` at the daemon behind `socket`, for
/// [`Request::UserAdd`]: salted with the daemon's realm.
pub async fn key_credential(
    socket: &Path,
    key: &[u8; KEY_LEN],
) -> Result<CredentialRecord, ClientError> {
    let realm = realm(socket).await?;
    Ok(CredentialRecord::from(&auth::key_credential(key, &realm)))
}

/// Reads one line from stdin as the new password.
fn read_password_line() -> Result<String, ClientError> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .take(64 * 1024)
        .read_line(&mut line)
        .map_err(|e| {
            ClientError::failure(format!("cannot read the password from standard input: {e}"))
        })?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return Err(ClientError::usage(
            "empty password on standard input; pipe the password in, e.g. `echo \"$PW\" | sockctl user add NAME --password-stdin`",
        ));
    }
    Ok(password.to_string())
}

/// Writes a new key file with mode 0600; never overwrites.
fn create_key_file(path: &Path, key: &[u8; KEY_LEN]) -> Result<(), ClientError> {
    let shown = path.display();
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
        if e.kind() == ErrorKind::AlreadyExists {
            ClientError::failure(format!(
                "key file {shown} already exists; refusing to overwrite it: choose another path or remove it first"
            ))
        } else {
            ClientError::failure(format!("cannot create key file {shown}: {e}"))
        }
    })?;
    let written = file
        .write_all(auth::encode_key(key).as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(path);
        return Err(ClientError::failure(format!(
            "cannot write key file {shown}: {e}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_files_are_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.key");
        let key = [0x5au8; KEY_LEN];
        create_key_file(&path, &key).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(crate::client::read_key_file(&path).unwrap(), key);
        let e = create_key_file(&path, &[0u8; KEY_LEN]).unwrap_err();
        assert!(e.message().contains("already exists"), "{e}");
        assert_eq!(crate::client::read_key_file(&path).unwrap(), key);
    }
}
