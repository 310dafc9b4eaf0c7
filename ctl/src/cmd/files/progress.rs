//! Progress bars for transfers: one per file in flight and, for several
//! files, an overall one, with bytes, rate and ETA. Drawn on stderr only
//! when it is a terminal and `--quiet` was not given; notes and errors go
//! above the bars so they do not garble them.

use super::remote::human;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

const FILE_TEMPLATE: &str = "{wide_msg} {bytes:>10} / {total_bytes:<10} {binary_bytes_per_sec:>12}  eta {eta:>3}  [{bar:25}]";
const OVERALL_TEMPLATE: &str = "{prefix:.bold} {wide_msg} {bytes:>10} / {total_bytes:<10} {binary_bytes_per_sec:>12}  eta {eta:>3}  [{bar:25}]";

/// The bars of one command (none if disabled).
pub struct Progress {
    multi: Option<MultiProgress>,
    overall: Option<ProgressBar>,
    files: usize,
    done: Arc<AtomicUsize>,
    quiet: bool,
}

impl Progress {
    /// Bars for `files` files of `bytes` bytes in all.
    pub fn new(quiet: bool, files: usize, bytes: u64) -> Progress {
        let draw = !quiet && std::io::stderr().is_terminal();
        let multi = draw.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        let overall = match &multi {
            Some(multi) if files > 1 => {
                let bar = multi.add(ProgressBar::new(bytes));
                bar.set_style(style(OVERALL_TEMPLATE));
                bar.set_prefix("total");
                bar.set_message(format!("0/{files} files"));
                Some(bar)
            }
            _ => None,
        };
        Progress {
            multi,
            overall,
            files,
            done: Arc::default(),
            quiet,
        }
    }

    /// A bar for one file.
    pub fn file(&self, name: &str, size: u64) -> FileBar {
        let bar = self.multi.as_ref().map(|multi| {
            let bar = ProgressBar::new(size)
                .with_style(style(FILE_TEMPLATE))
                .with_message(name.to_string());
            match &self.overall {
                Some(overall) => multi.insert_before(overall, bar),
                None => multi.add(bar),
            }
        });
        FileBar {
            bar,
            overall: self.overall.clone(),
            files: self.files,
            done: self.done.clone(),
        }
    }

    /// A note such as "resuming ..." (not shown with --quiet).
    pub fn note(&self, text: &str) {
        if !self.quiet {
            self.print(&format!("sockctl: {text}"));
        }
    }

    /// An error of one file among several (always shown).
    pub fn error(&self, text: &str) {
        self.print(&format!("sockctl: {text}"));
    }

    fn print(&self, line: &str) {
        match &self.multi {
            Some(multi) => {
                let _ = multi.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    /// Removes the bars.
    pub fn finish(&self) {
        if let Some(overall) = &self.overall {
            overall.finish_and_clear();
        }
        if let Some(multi) = &self.multi {
            let _ = multi.clear();
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// One file's bar, also feeding the overall one.
pub struct FileBar {
    bar: Option<ProgressBar>,
    overall: Option<ProgressBar>,
    files: usize,
    done: Arc<AtomicUsize>,
}

impl FileBar {
    /// `n` more bytes went through.
    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
        if let Some(overall) = &self.overall {
            overall.inc(n);
        }
    }

    /// Resuming: the first `n` bytes were already there.
    pub fn skip(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(n);
            bar.reset_eta();
        }
        if let Some(overall) = &self.overall {
            overall.inc(n);
        }
    }

    /// Restarting from zero after `sent` bytes were counted.
    pub fn rewind(&self, sent: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(0);
        }
        if let Some(overall) = &self.overall {
            overall.set_position(overall.position().saturating_sub(sent));
        }
    }

    /// The file is done (or failed): its bar goes away.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(overall) = &self.overall {
            overall.set_message(format!("{done}/{} files", self.files));
        }
    }
}

/// `12.0 MiB of 64.0 MiB`.
pub fn of(done: u64, total: u64) -> String {
    format!("{} of {}", human(done), human(total))
}
