//! Starting the server under test (when the bench is given `--server-bin`) and watching
//! its CPU and memory from `/proc`.
//!
//! The server is started through `taskset -c LIST` when `--server-cpus` is given, so every
//! thread it has (shards and supervisor) stays on those cores, away from the bench's.
//! It inherits the bench's raised `RLIMIT_NOFILE`. The bench reads the one stdout line
//! `kasagi listening on ADDR`; the server's logs go to `server.log` in the output folder
//! (or are discarded without one). Dropping [`ServerProcess`] sends SIGTERM, waits for the
//! drain, then kills.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::procfs::{sample_process, ProcSample};

/// The server's arguments the bench adds unless the user's `--server-args` replace them:
/// the default rate limit (200 msg/s per connection) would refuse the bench's load.
pub const DEFAULT_SERVER_ARGS: &str =
    "--shards 1 --rate-limit 100000 --rate-burst 100000 --log warn";

pub struct ServerProcess {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    pub command_line: String,
}

impl ServerProcess {
    pub fn start(
        bin: &Path,
        cpus: Option<&str>,
        args: &str,
        log_dir: Option<&Path>,
    ) -> Result<ServerProcess> {
        if !bin.exists() {
            bail!(
                "server binary {} does not exist (build it first)",
                bin.display()
            );
        }
        let mut words: Vec<String> = Vec::new();
        if let Some(cpus) = cpus {
            words.extend(["taskset".into(), "-c".into(), cpus.to_owned()]);
        }
        words.push(bin.display().to_string());
        words.push("serve".into());
        words.extend(["--listen".into(), "127.0.0.1:0".into()]);
        words.extend(args.split_whitespace().map(str::to_owned));
        let command_line = words.join(" ");
        let stderr = match log_dir {
            Some(dir) => {
                Stdio::from(File::create(dir.join("server.log")).context("creating server.log")?)
            }
            None => Stdio::null(),
        };
        let mut child = Command::new(&words[0])
            .args(&words[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {command_line}"))?;
        let pid = child.id();
        let stdout = child.stdout.take().context("server stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("server-stdout".into())
            .spawn(move || {
                let mut lines = BufReader::new(stdout).lines();
                while let Some(Ok(line)) = lines.next() {
                    if let Some(addr) = line.strip_prefix("kasagi listening on ") {
                        let _ = tx.send(addr.trim().to_owned());
                    }
                }
            })
            .context("spawning the stdout reader")?;
        let mut process = ServerProcess {
            child,
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            command_line,
        };
        let addr = match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(addr) => addr,
            Err(_) => bail!(
                "the server did not print `kasagi listening on ADDR` within 15 s: {}",
                process.command_line
            ),
        };
        process.addr = addr
            .parse()
            .with_context(|| format!("the server printed an odd address {addr:?}"))?;
        Ok(process)
    }

    pub fn sample(&self) -> Result<ProcSample> {
        sample_process(self.pid)
    }

    /// Whether the server is still running (it may have crashed under load).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if !self.alive() {
            return;
        }
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
