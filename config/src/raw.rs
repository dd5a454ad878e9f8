//! The file's shape as serde sees it, with spans kept for every value that semantic
//! validation may need to point at.

use indexmap::IndexMap;
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub listen: RawListen,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub proxy: RawProxy,
    #[serde(default)]
    pub backends: IndexMap<String, RawBackend>,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListen {
    pub http: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub listen: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProxy {
    pub threads: Option<Spanned<i64>>,
    pub grace: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    pub addrs: Spanned<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub name: Option<Spanned<String>>,
    pub hosts: Spanned<Vec<Spanned<String>>>,
    pub weights: Spanned<IndexMap<String, Spanned<f64>>>,
    pub writes: Option<Spanned<String>>,
    pub sticky: Option<Spanned<RawSticky>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSticky {
    pub cookie: Option<Spanned<String>>,
    pub max_age: Option<Spanned<String>>,
    pub header: Option<Spanned<String>>,
    pub client_ip: Option<Spanned<bool>>,
}
