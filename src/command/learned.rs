//! What a server says of its own commands: the flags of `COMMAND INFO` (`write`, `readonly`,
//! `blocking`, `noscript` …), learned once per master when the watcher verifies it, so that a
//! version whose commands differ from the hand list (a new command, a changed flag) is told by
//! the server rather than assumed. Where the server does not answer `COMMAND` (an old version,
//! a renamed command), the hand list stands.
//!
//! Pure: fed the reply's entries (name and flags) by the control plane's client.

use std::collections::HashMap;

use super::{Blocks, Pool, Spec};

/// A set of the command table's rows (`index_of`), as bits: which commands write (the hand
/// list's view, or a server's: `Learned::write_rows`), or which only read (`Learned::read_rows`).
/// What a shared connection asks of each request it carries: a bit test, no lookup by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rows(Box<[u64]>);

impl Rows {
    /// The commands the hand list says write (`Spec::writes`).
    pub fn written_by_hand() -> Rows {
        Rows::from_fn(|s| s.writes)
    }

    fn from_fn(has: impl Fn(&Spec) -> bool) -> Rows {
        let table = super::all();
        let mut bits = vec![0u64; table.len().div_ceil(64)].into_boxed_slice();
        for (i, spec) in table.iter().enumerate() {
            if has(spec) {
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        Rows(bits)
    }

    /// Whether row `index` is in the set (a row the table does not have: in it, the safe
    /// answer for the write rows; read rows are asked with a row the table has).
    #[inline]
    pub fn has(&self, index: u16) -> bool {
        let i = index as usize;
        self.0.get(i / 64).is_none_or(|w| w & (1 << (i % 64)) != 0)
    }
}

/// A command's flags as the server gave them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    pub write: bool,
    pub readonly: bool,
    pub blocking: bool,
    pub noscript: bool,
}

impl Flags {
    fn from_words<'a>(words: impl IntoIterator<Item = &'a [u8]>) -> Flags {
        let mut f = Flags::default();
        for w in words {
            match w.to_ascii_lowercase().as_slice() {
                b"write" => f.write = true,
                b"readonly" => f.readonly = true,
                b"blocking" => f.blocking = true,
                b"noscript" => f.noscript = true,
                _ => {}
            }
        }
        f
    }
}

/// The commands one server knows, by upper-case name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Learned {
    commands: HashMap<Vec<u8>, Flags>,
}

impl Learned {
    /// From `COMMAND INFO`'s entries: each command's name and its flags.
    pub fn from_entries<'a, F>(entries: impl IntoIterator<Item = (&'a [u8], F)>) -> Learned
    where
        F: IntoIterator<Item = &'a [u8]>,
    {
        Learned {
            commands: entries
                .into_iter()
                .map(|(name, flags)| (name.to_ascii_uppercase(), Flags::from_words(flags)))
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    pub fn flags(&self, name: &[u8]) -> Option<Flags> {
        self.commands.get(name).copied()
    }

    /// Whether the command `spec` writes: the server's word where it has one (scripts and
    /// functions, which the server does not flag `write`, count as writes unless read-only).
    pub fn writes(&self, spec: &Spec) -> bool {
        match self.flags(spec.name) {
            Some(f) if spec.pool == Pool::Script => !f.readonly,
            Some(f) => f.write,
            None => spec.writes,
        }
    }

    /// Which rows write, in the server's word where it has one (`writes`).
    pub fn write_rows(&self) -> Rows {
        Rows::from_fn(|s| self.writes(s))
    }

    /// Which rows only read, in the server's word (`readonly`, and neither a write nor a
    /// script): what may be asked again of another master when the one that had it died before
    /// answering. None the server did not list.
    pub fn read_rows(&self) -> Rows {
        Rows::from_fn(|s| {
            s.pool != Pool::Script
                && !self.writes(s)
                && self.flags(s.name).is_some_and(|f| f.readonly)
        })
    }

    /// Where the hand list and the server disagree (for /status and the version tests): a flag
    /// of a command both know, and the server's commands the list does not name.
    pub fn differences(&self, table: &[Spec]) -> Differences {
        let mut d = Differences::default();
        for spec in table {
            let Some(f) = self.flags(spec.name) else {
                continue;
            };
            let name = String::from_utf8_lossy(spec.name).into_owned();
            if self.writes(spec) != spec.writes {
                d.writes.push(name.clone());
            }
            // Redis flags `blocking` the commands that wait for data; WAIT and WAITAOF, which
            // wait for replicas (`Blocks::Wait`: they hold the connection all the same), are
            // flagged by Valkey 8.1 and not by Redis 7.0: either agrees with the list.
            let agrees = match spec.blocks {
                Blocks::Always(_) | Blocks::Option(_) => f.blocking,
                Blocks::Wait => true,
                Blocks::Never => !f.blocking,
            };
            if !agrees {
                d.blocking.push(name);
            }
        }
        let mut unknown: Vec<String> = self
            .commands
            .keys()
            .filter(|n| table.binary_search_by(|s| s.name.cmp(n)).is_err())
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        unknown.sort();
        d.unknown = unknown;
        d
    }
}

/// See [`Learned::differences`].
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Differences {
    /// Commands whose write flag differs.
    pub writes: Vec<String>,
    /// Commands whose blocking flag differs.
    pub blocking: Vec<String>,
    /// The server's commands the hand list does not name (they pin in pooled mode).
    pub unknown: Vec<String>,
}
