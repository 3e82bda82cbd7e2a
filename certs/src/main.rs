//! `medfed-certs`: the consortium PKI on the command line. Flags are parsed here and handed to the
//! `medfed_certs` library, which does the work.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use medfed_certs::{Role, Validity};

/// Consortium PKI for medfed: CA, node enrolment, revocation.
#[derive(Debug, Parser)]
#[command(name = "medfed-certs", version, about)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands, with their raw flags.
#[derive(Debug, Subcommand)]
enum Command {
    /// Create the consortium CA: DIR/ca.pem, DIR/ca.key (0600) and an empty DIR/crl.pem.
    Init {
        /// Directory for the CA files (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// The consortium's name (the CA's common name).
        #[arg(long, default_value = "medfed consortium")]
        name: String,
        /// Days the CA certificate is valid.
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u16).range(1..))]
        days: u16,
    },
    /// At a hospital: make the node key DIR/NODE.key (0600) and the request DIR/NODE.csr.pem.
    Request {
        /// The node's name, its identity in the consortium.
        #[arg(long)]
        name: String,
        /// Directory for the key and the request (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Key type: `p256` (nodes) or `ed25519` (the coordinator, whose key signs audit reports).
        #[arg(long, default_value = "p256", value_parser = ["p256", "ed25519"])]
        key_type: String,
    },
    /// Operator: sign a certificate signing request.
    Sign {
        /// The CA directory.
        #[arg(long)]
        ca_dir: PathBuf,
        /// The request (PEM).
        #[arg(long)]
        csr: PathBuf,
        /// Where to write the certificate (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u16).range(1..))]
        days: u16,
        /// What the certificate is for.
        #[arg(long, value_enum, default_value_t = RoleArg::Node)]
        role: RoleArg,
        /// A DNS name or IP address of the coordinator (repeatable; default localhost, 127.0.0.1).
        #[arg(long)]
        san: Vec<String>,
    },
    /// Operator: revoke a certificate (adds it to DIR/crl.pem).
    Revoke {
        /// The CA directory.
        #[arg(long)]
        ca_dir: PathBuf,
        /// The certificate to revoke (PEM).
        #[arg(long)]
        cert: PathBuf,
    },
    /// Operator: reissue DIR/crl.pem with the same revocations and a new nextUpdate, before the
    /// one in force expires (the coordinator and the nodes refuse an expired CRL).
    Crl {
        /// The CA directory.
        #[arg(long)]
        ca_dir: PathBuf,
    },
    /// Local use: CA, coordinator and node certificates in one directory, in one step.
    Dev {
        /// Directory for everything (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// How many nodes.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        nodes: u16,
        /// Node names, comma-separated (default hospital-1 … hospital-N); exactly N of them.
        #[arg(long, value_delimiter = ',')]
        names: Option<Vec<String>>,
    },
    /// Operator: write the consortium's member list (each node's name and key fingerprint),
    /// which every hospital pins in its node.toml (`[policy] members`).
    Members {
        /// Where to write the list (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// The members' certificates (PEM).
        #[arg(required = true)]
        certs: Vec<PathBuf>,
    },
    /// Print a certificate's subject, kind, alternative names, serial, validity and issuer.
    Show {
        /// The certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
    },
}

/// `--role`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum RoleArg {
    /// A hospital node (clientAuth).
    Node,
    /// The coordinator (serverAuth, SANs).
    Coordinator,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Node => Self::Node,
            RoleArg::Coordinator => Self::Coordinator,
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("medfed-certs: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Init { dir, name, days } => {
            medfed_certs::init_ca(&dir, &name, Validity::days_from_now(days))
                .context("init failed")?;
            println!(
                "created consortium CA {name:?} in {}: {}, {} (0600), {}",
                dir.display(),
                medfed_certs::CA_CERT_FILE,
                medfed_certs::CA_KEY_FILE,
                medfed_certs::CRL_FILE
            );
        }
        Command::Request {
            name,
            out,
            key_type,
        } => {
            let kind = if key_type == "ed25519" {
                medfed_certs::KeyKind::Ed25519
            } else {
                medfed_certs::KeyKind::EcdsaP256
            };
            let csr =
                medfed_certs::make_request_with(&out, &name, kind).context("request failed")?;
            println!(
                "wrote key {} (0600, keep it here) and request {} (send it to the operator)",
                out.join(format!("{name}.key")).display(),
                csr.display()
            );
        }
        Command::Sign {
            ca_dir,
            csr,
            out,
            days,
            role,
            san,
        } => {
            medfed_certs::sign_request(
                &ca_dir,
                &csr,
                &out,
                role.into(),
                Validity::days_from_now(days),
                &san,
            )
            .context("sign failed")?;
            println!("wrote certificate {}", out.display());
            println!("{}", medfed_certs::describe_certificate(&out)?);
        }
        Command::Revoke { ca_dir, cert } => {
            medfed_certs::revoke(&ca_dir, &cert).context("revoke failed")?;
            println!(
                "revoked {}; distribute the new {}",
                cert.display(),
                ca_dir.join(medfed_certs::CRL_FILE).display()
            );
        }
        Command::Crl { ca_dir } => {
            medfed_certs::reissue_crl(&ca_dir).context("reissuing the CRL failed")?;
            println!(
                "reissued {}, valid for {} days; distribute it",
                ca_dir.join(medfed_certs::CRL_FILE).display(),
                medfed_certs::CRL_LIFETIME.whole_days()
            );
        }
        Command::Dev { out, nodes, names } => {
            let names = medfed_certs::dev_node_names(usize::from(nodes), names.as_deref())?;
            let consortium =
                medfed_certs::make_dev_consortium(&out, &names).context("dev failed")?;
            println!(
                "created a development consortium in {}: CA, coordinator and {} nodes ({})",
                consortium.dir.display(),
                consortium.nodes.len(),
                names.join(", ")
            );
        }
        Command::Members { out, certs } => {
            let list = medfed_certs::MemberList::write_from_files(&certs, &out)
                .context("members failed")?;
            println!(
                "wrote {} ({} members, digest {}); give every hospital this file",
                out.display(),
                list.names().count(),
                hex::encode(list.digest())
            );
        }
        Command::Show { cert } => {
            let summary = medfed_certs::describe_certificate(&cert)?;
            println!("{summary}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
