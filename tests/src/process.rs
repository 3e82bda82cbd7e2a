//! Real processes in tests: the workspace's binaries (built on demand), the configuration files
//! they read, and their output read line by line.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use medfed_node::NodeConfig;
use medfed_node::data::Holdout;
use tokio::sync::mpsc;

use crate::strip_ansi;

/// The binary `binary` of workspace package `package`, built for this test's target folder and
/// profile first.
///
/// Cargo builds other packages' binaries for a test only when asked, so the first call for a
/// binary runs `cargo build -p PACKAGE --bin BINARY` into the test's own target folder and
/// profile (a no-op when it is up to date); later calls reuse the answer.
pub fn workspace_binary(package: &str, binary: &str) -> Result<PathBuf, String> {
    static BUILT: Mutex<Option<HashMap<String, Result<PathBuf, String>>>> = Mutex::new(None);
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    built
        .get_or_insert_with(HashMap::new)
        .entry(binary.to_owned())
        .or_insert_with(|| build(package, binary))
        .clone()
}

/// The packages with a `fault-injection` feature.
const FAULT_HOOKS: [&str; 2] = ["medfed-coordinator", "medfed-node"];

fn build(package: &str, name: &str) -> Result<PathBuf, String> {
    // The test runs as <target>/<profile>/deps/e2e-<hash>.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("unexpected test executable location")?;
    let target_dir = profile_dir.parent().ok_or("no target folder")?;
    let binary = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "-p", package, "--bin", name])
        .arg("--target-dir")
        .arg(target_dir);
    if FAULT_HOOKS.contains(&package) {
        // The binaries the tests run are test builds: with the fault hooks (`danger_*`), as
        // the in-process coordinator and nodes of the same test run have them.
        build.args(["--features", "fault-injection"]);
    }
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            build.arg("--release");
        }
        Some(other) => {
            build.args(["--profile", other]);
        }
        None => return Err("no profile folder".into()),
    }
    let output = match build.output() {
        Ok(output) => output,
        // Run outside cargo (the test binary started by hand): use what is there.
        Err(e) if binary.is_file() => {
            eprintln!(
                "cannot run cargo ({e}); using {} as it is",
                binary.display()
            );
            return Ok(binary);
        }
        Err(e) => return Err(format!("cannot run cargo to build {name}: {e}")),
    };
    if !output.status.success() {
        return Err(format!(
            "building {name} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    if !binary.is_file() {
        return Err(format!(
            "{name} is not at {} after building it",
            binary.display()
        ));
    }
    Ok(binary)
}

/// A child process whose standard output and error are read line by line (colour codes
/// removed) and echoed to the test's output. Killed when dropped.
pub struct Process {
    child: Child,
    /// Lines in the order they arrived, `true` for standard output.
    lines: mpsc::UnboundedReceiver<(bool, String)>,
    /// Every line read so far, both streams.
    seen: Vec<String>,
}

impl Process {
    /// Starts `command` with piped output, `RUST_LOG=info` and no colours; `label` prefixes
    /// its echoed lines.
    pub fn spawn(label: &str, mut command: Command) -> Result<Self, String> {
        let mut child = command
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {label}: {e}"))?;
        let (tx, lines) = mpsc::unbounded_channel();
        let label = format!("{label} {}", child.id());
        let streams: [(bool, Option<Box<dyn std::io::Read + Send>>); 2] = [
            (true, child.stdout.take().map(|s| Box::new(s) as _)),
            (false, child.stderr.take().map(|s| Box::new(s) as _)),
        ];
        for (is_stdout, stream) in streams {
            let (tx, stream, label) = (tx.clone(), stream.ok_or("no pipe")?, label.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("[{label}] {line}");
                    let _ = tx.send((is_stdout, strip_ansi(&line)));
                }
            });
        }
        Ok(Self {
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for an output line that `wanted` accepts; returns it.
    pub async fn wait_for_line(
        &mut self,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some((_, line))) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return Ok(line);
                    }
                }
                Ok(None) => {
                    let status = self.child.wait().map_err(|e| e.to_string())?;
                    return Err(format!(
                        "exited ({status}) before the awaited line; output:\n{}",
                        self.seen.join("\n")
                    ));
                }
                Err(_) => return Err("timed out waiting for an output line".into()),
            }
        }
    }

    /// Waits up to `timeout` for the process to exit and its output to be read whole.
    pub async fn wait(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some((_, line))) => self.seen.push(line),
                // Both pipes closed: the process is exiting.
                Ok(None) => return self.child.wait().map_err(|e| e.to_string()),
                Err(_) => return Err("timed out waiting for the process to exit".into()),
            }
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Every output line read so far (standard output and error).
    pub fn output(&self) -> &[String] {
        &self.seen
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `[data]` lines that choose `holdout`'s held-out rows.
fn holdout_toml(holdout: &Holdout) -> String {
    match holdout {
        Holdout::Fraction { fraction, seed } => {
            format!("holdout_fraction = {fraction}\nsplit_seed = {seed}")
        }
        Holdout::Column { column, values } => format!(
            "holdout = {{ column = {}, values = [{}] }}",
            toml_string(column),
            values
                .iter()
                .map(|v| toml_string(v))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Holdout::File(path) => {
            format!("holdout_csv = {}", toml_string(&path.display().to_string()))
        }
    }
}

/// `node.toml` for `config`, as a hospital would write it (every path absolute).
pub fn node_toml(config: &NodeConfig) -> String {
    let path = |p: &Path| toml_string(&p.display().to_string());
    let mut text = format!(
        r#"coordinator = "{coordinator}"
server_name = "{server_name}"
state_dir = {state_dir}
reconnect_for_secs = {reconnect}

[tls]
ca_cert = {ca}
cert = {cert}
key = {key}

[data]
csv = {csv}
schema = {schema}
{holdout}
"#,
        coordinator = config.coordinator,
        server_name = config.server_name,
        state_dir = path(&config.state_dir),
        reconnect = config.reconnect_for.as_secs_f64(),
        ca = path(&config.tls.ca_cert),
        cert = path(&config.tls.cert),
        key = path(&config.tls.key),
        csv = path(&config.data.csv),
        schema = path(&config.data.schema),
        holdout = holdout_toml(&config.data.holdout),
    );
    assert!(
        config.privacy.is_none(),
        "node_toml does not write [privacy] yet"
    );
    if let Some(crl) = &config.tls.crl {
        text = text.replace("[data]", &format!("crl = {}\n\n[data]", path(crl)));
    }
    let policy = &config.policy;
    text.push_str("\n[policy]\n");
    match &policy.members {
        Some(members) => text.push_str(&format!("members = {}\n", path(members))),
        None => text.push_str("trust_ca_for_membership = true\n"),
    }
    text.push_str(&format!(
        "require_secure_aggregation = {}\nmin_other_hospitals = {}\nthreshold_floor = \"{}\"\nmax_attempts_per_round = {}\nmax_retries_per_task = {}\n",
        policy.require_secure_aggregation,
        policy.min_other_hospitals,
        policy.threshold_floor,
        policy.max_attempts_per_round,
        policy.max_retries_per_task,
    ));
    let modules: Vec<String> = policy
        .approved_modules
        .modules()
        .iter()
        .map(|m| path(&m.path))
        .collect();
    if !modules.is_empty() {
        text.push_str(&format!("approved_modules = [{}]\n", modules.join(", ")));
    }
    text
}

/// A TOML literal string (paths here hold no `'`).
pub fn toml_string(s: &str) -> String {
    assert!(!s.contains('\''), "path with a quote: {s}");
    format!("'{s}'")
}
