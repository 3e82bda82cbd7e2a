//! Integration tests of `medfed-certs`, built as one binary (`autotests = false`).

mod cli;
mod handshake;
mod pki;
mod util;
