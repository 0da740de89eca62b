//! `iot-connector secret keygen|seal`: the connector's key and the `enc:` values sealed with it.
//!
//! The key is the spool key (32 bytes, AES-256-GCM): one secret for the operator to protect and
//! back up. An `enc:` value is `enc:` + base64(nonce ‖ ciphertext ‖ tag) with a fresh random
//! 96-bit nonce; the associated data binds it to this use, so a sealed spool record can never be
//! passed off as a config secret or the other way round. Neither the key nor a plaintext ever
//! appears in an error.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// Prefix of a sealed value.
pub const SEALED_PREFIX: &str = "enc:";
/// Length of the key file.
pub const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
const AAD: &[u8] = b"iot-connector config secret v1";

/// What went wrong with the key or a sealed value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// `keygen` found a file at the path.
    #[error(
        "key file {0} already exists: refusing to overwrite it (values sealed with it would become unreadable)"
    )]
    KeyExists(PathBuf),
    /// Creating the key file or its directory failed.
    #[error("cannot write key file {path}: {source}")]
    KeyWrite {
        /// The key file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Reading the key file failed.
    #[error(
        "cannot read key file {path}: {source}; create it with `iot-connector secret keygen` or set [spool] key_file"
    )]
    KeyRead {
        /// The key file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The key file is not 32 bytes.
    #[error("key file {path} holds {found} bytes, not {KEY_LEN}: restore the right key file")]
    KeyLength {
        /// The key file.
        path: PathBuf,
        /// Its length.
        found: u64,
    },
    /// The system random generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// AES-GCM refused to seal (a value far too long).
    #[error("cannot seal a value of this length")]
    Seal,
    /// The value is not `enc:` + base64 of at least a nonce and a tag.
    #[error(
        "not a sealed value: expected `enc:` followed by the base64 text `iot-connector secret seal` prints"
    )]
    Malformed,
    /// Authentication failed: another key, or the value was altered.
    #[error(
        "cannot open the sealed value: it was sealed with another key or altered; seal it again with `iot-connector secret seal`"
    )]
    WrongKey,
    /// The opened value is not UTF-8 text.
    #[error("the sealed value is not UTF-8 text")]
    NotText,
}

/// Writes 32 random bytes to a new file (mode 0600; missing parent directories are created
/// 0700). Refuses to overwrite an existing file.
pub fn keygen(path: &Path) -> Result<(), SecretError> {
    let write_err = |source| SecretError::KeyWrite {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(write_err)?;
    }
    let mut key = [0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| SecretError::Random)?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                SecretError::KeyExists(path.to_owned())
            } else {
                write_err(e)
            }
        })?;
    file.write_all(&key)
        .and_then(|()| file.sync_all())
        .map_err(write_err)
}

/// Reads a key file, which must hold exactly 32 bytes.
pub fn read_key(path: &Path) -> Result<[u8; KEY_LEN], SecretError> {
    let read_err = |source| SecretError::KeyRead {
        path: path.to_owned(),
        source,
    };
    let file = fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::with_capacity(KEY_LEN);
    // One byte more than a key, so that a longer file is told apart without reading all of it.
    file.take(KEY_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| SecretError::KeyLength {
        path: path.to_owned(),
        found: fs::metadata(path).map_or(bytes.len() as u64, |m| m.len()),
    })
}

fn aead_key(key: &[u8; KEY_LEN]) -> Result<LessSafeKey, SecretError> {
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| SecretError::Malformed)
}

/// Seals `plaintext` with the key in `key_path`: `enc:<base64 of nonce‖ciphertext‖tag>`.
pub fn seal(key_path: &Path, plaintext: &str) -> Result<String, SecretError> {
    seal_with(&read_key(key_path)?, plaintext)
}

/// [`seal`] with the key's bytes.
pub fn seal_with(key: &[u8; KEY_LEN], plaintext: &str) -> Result<String, SecretError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| SecretError::Random)?;
    let mut sealed = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    sealed.extend_from_slice(&nonce);
    let mut body = plaintext.as_bytes().to_vec();
    aead_key(key)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(AAD),
            &mut body,
        )
        .map_err(|_| SecretError::Seal)?;
    sealed.extend_from_slice(&body);
    Ok(format!("{SEALED_PREFIX}{}", BASE64.encode(&sealed)))
}

/// Opens an `enc:` value sealed with the key in `key_path`.
pub fn open(key_path: &Path, sealed: &str) -> Result<String, SecretError> {
    open_with(&read_key(key_path)?, sealed)
}

/// [`open`] with the key's bytes.
pub fn open_with(key: &[u8; KEY_LEN], sealed: &str) -> Result<String, SecretError> {
    let coded = sealed
        .trim()
        .strip_prefix(SEALED_PREFIX)
        .ok_or(SecretError::Malformed)?;
    let bytes = BASE64
        .decode(coded.trim())
        .map_err(|_| SecretError::Malformed)?;
    if bytes.len() < NONCE_LEN + TAG_LEN {
        return Err(SecretError::Malformed);
    }
    let (nonce, body) = bytes.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Malformed)?;
    let mut body = body.to_vec();
    let plain = aead_key(key)?
        .open_in_place(nonce, Aad::from(AAD), &mut body)
        .map_err(|_| SecretError::WrongKey)?;
    String::from_utf8(plain.to_vec()).map_err(|_| SecretError::NotText)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_sealed_value_opens_with_its_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("keys/spool.key");
        keygen(&key).unwrap();
        let sealed = seal(&key, "s3cr3t").unwrap();
        assert!(sealed.starts_with("enc:"));
        assert!(!sealed.contains("s3cr3t"));
        assert_eq!(open(&key, &sealed).unwrap(), "s3cr3t");
        // A fresh nonce each time.
        assert_ne!(seal(&key, "s3cr3t").unwrap(), sealed);

        let other = dir.path().join("other.key");
        keygen(&other).unwrap();
        assert!(matches!(open(&other, &sealed), Err(SecretError::WrongKey)));
    }

    #[test]
    fn keygen_writes_a_private_key_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        keygen(&key).unwrap();
        let meta = fs::metadata(&key).unwrap();
        assert_eq!(meta.len(), 32);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let before = fs::read(&key).unwrap();
        assert!(matches!(keygen(&key), Err(SecretError::KeyExists(_))));
        assert_eq!(fs::read(&key).unwrap(), before);
    }

    #[test]
    fn a_key_of_the_wrong_length_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        fs::write(&key, [0u8; 31]).unwrap();
        assert!(matches!(
            seal(&key, "x"),
            Err(SecretError::KeyLength { found: 31, .. })
        ));
        fs::write(&key, [0u8; 100]).unwrap();
        assert!(matches!(
            seal(&key, "x"),
            Err(SecretError::KeyLength { found: 100, .. })
        ));
    }

    #[test]
    fn altered_or_garbled_values_are_refused() {
        let key = [7u8; 32];
        let sealed = seal_with(&key, "abc").unwrap();
        let mut bytes = BASE64.decode(sealed.strip_prefix("enc:").unwrap()).unwrap();
        if let Some(last) = bytes.last_mut() {
            *last ^= 1;
        }
        let altered = format!("enc:{}", BASE64.encode(&bytes));
        assert!(matches!(
            open_with(&key, &altered),
            Err(SecretError::WrongKey)
        ));
        for bad in ["abc", "enc:", "enc:!!!!", "enc:AAAA"] {
            assert!(
                matches!(open_with(&key, bad), Err(SecretError::Malformed)),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_canonical_padded_base64_opens() {
        const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let key = [7u8; 32];
        // Nonce, 3 bytes and tag are 31 bytes: the text ends in `==`, and the symbol before the
        // padding has 4 unused low bits, which canonical base64 leaves zero.
        let sealed = seal_with(&key, "abc").unwrap();
        let unpadded = sealed.strip_suffix("==").unwrap();
        let (head, last) = unpadded.split_at(unpadded.len() - 1);
        let stray = &ALPHABET[ALPHABET.find(last).unwrap() + 1..][..1];
        for bad in [
            unpadded.to_owned(),
            format!("{unpadded}="),
            format!("{head}{stray}=="),
            format!("{sealed}===="),
            format!("{} {}", &sealed[..10], &sealed[10..]),
        ] {
            assert!(
                matches!(open_with(&key, &bad), Err(SecretError::Malformed)),
                "{bad}"
            );
        }
        assert_eq!(open_with(&key, &format!(" {sealed}\n")).unwrap(), "abc");
    }
}
