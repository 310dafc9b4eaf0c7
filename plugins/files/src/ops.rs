//! The small commands: `ls`, `stat`, `mkdir`, `rm`, `mv`, `cd`, `pwd` and
//! `quota`. Results are JSON lines on the main stream (0).

use crate::Ctx;
use crate::jail::{self, JailPath, failure, open_subdir};
use crate::protocol::options;
use crate::quota::Usage;
use rustix::fd::{AsFd, BorrowedFd};
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, Stat};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use sockd_plugin::{Code, Failure, stream};

/// Listings are sent in batches of about this many bytes.
const BATCH: usize = 64 * 1024;
/// How deep `rm -r` descends.
const MAX_DEPTH: usize = 256;

/// One directory entry, as `ls` and `stat` report it.
#[derive(Debug, Serialize)]
pub struct Entry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub size: u64,
    /// Unix seconds.
    pub mtime: i64,
    /// Permission bits.
    pub mode: u32,
}

impl Entry {
    fn new(name: String, st: &Stat) -> Entry {
        Entry {
            name,
            kind: jail::type_name(st),
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime: st.st_mtime,
            mode: st.st_mode & 0o7777,
        }
    }
}

fn write_json<T: Serialize>(ctx: &Ctx<'_>, value: &T) -> Result<(), Failure> {
    let mut line = serde_json::to_vec(value).map_err(|e| Failure::internal(e.to_string()))?;
    line.push(b'\n');
    ctx.call.channel().write(stream::MAIN, &line)?;
    Ok(())
}

fn one<'a>(args: &[&'a str], command: &str) -> Result<Option<&'a str>, Failure> {
    match args {
        [] => Ok(None),
        [path] => Ok(Some(path)),
        _ => Err(Failure::bad_request(format!("usage: {command} [PATH]"))),
    }
}

/// `ls [PATH]`: the entries of a directory (sorted by name, without the
/// plugin's partial files), or the file itself.
pub fn ls(ctx: &Ctx<'_>, args: &[&str]) -> Result<(), Failure> {
    let shown = one(args, "ls")?.unwrap_or(".");
    let target = ctx.resolve(shown)?;
    let dir = match ctx.jail.open_dir(&target, shown) {
        Ok(dir) => dir,
        Err(f) if f.code == Code::NotADirectory => {
            let st = ctx.jail.stat(&target, shown)?;
            let name = target.name().unwrap_or("/").to_string();
            return write_json(ctx, &Entry::new(name, &st));
        }
        Err(f) => return Err(f),
    };
    let mut names: Vec<String> = jail::read_names(dir.as_fd())
        .map_err(|e| failure(shown, e))?
        .into_iter()
        .map(|n| String::from_utf8_lossy(&n).into_owned())
        .filter(|n| !jail::is_reserved(n))
        .collect();
    names.sort();
    let mut batch = Vec::with_capacity(BATCH);
    for name in names {
        // Entries deleted since the directory was read are skipped.
        let Ok(st) = rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        serde_json::to_writer(&mut batch, &Entry::new(name, &st))
            .map_err(|e| Failure::internal(e.to_string()))?;
        batch.push(b'\n');
        if batch.len() >= BATCH {
            ctx.call.channel().write(stream::MAIN, &batch)?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        ctx.call.channel().write(stream::MAIN, &batch)?;
    }
    Ok(())
}

/// `stat PATH`: one entry, symlinks inside the home followed; `name` is
/// the full path.
pub fn stat(ctx: &Ctx<'_>, args: &[&str]) -> Result<(), Failure> {
    let shown = one(args, "stat")?.unwrap_or(".");
    let target = ctx.resolve(shown)?;
    let fd = jail::open_beneath(
        ctx.jail.fd(),
        &target.relative(),
        OFlags::PATH,
        rustix::fs::ResolveFlags::BENEATH | rustix::fs::ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| failure(shown, e))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| failure(shown, e))?;
    write_json(ctx, &Entry::new(target.to_string(), &st))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MkdirOptions {
    #[serde(default)]
    parents: bool,
}

/// `mkdir PATH [{"parents":true}]`.
pub fn mkdir(ctx: &Ctx<'_>, args: &[&str]) -> Result<(), Failure> {
    let (shown, opts): (&str, MkdirOptions) = match args {
        [path] => (path, MkdirOptions::default()),
        [path, opts] => (path, options(Some(opts), "mkdir")?),
        _ => return Err(Failure::bad_request("usage: mkdir PATH [OPTIONS]")),
    };
    let target = ctx.resolve(shown)?;
    if target.is_root() {
        if opts.parents {
            return Ok(());
        }
        return Err(Failure::new(
            Code::AlreadyExists,
            format!("{shown}: is your home directory"),
        ));
    }
    let steps = if opts.parents {
        let mut steps = Vec::new();
        let mut at = JailPath::root();
        let mut rest = target.clone();
        let mut names = Vec::new();
        while let Some((parent, name)) = rest.split_last() {
            names.push(name.to_string());
            rest = parent;
        }
        for name in names.into_iter().rev() {
            at = at.join(&name);
            steps.push(at.clone());
        }
        steps
    } else {
        vec![target.clone()]
    };
    for (i, step) in steps.iter().enumerate() {
        let last = i + 1 == steps.len();
        // Existing parents are fine when they are directories.
        if (opts.parents || !last) && ctx.jail.open_dir(step, shown).is_ok() {
            continue;
        }
        let Some((parent, name)) = step.split_last() else {
            continue;
        };
        let dir = ctx.jail.open_dir(&parent, shown)?;
        ctx.quota.check_files(ctx.limits, 1)?;
        match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
            Ok(()) => ctx.quota.adjust(0, 1),
            Err(Errno::EXIST) if opts.parents => {
                ctx.jail.open_dir(step, shown)?;
            }
            Err(Errno::EXIST) => {
                return Err(Failure::new(
                    Code::AlreadyExists,
                    format!("{shown}: already exists"),
                ));
            }
            Err(e) => return Err(failure(shown, e)),
        }
    }
    ctx.call.set_result(0, &format!("{target}: created"));
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RmOptions {
    #[serde(default)]
    recursive: bool,
}

/// `rm PATH [{"recursive":true}]`.
pub fn rm(ctx: &Ctx<'_>, args: &[&str]) -> Result<(), Failure> {
    let (shown, opts): (&str, RmOptions) = match args {
        [path] => (path, RmOptions::default()),
        [path, opts] => (path, options(Some(opts), "rm")?),
        _ => return Err(Failure::bad_request("usage: rm PATH [OPTIONS]")),
    };
    let target = ctx.resolve(shown)?;
    let Some((parent, name)) = target.split_last() else {
        return Err(Failure::new(
            Code::PermissionDenied,
            format!("{shown}: your home directory cannot be removed"),
        ));
    };
    let dir = ctx.jail.open_dir(&parent, shown)?;
    let st =
        rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| failure(shown, e))?;
    let mut removed = Removed::default();
    if jail::is_dir(&st) {
        if !opts.recursive {
            return Err(Failure::new(
                Code::IsADirectory,
                format!("{shown}: is a directory; use -r to remove it"),
            ));
        }
        let result = remove_tree(dir.as_fd(), name, 0, &mut removed);
        ctx.quota
            .adjust(-i128::from(removed.bytes), -i128::from(removed.files));
        result.map_err(|e| failure(shown, e))?;
    } else {
        rustix::fs::unlinkat(&dir, name, AtFlags::empty()).map_err(|e| failure(shown, e))?;
        let bytes = if jail::is_file(&st) {
            u64::try_from(st.st_size).unwrap_or(0)
        } else {
            0
        };
        ctx.quota.adjust(-i128::from(bytes), -1);
    }
    ctx.call.set_result(0, &format!("{target}: removed"));
    Ok(())
}

#[derive(Debug, Default)]
struct Removed {
    bytes: u64,
    files: u64,
}

/// Removes the directory `name` of `dir` and everything in it, following
/// no symlink; counts what it removed (partials as files, metadata not).
fn remove_tree(
    dir: BorrowedFd<'_>,
    name: &str,
    depth: usize,
    removed: &mut Removed,
) -> Result<(), Errno> {
    if depth >= MAX_DEPTH {
        return Err(Errno::LOOP);
    }
    let sub = open_subdir(dir, name)?;
    for entry in jail::read_names(sub.as_fd())? {
        let Ok(st) = rustix::fs::statat(&sub, entry.as_slice(), AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        let text = String::from_utf8_lossy(&entry);
        if jail::is_dir(&st) {
            match std::str::from_utf8(&entry) {
                Ok(entry) => remove_tree(sub.as_fd(), entry, depth + 1, removed)?,
                Err(_) => return Err(Errno::ILSEQ),
            }
            continue;
        }
        rustix::fs::unlinkat(&sub, entry.as_slice(), AtFlags::empty())?;
        if !text.ends_with(jail::META_SUFFIX) || !jail::is_reserved(&text) {
            removed.files += 1;
            if jail::is_file(&st) {
                removed.bytes += u64::try_from(st.st_size).unwrap_or(0);
            }
        }
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    removed.files += 1;
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MvOptions {
    #[serde(default)]
    force: bool,
}

/// `mv FROM TO [{"force":true}]`: renames inside the home; into TO if it
/// is a directory. An existing TO is replaced only with `force`.
pub fn mv(ctx: &Ctx<'_>, args: &[&str]) -> Result<(), Failure> {
    let (from_shown, to_shown, opts): (&str, &str, MvOptions) = match args {
        [from, to] => (from, to, MvOptions::default()),
        [from, to, opts] => (from, to, options(Some(opts), "mv")?),
        _ => return Err(Failure::bad_request("usage: mv FROM TO [OPTIONS]")),
    };
    let from = ctx.resolve(from_shown)?;
    let Some((from_parent, from_name)) = from.split_last() else {
        return Err(Failure::new(
            Code::PermissionDenied,
            format!("{from_shown}: your home directory cannot be moved"),
        ));
    };
    let mut to = ctx.resolve(to_shown)?;
    let from_dir = ctx.jail.open_dir(&from_parent, from_shown)?;
    rustix::fs::statat(&from_dir, from_name, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| failure(from_shown, e))?;
    if ctx
        .jail
        .stat(&to, to_shown)
        .is_ok_and(|st| jail::is_dir(&st))
        && from != to
    {
        to = to.join(from_name);
    }
    if from.contains(&to) && from != to {
        return Err(Failure::bad_request(format!(
            "{from_shown}: cannot move a directory into itself"
        )));
    }
    let Some((to_parent, to_name)) = to.split_last() else {
        return Err(Failure::bad_request(format!(
            "{to_shown}: is your home directory"
        )));
    };
    let to_dir = ctx.jail.open_dir(&to_parent, to_shown)?;
    let replaced = match rustix::fs::statat(&to_dir, to_name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) if from == to => None,
        Ok(_) if !opts.force => {
            return Err(Failure::new(
                Code::AlreadyExists,
                format!("{to}: already exists; use --force to replace it"),
            ));
        }
        Ok(st) => Some(st),
        Err(_) => None,
    };
    let flags = if opts.force {
        RenameFlags::empty()
    } else {
        RenameFlags::NOREPLACE
    };
    match rustix::fs::renameat_with(&from_dir, from_name, &to_dir, to_name, flags) {
        Ok(()) => {}
        Err(Errno::EXIST) if !opts.force => {
            return Err(Failure::new(
                Code::AlreadyExists,
                format!("{to}: already exists; use --force to replace it"),
            ));
        }
        Err(Errno::INVAL) => {
            return Err(Failure::bad_request(format!(
                "{from_shown}: cannot move a directory into itself"
            )));
        }
        Err(e) => return Err(failure(to_shown, e)),
    }
    if let Some(st) = replaced {
        let bytes = if jail::is_file(&st) {
            u64::try_from(st.st_size).unwrap_or(0)
        } else {
            0
        };
        ctx.quota.adjust(-i128::from(bytes), -1);
    }
    let _ = jail::sync_dir(to_dir.as_fd());
    ctx.call.set_result(0, &format!("{from} -> {to}"));
    Ok(())
}

#[derive(Serialize)]
struct Cwd {
    cwd: String,
}

/// `cd [PATH]`: checks the directory and returns it; the caller keeps it
/// as the session's working directory.
pub fn cd(ctx: &Ctx<'_>, args: &[&str]) -> Result<JailPath, Failure> {
    let shown = one(args, "cd")?.unwrap_or("/");
    let target = ctx.resolve(shown)?;
    ctx.jail.open_dir(&target, shown)?;
    write_json(
        ctx,
        &Cwd {
            cwd: target.to_string(),
        },
    )?;
    Ok(target)
}

/// `pwd`: the session's working directory.
pub fn pwd(ctx: &Ctx<'_>, args: &[&str]) -> Result<(), Failure> {
    if !args.is_empty() {
        return Err(Failure::bad_request("usage: pwd"));
    }
    write_json(
        ctx,
        &Cwd {
            cwd: ctx.cwd.to_string(),
        },
    )
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaOptions {
    #[serde(default)]
    recount: bool,
}

/// `quota [{"recount":true}]`: usage and limits.
pub fn quota(ctx: &Ctx<'_>, args: &[&str]) -> Result<(), Failure> {
    let opts: QuotaOptions = match args {
        [] => QuotaOptions::default(),
        [opts] => options(Some(opts), "quota")?,
        _ => return Err(Failure::bad_request("usage: quota [OPTIONS]")),
    };
    if opts.recount {
        ctx.quota
            .recount(ctx.jail.fd(), ctx.settings.partial_ttl())?;
    }
    let usage: Usage = ctx.quota.usage(ctx.limits);
    write_json(ctx, &usage)
}
