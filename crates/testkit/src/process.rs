//! Child processes that die with the test process.
//!
//! Linux delivers the parent-death signal when the *thread* that forked the child exits, and
//! every `#[tokio::test]` runs on a thread that ends with the test. So all children are forked
//! by one dedicated thread that lives until the process exits, through
//! `setpriv --pdeathsig KILL -- <binary>` (setpriv execs, so the child's pid is the binary's).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Sender};

use crate::Error;

type SpawnRequest = (Command, Sender<std::io::Result<Child>>);

/// Never dropped, so the spawner thread's receive loop never ends.
static SPAWNER: OnceLock<Sender<SpawnRequest>> = OnceLock::new();

fn spawner() -> Result<&'static Sender<SpawnRequest>, Error> {
    if let Some(tx) = SPAWNER.get() {
        return Ok(tx);
    }
    let (tx, rx) = mpsc::channel::<SpawnRequest>();
    let spawned = std::thread::Builder::new().name("testkit-spawner".to_owned()).spawn(move || {
        for (mut cmd, reply) in rx {
            // The requester may have given up; nothing else to do with the child then.
            let _ = reply.send(cmd.spawn());
        }
    });
    spawned.map_err(Error::io("starting the testkit spawner thread"))?;
    // A racing initialiser may win: then our sender drops here and our idle thread just ends.
    Ok(SPAWNER.get_or_init(|| tx))
}

/// One running binary with its log file; killed and reaped on drop.
#[derive(Debug)]
pub(crate) struct Proc {
    pub(crate) what: &'static str,
    child: Child,
    pub(crate) log: PathBuf,
}

impl Proc {
    /// Starts `binary args` with stdout and stderr appended to `log`.
    pub(crate) fn spawn(what: &'static str, binary: &Path, args: &[String], log: PathBuf) -> Result<Self, Error> {
        let out = File::create(&log).map_err(Error::io(format!("creating {}", log.display())))?;
        let err = out.try_clone().map_err(Error::io("cloning a log handle"))?;
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--"]).arg(binary).args(args);
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let (reply_tx, reply_rx) = mpsc::channel();
        let spawn_err = |source| Error::Spawn { what: what.to_owned(), source };
        spawner()?.send((cmd, reply_tx)).map_err(|_| spawn_err(std::io::Error::other("spawner thread is gone")))?;
        let child = reply_rx
            .recv()
            .map_err(|_| spawn_err(std::io::Error::other("spawner thread is gone")))?
            .map_err(spawn_err)?;
        Ok(Self { what, child, log })
    }

    /// `Some(status)` once the process has exited.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines of the log, for error messages.
    pub(crate) fn tail(&self) -> String {
        log_tail(&self.log, 40)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `lines` lines of a file (reads at most its last 64 KiB).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
