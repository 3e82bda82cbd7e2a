//! End-to-end tests: a real coordinator and real nodes (libtorch trainer) over QUIC (and TCP,
//! where a test says so) with mutual TLS on 127.0.0.1. Each test builds its own consortium in a temporary folder.

mod console;
mod crash;
mod dashboard;
mod declared;
mod distributed;
mod egress;
mod fairness;
mod faults;
mod hostile;
mod load;

mod malicious;
mod manifest;
mod model_file;
mod networks;
mod pki;
mod privacy;
mod quantized;
mod real_data;
mod secure_aggregation;
mod state_folder;
mod torchscript;
mod training;
