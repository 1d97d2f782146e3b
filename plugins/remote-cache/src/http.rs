//! `http-cache`: the remote tier over a plain HTTP server that accepts
//! `PUT` (nginx with WebDAV, Apache mod_dav, bazel-remote-style caches).
//!
//! GET/PUT/DELETE are all a pull or push needs; `list` (for
//! `ktstr kernel list --remote`) needs WebDAV `PROPFIND` (nginx:
//! `dav_ext_methods PROPFIND`); parent collections are created with
//! `MKCOL` when the server answers 409 (nginx: `create_full_put_path on`
//! does it server-side). There is no multipart upload in plain HTTP, so an
//! archive goes up in one PUT.
//!
//! Authentication comes from the environment only, never from the config
//! file: `KTSTR_HTTP_CACHE_TOKEN` (sent as `Authorization: Bearer`) or
//! `KTSTR_HTTP_CACHE_USER` + `KTSTR_HTTP_CACHE_PASSWORD` (Basic). The
//! header is marked sensitive so it is redacted from any `Debug` output;
//! URLs with `user:password@` are refused because URLs end up in errors.

use ktstr_sdk::error::{Result, StageError};
use object_store::http::{HttpBuilder, HttpStore};
use object_store::{HeaderMap, HeaderValue};

use crate::settings::HttpSettings;

pub const TOKEN_ENV: &str = "KTSTR_HTTP_CACHE_TOKEN";
pub const USER_ENV: &str = "KTSTR_HTTP_CACHE_USER";
pub const PASSWORD_ENV: &str = "KTSTR_HTTP_CACHE_PASSWORD";

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The `Authorization` header from the environment, if any.
pub(crate) fn auth_header(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<HeaderValue>> {
    let value = match (env(TOKEN_ENV), env(USER_ENV), env(PASSWORD_ENV)) {
        (Some(token), None, None) => format!("Bearer {token}"),
        (None, Some(user), Some(pass)) => {
            format!("Basic {}", base64(format!("{user}:{pass}").as_bytes()))
        }
        (None, None, None) => return Ok(None),
        (Some(_), _, _) => {
            return Err(StageError::invalid_input(format!(
                "plugin http-cache: both {TOKEN_ENV} and {USER_ENV}/{PASSWORD_ENV} are set"
            ))
            .with_hint("set only one way of authenticating"));
        }
        _ => {
            return Err(StageError::invalid_input(format!(
                "plugin http-cache: {USER_ENV} and {PASSWORD_ENV} must be set together"
            ))
            .with_hint(format!("set both, or use {TOKEN_ENV} for a bearer token")));
        }
    };
    let mut v = HeaderValue::from_str(&value).map_err(|_| {
        StageError::invalid_input(format!(
            "plugin http-cache: the credentials in {TOKEN_ENV} / {USER_ENV} contain characters not allowed in an HTTP header"
        ))
    })?;
    v.set_sensitive(true);
    Ok(Some(v))
}

pub(crate) fn build(s: &HttpSettings, env: &dyn Fn(&str) -> Option<String>) -> Result<HttpStore> {
    let mut options = crate::s3::client_options(&s.common, s.url.starts_with("http://"));
    if let Some(auth) = auth_header(env)? {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", auth);
        options = options.with_default_headers(headers);
    }
    HttpBuilder::new()
        .with_url(&s.url)
        .with_client_options(options)
        .with_retry(crate::s3::retry_config(&s.common))
        .build()
        .map_err(|e| {
            StageError::invalid_input(format!(
                "plugin http-cache: cannot set up the client for {}",
                s.url
            ))
            .caused_by(e)
            .with_hint("check url (KTSTR_HTTP_CACHE_URL)")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(
            base64(b"Aladdin:open sesame"),
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }

    #[test]
    fn auth_is_sensitive_and_exclusive() {
        let env = |k: &str| match k {
            USER_ENV => Some("u".to_string()),
            PASSWORD_ENV => Some("secret".to_string()),
            _ => None,
        };
        let v = auth_header(&env).unwrap().unwrap();
        assert!(v.is_sensitive());
        assert!(!format!("{v:?}").contains("dTpzZWNyZXQ"), "{v:?}");
        let half = |k: &str| (k == USER_ENV).then(|| "u".to_string());
        assert!(auth_header(&half).is_err());
        assert!(auth_header(&|_: &str| None).unwrap().is_none());
    }
}
