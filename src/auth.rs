//! The proxy's own client authentication: a users file of names and password hashes, checked
//! when a client sends `AUTH` or `HELLO … AUTH`. Nothing a client sends reaches Redis before it
//! has passed (`session/gate.rs`), and then its connections to Redis are authenticated with the
//! proxy's own credentials (`master-username`/`master-password`): credential injection, so a
//! client that cannot send an ACL username still reaches an ACL-protected Redis.
//!
//! The file has one `name:hash` per line (`#` comments and blank lines ignored), the hash an
//! Argon2 PHC string as `sentinel-proxy hash-password` prints it. `AUTH password` alone is user
//! `default`, as in Redis. The file is read at start and on every reload (SIGHUP); a file that
//! does not load fails the reload and the users in use stay.
//!
//! A pair that verified is remembered (`Verified`), so a client that connects for every request
//! pays Argon2 once, not every time: by an HMAC-SHA256 of the name and password under a key drawn
//! at random when the file is loaded, never the password itself. Only successes are kept (every
//! wrong password costs the full Argon2), at most `VERIFIED_MAX` of them, and a reload starts
//! afresh, so a changed or removed user's old password no longer passes.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use argon2::Argon2;
use password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("users-file {path}: {msg}")]
    File { path: String, msg: String },
}

/// The users of a users file. `Debug` shows the path and the names, never a hash.
pub struct Users {
    pub path: PathBuf,
    /// Name → the PHC string of its password hash.
    hashes: HashMap<String, String>,
    verified: Verified,
}

/// How many verified pairs are remembered; past it, the memory starts afresh.
const VERIFIED_MAX: usize = 4096;

/// The pairs that verified since the file was loaded, by keyed hash (see the module doc).
struct Verified {
    key: ring::hmac::Key,
    /// `None` when the system gave no randomness for the key: every pair then pays Argon2.
    seen: Option<Mutex<HashSet<[u8; 32]>>>,
}

impl Verified {
    fn new() -> Verified {
        let mut key = [0u8; 32];
        let random = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key);
        Verified {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
            seen: random.is_ok().then(|| Mutex::new(HashSet::new())),
        }
    }

    fn tag(&self, user: &[u8], password: &[u8]) -> [u8; 32] {
        let mut ctx = ring::hmac::Context::with_key(&self.key);
        // The name's length first: ("ab", "c") and ("a", "bc") are different pairs.
        ctx.update(&(user.len() as u64).to_be_bytes());
        ctx.update(user);
        ctx.update(password);
        let mut tag = [0u8; 32];
        tag.copy_from_slice(ctx.sign().as_ref());
        tag
    }
}

impl Users {
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let err = |msg: String| UsersError::File {
            path: path.display().to_string(),
            msg,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let hashes = parse(&text).map_err(err)?;
        Ok(Users {
            path: path.to_path_buf(),
            hashes,
            verified: Verified::new(),
        })
    }

    /// Whether `password` is `user`'s and that pair verified before (fast: no Argon2). False
    /// says nothing: only `verify` can tell.
    pub fn verified_before(&self, user: &[u8], password: &[u8]) -> bool {
        let Some(Ok(seen)) = self.verified.seen.as_ref().map(|s| s.lock()) else {
            return false;
        };
        seen.contains(&self.verified.tag(user, password))
    }

    /// Whether `password` is `user`'s. Slow by design (Argon2) unless the pair verified before:
    /// call it off the async threads.
    pub fn verify(&self, user: &[u8], password: &[u8]) -> bool {
        if self.verified_before(user, password) {
            return true;
        }
        let Some(phc) = std::str::from_utf8(user)
            .ok()
            .and_then(|u| self.hashes.get(u))
        else {
            // An unknown name costs what a known one does, so timing does not tell names apart.
            let _ = Argon2::default().verify_password(password, &decoy());
            return false;
        };
        let ok = PasswordHash::new(phc)
            .map(|h| Argon2::default().verify_password(password, &h).is_ok())
            .unwrap_or(false);
        if ok && let Some(seen) = &self.verified.seen {
            let tag = self.verified.tag(user, password);
            if let Ok(mut seen) = seen.lock() {
                if seen.len() >= VERIFIED_MAX {
                    seen.clear();
                }
                seen.insert(tag);
            }
        }
        ok
    }

    /// `name` is a user of the file (a client certificate that names it logs in as it).
    pub fn has(&self, name: &str) -> bool {
        self.hashes.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.hashes.keys().collect();
        names.sort();
        f.debug_struct("Users")
            .field("path", &self.path)
            .field("names", &names)
            .finish()
    }
}

impl PartialEq for Users {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.hashes == other.hashes
    }
}

impl Eq for Users {}

fn decoy() -> PasswordHash<'static> {
    static DECOY: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| hash("decoy").unwrap_or_default());
    PasswordHash::new(DECOY.as_str()).unwrap_or_else(|_| {
        PasswordHash::new("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA")
            .expect("a constant PHC string")
    })
}

/// `name:hash` lines; every hash must be an Argon2 PHC string.
fn parse(text: &str) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |msg: &str| format!("line {}: {msg}", i + 1);
        let (name, phc) = line
            .split_once(':')
            .ok_or_else(|| at("expected name:hash"))?;
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(at("a user name is one word"));
        }
        let parsed = PasswordHash::new(phc)
            .map_err(|e| at(&format!("the hash is not a PHC string ({e})")))?;
        if !parsed.algorithm.as_str().starts_with("argon2") {
            return Err(at(&format!(
                "hash algorithm {} is not Argon2: make hashes with `sentinel-proxy hash-password`",
                parsed.algorithm
            )));
        }
        if out.insert(name.to_string(), phc.to_string()).is_some() {
            return Err(at(&format!("user {name} appears twice")));
        }
    }
    Ok(out)
}

/// An Argon2id hash of `password` with a random salt, as a PHC string for the users file
/// (OWASP's parameters: 19 MiB, 2 passes, 1 lane, as `Argon2::default()`).
pub fn hash(password: &str) -> Result<String, password_hash::Error> {
    let salt = SaltString::generate(&mut password_hash::rand_core::OsRng);
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(text: &str) -> Users {
        Users {
            path: "users".into(),
            hashes: parse(text).unwrap(),
            verified: Verified::new(),
        }
    }

    #[test]
    fn a_password_is_checked_against_its_users_hash() {
        let h = hash("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        let u = users(&format!("# app users\n\napp:{h}\n"));
        assert!(u.verify(b"app", b"s3cret"));
        assert!(!u.verify(b"app", b"wrong"));
        assert!(!u.verify(b"nobody", b"s3cret"));
        assert!(!u.verify(b"default", b"s3cret"));
        let shown = format!("{u:?}");
        assert!(
            shown.contains("app") && !shown.contains("argon2"),
            "{shown}"
        );
    }

    /// A pair that verified is remembered (by keyed hash) and passes again without Argon2; a
    /// wrong password or an unknown user never is; a reload (a new `Users`) starts afresh.
    #[test]
    fn a_verified_pair_is_remembered_and_nothing_else() {
        let u = users(&format!("app:{}\n", hash("s3cret").unwrap()));
        assert!(!u.verified_before(b"app", b"s3cret"));
        assert!(!u.verify(b"app", b"wrong"));
        assert!(!u.verify(b"nobody", b"s3cret"));
        assert!(!u.verified_before(b"app", b"wrong"));
        assert!(u.verify(b"app", b"s3cret"));
        assert!(u.verified_before(b"app", b"s3cret"));
        assert!(u.verify(b"app", b"s3cret"));
        // The name is part of the pair, not only the bytes of name and password together.
        assert!(!u.verified_before(b"ap", b"ps3cret"));
        assert!(!u.verified_before(b"nobody", b"s3cret"));
        let shown = format!("{u:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        let reloaded = users(&format!("app:{}\n", hash("other").unwrap()));
        assert!(!reloaded.verified_before(b"app", b"s3cret"));
        assert!(!reloaded.verify(b"app", b"s3cret"));
    }

    #[test]
    fn a_bad_file_says_which_line() {
        let h = hash("x").unwrap();
        for (text, want) in [
            ("app", "line 1: expected name:hash"),
            ("app:plaintext", "line 1: the hash is not a PHC string"),
            (&*format!("a:{h}\na:{h}"), "line 2: user a appears twice"),
            (
                "a:$pbkdf2-sha256$i=1000$c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",
                "line 1: hash algorithm pbkdf2-sha256 is not Argon2",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.starts_with(want), "{text}: {e}");
        }
    }
}
