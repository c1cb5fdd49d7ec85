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

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

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
        })
    }

    /// Whether `password` is `user`'s. Slow by design (Argon2): call it off the async threads.
    pub fn verify(&self, user: &[u8], password: &[u8]) -> bool {
        let Some(phc) = std::str::from_utf8(user)
            .ok()
            .and_then(|u| self.hashes.get(u))
        else {
            // An unknown name costs what a known one does, so timing does not tell names apart.
            let _ = Argon2::default().verify_password(password, &decoy());
            return false;
        };
        PasswordHash::new(phc)
            .map(|h| Argon2::default().verify_password(password, &h).is_ok())
            .unwrap_or(false)
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
