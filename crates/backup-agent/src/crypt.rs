//! Optional at-rest encryption to age recipients. Backups are encrypted
//! after compression (dump → zstd → age → SHA-256 → store) to the public
//! keys in `backup.encryption.recipients`; the private keys (identities)
//! live in the secret `backup_age_identities`, one per line, and are needed
//! only to verify or restore. Several identities may be listed, so after a
//! key rotation old backups stay readable without being rewritten.
//!
//! age is the cargo feature `age` (on in the opsloop-backup-agent image and
//! in the workspace's test builds). Built without it, a configuration with
//! recipients is refused at start and an encrypted backup does not verify,
//! each with an error naming the feature.

use std::io::{Read, Write};
#[cfg(feature = "age")]
use std::str::FromStr;

/// Secret holding the age identities (`AGE-SECRET-KEY-1…`, one per line).
pub const IDENTITIES_SECRET: &str = "backup_age_identities";

/// The manifest's `encryption` value for age-encrypted objects.
pub const AGE: &str = "age";

/// Whether this binary was built with the cargo feature `age`.
pub const AVAILABLE: bool = cfg!(feature = "age");

/// What an operator reads when age is asked of a binary built without it.
pub const NOT_BUILT: &str = "age encryption is not built into this binary (cargo feature `age`, on in the opsloop-backup-agent image): rebuild with `cargo build -p opsloop-backup-agent --features age`";

/// An age public key (`age1…`).
#[cfg(feature = "age")]
pub type Recipient = age::x25519::Recipient;

/// An age public key: none can exist in a binary built without the cargo
/// feature `age` ([`parse_recipients`] refuses every key).
#[cfg(not(feature = "age"))]
#[derive(Debug, Clone)]
pub enum Recipient {}

#[cfg(not(feature = "age"))]
impl std::fmt::Display for Recipient {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {}
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    #[error(
        "the backup is encrypted with age to {recipients:?}, but the secret {IDENTITIES_SECRET} is not set; put the age identities (AGE-SECRET-KEY-1…, one per line) there"
    )]
    MissingIdentities { recipients: Vec<String> },
    #[error("cannot read the secret {IDENTITIES_SECRET}: {0}")]
    Secret(String),
    #[error("the secret {IDENTITIES_SECRET}: line {line}: {reason}")]
    BadIdentity { line: usize, reason: String },
    #[error(
        "none of the identities in the secret {IDENTITIES_SECRET} can decrypt this backup (encrypted to {recipients:?})"
    )]
    NoMatchingIdentity { recipients: Vec<String> },
    #[error("the backup does not decrypt: {0}")]
    Decrypt(String),
    #[error("unknown encryption {0:?} in the manifest")]
    Unknown(String),
    #[error("the backup is encrypted with age, but {NOT_BUILT}")]
    NotBuilt,
}

/// Parses age recipients (`age1…`); the error is the index and the reason.
/// Built without the cargo feature `age`, any key is refused with
/// [`NOT_BUILT`].
pub fn parse_recipients(keys: &[String]) -> Result<Vec<Recipient>, (usize, &'static str)> {
    #[cfg(feature = "age")]
    {
        keys.iter()
            .enumerate()
            .map(|(i, key)| Recipient::from_str(key.trim()).map_err(|e| (i, e)))
            .collect()
    }
    #[cfg(not(feature = "age"))]
    {
        match keys.first() {
            Some(_) => Err((0, NOT_BUILT)),
            None => Ok(Vec::new()),
        }
    }
}

/// Parses the identities secret: one `AGE-SECRET-KEY-1…` per line; blank
/// lines and `#` comments (as age-keygen writes them) are skipped.
#[cfg(feature = "age")]
pub fn parse_identities(text: &str) -> Result<Vec<age::x25519::Identity>, CryptError> {
    let mut identities = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let identity =
            age::x25519::Identity::from_str(line).map_err(|reason| CryptError::BadIdentity {
                line: i + 1,
                reason: reason.to_owned(),
            })?;
        identities.push(identity);
    }
    Ok(identities)
}

/// A writer that encrypts to age recipients, or passes bytes through.
pub enum Sealed<W: Write> {
    Plain(W),
    #[cfg(feature = "age")]
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> Sealed<W> {
    /// Encrypts to `recipients` into `inner`; none: plain.
    pub fn new(inner: W, recipients: &[Recipient]) -> std::io::Result<Self> {
        if recipients.is_empty() {
            return Ok(Self::Plain(inner));
        }
        #[cfg(feature = "age")]
        {
            let encryptor = age::Encryptor::with_recipients(
                recipients.iter().map(|r| r as &dyn age::Recipient),
            )
            .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok(Self::Age(encryptor.wrap_output(inner)?))
        }
        #[cfg(not(feature = "age"))]
        {
            // No `Recipient` value exists without the feature.
            Err(std::io::Error::other(NOT_BUILT))
        }
    }

    /// Writes the last chunk (and its tag) and returns the inner writer.
    pub fn finish(self) -> std::io::Result<W> {
        match self {
            Self::Plain(inner) => Ok(inner),
            #[cfg(feature = "age")]
            Self::Age(writer) => writer.finish(),
        }
    }
}

impl<W: Write> Write for Sealed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(w) => w.write(buf),
            #[cfg(feature = "age")]
            Self::Age(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Plain(w) => w.flush(),
            #[cfg(feature = "age")]
            Self::Age(w) => w.flush(),
        }
    }
}

/// How stored objects are encoded: the zstd level and the age recipients
/// (none: not encrypted).
#[derive(Clone)]
pub struct Encoding {
    pub level: i32,
    pub recipients: Vec<Recipient>,
}

impl Encoding {
    /// zstd only.
    pub fn plain(level: i32) -> Self {
        Self {
            level,
            recipients: Vec::new(),
        }
    }

    /// The manifest's `encryption` value.
    pub fn encryption(&self) -> Option<String> {
        (!self.recipients.is_empty()).then(|| AGE.to_owned())
    }

    /// The recipients' public keys, for the manifest.
    pub fn recipient_keys(&self) -> Vec<String> {
        self.recipients.iter().map(|r| r.to_string()).collect()
    }
}

/// A reader over the plaintext of `input`: decrypted with `identities`
/// (the secret's text, `None` when unset) when `encryption` is `age`.
pub fn open<'r, R: Read + 'r>(
    input: R,
    encryption: Option<&str>,
    recipients: &[String],
    identities: Option<&str>,
) -> Result<Box<dyn Read + 'r>, CryptError> {
    match encryption {
        None => Ok(Box::new(input)),
        #[cfg(not(feature = "age"))]
        Some(AGE) => {
            let _ = (recipients, identities);
            Err(CryptError::NotBuilt)
        }
        #[cfg(feature = "age")]
        Some(AGE) => {
            let text = identities.ok_or_else(|| CryptError::MissingIdentities {
                recipients: recipients.to_vec(),
            })?;
            let identities = parse_identities(text)?;
            if identities.is_empty() {
                return Err(CryptError::MissingIdentities {
                    recipients: recipients.to_vec(),
                });
            }
            let decryptor =
                age::Decryptor::new(input).map_err(|e| CryptError::Decrypt(e.to_string()))?;
            let reader = decryptor
                .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
                .map_err(|e| match e {
                    age::DecryptError::NoMatchingKeys => CryptError::NoMatchingIdentity {
                        recipients: recipients.to_vec(),
                    },
                    other => CryptError::Decrypt(other.to_string()),
                })?;
            Ok(Box::new(reader))
        }
        Some(other) => Err(CryptError::Unknown(other.to_owned())),
    }
}

#[cfg(all(test, not(feature = "age")))]
mod without_age {
    use super::*;

    #[test]
    fn recipients_and_encrypted_backups_name_the_missing_feature() {
        assert_eq!(parse_recipients(&[]).map(|r| r.len()), Ok(0));
        let (index, reason) = parse_recipients(&["age1anything".into()]).expect_err("refused");
        assert_eq!(index, 0);
        assert!(reason.contains("cargo feature `age`"), "{reason}");
        let err = open(&b"x"[..], Some(AGE), &[], Some("AGE-SECRET-KEY-1X"))
            .err()
            .expect("not built");
        assert!(matches!(err, CryptError::NotBuilt), "{err}");
        assert!(err.to_string().contains("--features age"), "{err}");
        let mut plain = Vec::new();
        open(&b"plain"[..], None, &[], None)
            .expect("plain opens")
            .read_to_end(&mut plain)
            .expect("read");
        assert_eq!(plain, b"plain");
        const { assert!(!AVAILABLE) };
    }
}

#[cfg(all(test, feature = "age"))]
mod tests {
    use age::secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn round_trips_and_rotates() {
        let (one, two) = (
            age::x25519::Identity::generate(),
            age::x25519::Identity::generate(),
        );
        let recipients = parse_recipients(&[one.to_public().to_string()]).expect("recipient");
        let mut sealed = Sealed::new(Vec::new(), &recipients).expect("sealed");
        sealed.write_all(b"marker-plaintext").expect("write");
        let stored = sealed.finish().expect("finish");
        assert!(!stored.windows(6).any(|w| w == b"marker"));

        let both = format!(
            "# created: now\n{}\n\n{}\n",
            two.to_string().expose_secret(),
            one.to_string().expose_secret()
        );
        let mut plain = Vec::new();
        open(&stored[..], Some(AGE), &[], Some(&both))
            .expect("decrypts")
            .read_to_end(&mut plain)
            .expect("read");
        assert_eq!(plain, b"marker-plaintext");

        let only_two = two.to_string().expose_secret().to_owned();
        let err = open(&stored[..], Some(AGE), &[], Some(&only_two))
            .err()
            .expect("no key");
        assert!(
            matches!(err, CryptError::NoMatchingIdentity { .. }),
            "{err}"
        );
        let err = open(&stored[..], Some(AGE), &[], None)
            .err()
            .expect("unset");
        assert!(err.to_string().contains(IDENTITIES_SECRET), "{err}");
        let err = open(&stored[..], Some(AGE), &[], Some("AGE-SECRET-KEY-1NOPE"))
            .err()
            .expect("bad");
        assert!(err.to_string().contains("line 1"), "{err}");
        assert_eq!(
            parse_recipients(&["age1nope".into()]).err().map(|e| e.0),
            Some(0)
        );
    }
}
