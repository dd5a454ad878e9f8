//! AWS Signature Version 4 for the few JSON calls the Secrets Manager target
//! makes (POST to `/`, no query string). The clock is a parameter so the
//! published example can pin it.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use ring::{digest, hmac};

use super::SecretText;

/// Long-term or temporary AWS credentials.
pub(crate) struct Credentials {
    pub access_key: String,
    pub secret_key: SecretText,
    pub session_token: Option<SecretText>,
}

impl Credentials {
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and optional
    /// `AWS_SESSION_TOKEN`.
    pub fn from_env() -> Option<Credentials> {
        let get = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
        Some(Credentials {
            access_key: get("AWS_ACCESS_KEY_ID")?,
            secret_key: SecretText::new(get("AWS_SECRET_ACCESS_KEY")?),
            session_token: get("AWS_SESSION_TOKEN").map(SecretText::new),
        })
    }
}

/// What is signed: one request.
pub(crate) struct Signed<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    /// Lower-case names; must include `host` and `x-amz-date`.
    pub headers: &'a BTreeMap<String, String>,
    pub payload: &'a [u8],
    pub region: &'a str,
    pub service: &'a str,
}

/// `20150830T123600Z` for `t`.
pub(crate) fn amz_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, bytes).as_ref())
}

fn hmac(key: &[u8], msg: &str) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&key, msg.as_bytes()).as_ref().to_vec()
}

/// The `Authorization` header's value for `req`, signed at its `x-amz-date`.
pub(crate) fn authorization(creds: &Credentials, req: &Signed<'_>) -> String {
    let amz_date = req
        .headers
        .get("x-amz-date")
        .map(String::as_str)
        .unwrap_or_default();
    let date = amz_date.get(..8).unwrap_or_default();
    let mut canonical_headers = String::new();
    for (name, value) in req.headers {
        canonical_headers.push_str(&format!("{name}:{}\n", value.trim()));
    }
    let signed_headers = req
        .headers
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(";");
    let canonical = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
        req.method,
        req.path,
        req.query,
        sha256_hex(req.payload)
    );
    let scope = format!("{date}/{}/{}/aws4_request", req.region, req.service);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let mut key = hmac(
        format!("AWS4{}", creds.secret_key.expose()).as_bytes(),
        date,
    );
    for part in [req.region, req.service, "aws4_request"] {
        key = hmac(&key, part);
    }
    let signature = hex(&hmac(&key, &to_sign));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        creds.access_key
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The worked example in AWS's Signature Version 4 documentation (IAM
    /// ListUsers, 2015-08-30), with its published signature.
    #[test]
    fn the_documented_example_signs_the_same() {
        let creds = Credentials {
            access_key: "AKIDEXAMPLE".into(),
            secret_key: SecretText::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
            session_token: None,
        };
        let headers: BTreeMap<String, String> = [
            (
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            ),
            ("host", "iam.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let auth = authorization(
            &creds,
            &Signed {
                method: "GET",
                path: "/",
                query: "Action=ListUsers&Version=2010-05-08",
                headers: &headers,
                payload: b"",
                region: "us-east-1",
                service: "iam",
            },
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    #[test]
    fn dates_are_formatted_in_utc() {
        let t = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        assert_eq!(amz_date(t), "20150830T123600Z");
        assert_eq!(amz_date(UNIX_EPOCH), "19700101T000000Z");
        // A leap day.
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(amz_date(t), "20000229T000000Z");
    }
}
