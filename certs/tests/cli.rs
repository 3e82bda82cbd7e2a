//! The `medfed-certs` binary, run as an operator would.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn medfed_certs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_medfed-certs"))
        .args(args)
        .output()
        .unwrap()
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn assert_ok(output: &Output) {
    assert!(
        output.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn dev_with_three_nodes_creates_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pki");
    assert_ok(&medfed_certs(&["dev", "--out", arg(&out), "--nodes", "3"]));
    let mut names: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ca.key",
            "ca.pem",
            "coordinator.key",
            "coordinator.pem",
            "crl.pem",
            "hospital-1.key",
            "hospital-1.pem",
            "hospital-2.key",
            "hospital-2.pem",
            "hospital-3.key",
            "hospital-3.pem",
            "members.toml",
        ]
    );
    // The member list pins the three nodes, and not the coordinator.
    let members = medfed_certs::MemberList::load(&out.join("members.toml")).unwrap();
    assert_eq!(
        members.names().collect::<Vec<_>>(),
        ["hospital-1", "hospital-2", "hospital-3"]
    );
    #[cfg(unix)]
    for key in names.iter().filter(|n| n.ends_with(".key")) {
        assert_eq!(crate::pki::mode(&out.join(key)), 0o600, "{key}");
    }

    // A second run refuses and changes nothing.
    let ca_before = fs::read(out.join("ca.key")).unwrap();
    let output = medfed_certs(&["dev", "--out", arg(&out), "--nodes", "3"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("already exists"));
    assert_eq!(fs::read(out.join("ca.key")).unwrap(), ca_before);
}

#[test]
fn dev_with_names_uses_them() {
    let dir = tempfile::tempdir().unwrap();
    assert_ok(&medfed_certs(&[
        "dev",
        "--out",
        arg(dir.path()),
        "--nodes",
        "2",
        "--names",
        "north,south",
    ]));
    assert!(dir.path().join("north.pem").exists());
    assert!(dir.path().join("south.key").exists());
    assert!(!dir.path().join("hospital-1.pem").exists());
}

#[test]
fn dev_with_a_names_count_mismatch_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pki");
    let output = medfed_certs(&["dev", "--out", arg(&out), "--nodes", "3", "--names", "a,b"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--names lists 2"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn operator_flow_init_request_sign_show_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let node = dir.path().join("hospital");
    assert_ok(&medfed_certs(&["init", "--dir", arg(&ca), "--days", "30"]));
    let output = medfed_certs(&["init", "--dir", arg(&ca)]);
    assert!(!output.status.success());

    assert_ok(&medfed_certs(&[
        "request",
        "--name",
        "north",
        "--out",
        arg(&node),
    ]));
    let cert = node.join("north.pem");
    assert_ok(&medfed_certs(&[
        "sign",
        "--ca-dir",
        arg(&ca),
        "--csr",
        arg(&node.join("north.csr.pem")),
        "--out",
        arg(&cert),
        "--days",
        "7",
    ]));
    let output = medfed_certs(&["show", "--cert", arg(&cert)]);
    assert_ok(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("subject CN: north"), "{stdout}");
    assert!(
        stdout.contains("issuer:     CN=medfed consortium"),
        "{stdout}"
    );
    assert!(stdout.contains("node (clientAuth)"), "{stdout}");

    // A coordinator certificate with explicit SANs; a node may not have SANs.
    assert_ok(&medfed_certs(&[
        "request",
        "--name",
        "coord",
        "--out",
        arg(&node),
    ]));
    let csr = node.join("coord.csr.pem");
    let coord = node.join("coord.pem");
    let output = medfed_certs(&[
        "sign",
        "--ca-dir",
        arg(&ca),
        "--csr",
        arg(&csr),
        "--out",
        arg(&coord),
        "--san",
        "x.org",
    ]);
    assert!(!output.status.success());
    assert_ok(&medfed_certs(&[
        "sign",
        "--ca-dir",
        arg(&ca),
        "--csr",
        arg(&csr),
        "--out",
        arg(&coord),
        "--role",
        "coordinator",
        "--san",
        "x.org",
        "--san",
        "10.0.0.1",
    ]));
    // `show` names what the coordinator may be reached by.
    let output = medfed_certs(&["show", "--cert", arg(&coord)]);
    assert_ok(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("coordinator (serverAuth)"), "{stdout}");
    assert!(stdout.contains("names:      x.org, 10.0.0.1"), "{stdout}");

    let crl_before = fs::read(ca.join("crl.pem")).unwrap();
    assert_ok(&medfed_certs(&[
        "revoke",
        "--ca-dir",
        arg(&ca),
        "--cert",
        arg(&cert),
    ]));
    assert_ne!(fs::read(ca.join("crl.pem")).unwrap(), crl_before);
    let output = medfed_certs(&["revoke", "--ca-dir", arg(&ca), "--cert", arg(&cert)]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("already revoked"));

    let crl_before = fs::read(ca.join("crl.pem")).unwrap();
    assert_ok(&medfed_certs(&["crl", "--ca-dir", arg(&ca)]));
    assert_ne!(fs::read(ca.join("crl.pem")).unwrap(), crl_before);
}

#[test]
fn members_writes_the_list_every_hospital_pins_and_never_overwrites_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pki");
    assert_ok(&medfed_certs(&["dev", "--out", arg(&out), "--nodes", "2"]));
    let list = dir.path().join("consortium-members.toml");
    let (one, two) = (out.join("hospital-1.pem"), out.join("hospital-2.pem"));
    let output = medfed_certs(&["members", "--out", arg(&list), arg(&one), arg(&two)]);
    assert_ok(&output);
    assert!(String::from_utf8_lossy(&output.stdout).contains("2 members"));
    // The same list as the dev consortium's.
    let written = medfed_certs::MemberList::load(&list).unwrap();
    let dev = medfed_certs::MemberList::load(&out.join("members.toml")).unwrap();
    assert_eq!(written.digest(), dev.digest());
    let before = fs::read(&list).unwrap();
    let again = medfed_certs(&["members", "--out", arg(&list), arg(&one)]);
    assert!(!again.status.success());
    assert_eq!(fs::read(&list).unwrap(), before);
    // A file that is not a certificate is named.
    let bad = medfed_certs(&[
        "members",
        "--out",
        arg(&dir.path().join("other.toml")),
        arg(&out.join("members.toml")),
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("members.toml"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
