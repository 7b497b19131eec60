//! Checking tokens: the key from the command line fixes the one accepted
//! algorithm (HS256 for a secret; EdDSA or ES256 for a public key), and
//! the checks beyond the signature (`exp`, `nbf`, `iat` with leeway; `jti`).

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use super::claims::{Claims, Grant};

/// A secret shorter than this is refused (it could be guessed offline from any token).
pub const MIN_SECRET_BYTES: usize = 32;

/// Why the server cannot start with the given key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The secret is too short.
    #[error("the secret in {0} is shorter than {MIN_SECRET_BYTES} bytes (make one with: head -c 32 /dev/urandom | base64 > FILE)")]
    ShortSecret(String),
    /// Not a usable key (for a public key: not a PEM public key of a supported type).
    #[error("{path}: {why} (expected a secret, or a PEM public key: Ed25519 for EdDSA or P-256 for ES256)")]
    PublicKey {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
}

/// Why a token was refused (all answered 401 `unauthorized`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token came with the request.
    #[error("a token is required")]
    Missing,
    /// Not a well-formed token, or a claim is missing or mistyped.
    #[error("the token is malformed: {0}")]
    Malformed(String),
    /// Signed with another algorithm than the server's key allows (`none` included).
    #[error("the token's algorithm is not accepted")]
    WrongAlgorithm,
    /// The signature does not verify.
    #[error("the token's signature is not valid")]
    BadSignature,
    /// Past `exp`.
    #[error("the token expired")]
    Expired,
    /// Before `nbf`, or `iat` in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// Revoked by an admin.
    #[error("the token was revoked")]
    Revoked,
}

/// Checks tokens against one key.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    leeway: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithm", &self.validation.algorithms)
            .finish()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The secret in `path`, trailing whitespace (a newline) removed.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, KeyError> {
    let mut secret = read(path)?;
    while secret.last().is_some_and(u8::is_ascii_whitespace) {
        secret.pop();
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(KeyError::ShortSecret(path.display().to_string()));
    }
    Ok(secret)
}

/// DER object identifiers that tell the key types apart.
const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

impl Verifier {
    /// HS256 with the secret in `path`.
    pub fn from_secret_file(path: &Path, leeway: u64) -> Result<Verifier, KeyError> {
        let secret = read_secret(path)?;
        let key = DecodingKey::from_secret(&secret).map_err(|e| KeyError::PublicKey {
            path: path.display().to_string(),
            why: e.to_string(),
        })?;
        Ok(Verifier::new(key, Algorithm::HS256, leeway))
    }

    /// EdDSA or ES256, as the PEM public key in `path` says.
    pub fn from_public_key_file(path: &Path, leeway: u64) -> Result<Verifier, KeyError> {
        let bytes = read(path)?;
        let bad = |why: String| KeyError::PublicKey {
            path: path.display().to_string(),
            why,
        };
        let parsed = pem::parse(&bytes).map_err(|e| bad(e.to_string()))?;
        if parsed.tag() != "PUBLIC KEY" {
            return Err(bad(format!("a PEM `{}`, not a `PUBLIC KEY`", parsed.tag())));
        }
        let der = parsed.contents();
        let (key, algorithm) = if contains(der, OID_ED25519) {
            (DecodingKey::from_ed_pem(&bytes), Algorithm::EdDSA)
        } else if contains(der, OID_P256) {
            (DecodingKey::from_ec_pem(&bytes), Algorithm::ES256)
        } else {
            return Err(bad("neither an Ed25519 nor a P-256 key".into()));
        };
        let key = key.map_err(|e| bad(e.to_string()))?;
        Ok(Verifier::new(key, algorithm, leeway))
    }

    fn new(key: DecodingKey, algorithm: Algorithm, leeway: u64) -> Verifier {
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = leeway;
        // `verify` checks the times itself, against the shared clock (a
        // node's own clock may be off: see `crate::clock`).
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        Verifier {
            key,
            validation,
            leeway,
        }
    }

    /// The algorithm this server accepts.
    pub fn algorithm(&self) -> Algorithm {
        self.validation.algorithms[0]
    }

    /// Check `token` at `now` (Unix seconds): signature, algorithm, `exp`,
    /// `nbf`, `iat` (leeway allowed) and the required claims.
    pub(crate) fn verify(&self, token: &str, now: u64) -> Result<Grant, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if header.alg != self.algorithm() {
            return Err(TokenError::WrongAlgorithm);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    TokenError::WrongAlgorithm
                }
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                _ => TokenError::Malformed(e.to_string()),
            },
        )?;
        let claims = data.claims;
        // `now` decides (not the library's clock), so that a connection's end
        // is computed from the same numbers.
        if claims.exp.saturating_add(self.leeway) < now {
            return Err(TokenError::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(self.leeway))
        {
            return Err(TokenError::NotYetValid);
        }
        if claims
            .iat
            .is_some_and(|iat| iat > now.saturating_add(self.leeway))
        {
            return Err(TokenError::NotYetValid);
        }
        if claims.jti.is_empty() || claims.sub.is_empty() {
            return Err(TokenError::Malformed(
                "`jti` and `sub` must not be empty".into(),
            ));
        }
        Ok(Grant { claims })
    }

    /// When a connection opened with `grant` must end (Unix seconds): its expiry plus the leeway.
    pub(crate) fn ends_at(&self, grant: &Grant) -> u64 {
        grant.claims.exp.saturating_add(self.leeway)
    }
}

/// Sign `claims` with HS256 and `secret` (what `server token` prints).
pub fn mint_hs256(claims: &Claims, secret: &[u8]) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret)?,
    )
}
