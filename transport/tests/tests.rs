//! Integration tests of `medfed-transport`, built as one binary (`autotests = false`).

mod channel;
