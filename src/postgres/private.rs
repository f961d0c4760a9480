//! Zero-config database: when no `DATABASE_URL` is given, a private
//! PostgreSQL is started from the machine's own server binaries, with its
//! data under conduit's data directory, listening on a Unix socket only (no
//! TCP port), and stopped when conduit stops — or killed with it, should
//! conduit die first.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Why the private PostgreSQL could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalDbError {
    /// No `initdb`/`postgres` pair was found.
    #[error(
        "no DATABASE_URL is set and no PostgreSQL server binaries (initdb, postgres) were found.\n\
         Searched: {searched}\n\
         Either install PostgreSQL (e.g. `apt install postgresql`, `brew install postgresql`),\n\
         or set DATABASE_URL=postgres://user@host:5432/db to use a running server,\n\
         or set CONDUIT_PG_BIN to the directory holding initdb and postgres."
    )]
    NotFound {
        /// Every place looked at, in order.
        searched: String,
    },
    /// A step failed.
    #[error("cannot start the private PostgreSQL: {0}")]
    Failed(String),
    /// Another conduit holds the data directory (and runs its PostgreSQL).
    #[error(
        "the data directory {root} is in use by {holder}. Stop that one, give this one a directory \
         of its own with CONDUIT_DATA_DIR (or --data-dir), or set DATABASE_URL to share a server"
    )]
    InUse {
        /// The data directory.
        root: String,
        /// Who holds it, as its lock file says (process id and address).
        holder: String,
    },
}

/// The lock of a data directory, `<root>/conduit.lock`: held by the conduit
/// that started the directory's PostgreSQL, for as long as it runs, and
/// holding a line that says who that is (for the error another one gets).
#[derive(Debug)]
struct InstanceLock(std::fs::File);

impl InstanceLock {
    /// Takes the lock of `root`; `None` when another process holds it.
    fn take(root: &Path) -> Result<Option<Self>, LocalDbError> {
        std::fs::create_dir_all(root).map_err(|e| failed(format!("cannot create {}: {e}", root.display())))?;
        let path = root.join("conduit.lock");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| failed(format!("cannot open {}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => {
                let lock = Self(file);
                lock.describe(&format!("conduit (pid {}, starting)", std::process::id()));
                Ok(Some(lock))
            }
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(failed(format!("cannot lock {}: {e}", path.display()))),
        }
    }

    /// Replaces the line that says who holds the directory.
    fn describe(&self, holder: &str) {
        use std::os::unix::fs::FileExt;
        let _ = self.0.set_len(0);
        let _ = self.0.write_all_at(format!("{holder}\n").as_bytes(), 0);
    }

    /// Who holds `root`'s lock, as its line says.
    fn holder(root: &Path) -> String {
        std::fs::read_to_string(root.join("conduit.lock"))
            .ok()
            .map(|line| line.trim().to_owned())
            .filter(|line| !line.is_empty())
            .unwrap_or_else(|| "another conduit".to_owned())
    }
}

fn failed(what: impl std::fmt::Display) -> LocalDbError {
    LocalDbError::Failed(what.to_string())
}

/// Finds a directory holding both `initdb` and `postgres`: `explicit`
/// (`CONDUIT_PG_BIN`), `pg_config --bindir`, `PATH`, then the usual
/// install places (Debian/Ubuntu, RHEL, Homebrew, Postgres.app, source builds).
pub fn find_binaries(explicit: Option<&Path>) -> Result<PathBuf, LocalDbError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = explicit {
        // An explicit setting is the only place looked at.
        return if has_server(dir) {
            Ok(dir.to_path_buf())
        } else {
            Err(LocalDbError::NotFound { searched: format!("CONDUIT_PG_BIN={}", dir.display()) })
        };
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").stderr(Stdio::null()).output()
        && out.status.success()
    {
        candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    for (parent, prefix) in [
        ("/usr/lib/postgresql", ""),
        ("/usr", "pgsql-"),
        ("/opt/homebrew/opt", "postgresql"),
        ("/usr/local/opt", "postgresql"),
    ] {
        candidates.extend(versioned_dirs(parent, prefix));
    }
    candidates.push(PathBuf::from("/Applications/Postgres.app/Contents/Versions/latest/bin"));
    candidates.push(PathBuf::from("/usr/local/pgsql/bin"));
    match candidates.iter().find(|dir| has_server(dir)) {
        Some(dir) => Ok(dir.clone()),
        None => Err(LocalDbError::NotFound {
            searched: candidates.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
        }),
    }
}

fn has_server(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("postgres").is_file()
}

/// `<parent>/<prefix><version>/bin` for every version present, newest first.
fn versioned_dirs(parent: &str, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(parent) else { return Vec::new() };
    let mut found: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix(prefix)?.trim_start_matches(['@', '-']);
            let major = version.split('.').next().and_then(|v| v.parse().ok()).unwrap_or(0);
            Some((major, entry.path().join("bin")))
        })
        .collect();
    found.sort_by_key(|b| std::cmp::Reverse(b.0));
    found.into_iter().map(|(_, path)| path).collect()
}

/// conduit's data directory: `CONDUIT_DATA_DIR`, else `/var/lib/conduit`
/// for root (the unprivileged server must reach it), else the user's data
/// directory (`$XDG_DATA_HOME/conduit`, `~/.local/share/conduit`, or
/// `~/Library/Application Support/conduit` on macOS).
pub fn data_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(dir) = explicit {
        return dir.to_path_buf();
    }
    if is_root() {
        return PathBuf::from("/var/lib/conduit");
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("conduit");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    if cfg!(target_os = "macos") {
        home.join("Library/Application Support/conduit")
    } else {
        home.join(".local/share/conduit")
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The unprivileged account PostgreSQL runs as when conduit runs as root
/// (it refuses to run as root): `postgres`, else `nobody`.
fn server_account() -> Result<(u32, u32, String), LocalDbError> {
    for name in ["postgres", "nobody"] {
        let cname = std::ffi::CString::new(name).map_err(failed)?;
        // SAFETY: getpwnam reads the password database; the pointer is read at once.
        let entry = unsafe { libc::getpwnam(cname.as_ptr()) };
        if !entry.is_null() {
            // SAFETY: non-null entries point to a valid passwd record.
            let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
            return Ok((uid, gid, name.to_owned()));
        }
    }
    Err(failed("running as root, and neither a postgres nor a nobody account exists to run the server as"))
}

/// A running private PostgreSQL.
#[derive(Debug)]
pub struct LocalPostgres {
    /// The server, when this process started it (not when it joined one).
    child: Option<Child>,
    socket_dir: PathBuf,
    data: PathBuf,
    /// The data directory's lock, held while this process runs the server.
    lock: Option<InstanceLock>,
}

/// Between the holder and its URL in the lock file's line.
const SERVING: &str = " serving ";

/// The database conduit keeps its data in.
const DATABASE: &str = "conduit";

impl LocalPostgres {
    /// Starts PostgreSQL with its cluster in `<root>/postgres` (created by
    /// `initdb` the first time) and its socket in `<root>/run`, holding the
    /// directory's lock; [`LocalDbError::InUse`] when another conduit holds it.
    pub async fn start(bin: &Path, root: &Path) -> Result<Self, LocalDbError> {
        let Some(lock) = InstanceLock::take(root)? else {
            return Err(LocalDbError::InUse { root: root.display().to_string(), holder: InstanceLock::holder(root) });
        };
        Self::start_locked(bin, root, lock).await
    }

    /// For commands that use the database and exit (`migrate`, `jobs`,
    /// `worker`): joins the server of the conduit that holds `root`, if
    /// one does, else starts it as [`start`](Self::start) does.
    pub async fn join_or_start(bin: &Path, root: &Path) -> Result<Self, LocalDbError> {
        match InstanceLock::take(root)? {
            Some(lock) => Self::start_locked(bin, root, lock).await,
            None => {
                tracing::info!(data = %root.display(), holder = %InstanceLock::holder(root), "joining the private PostgreSQL of the conduit that holds the data directory");
                let mut joined =
                    Self { child: None, socket_dir: root.join("run"), data: root.join("postgres"), lock: None };
                joined.wait_until_accepting(root).await?;
                Ok(joined)
            }
        }
    }

    /// Whether this process started the server (else it joined another's).
    pub fn started_here(&self) -> bool {
        self.child.is_some()
    }

    /// The URL the conduit whose server this process joined serves, as it
    /// said in the lock file ([`serving`](Self::serving)); `None` when this
    /// process started the server, or the holder did not say.
    pub fn joined_url(&self) -> Option<String> {
        if self.started_here() {
            return None;
        }
        let holder = InstanceLock::holder(self.data.parent()?);
        holder.split_once(SERVING).map(|(_, url)| url.trim().to_owned())
    }

    /// Says, in the data directory's lock file, that this process serves
    /// `url` (for the error a second conduit on the same directory gets, and
    /// for the commands that join it).
    pub fn serving(&self, url: &str) {
        if let Some(lock) = &self.lock {
            lock.describe(&format!("conduit (pid {}){SERVING}{url}", std::process::id()));
        }
    }

    async fn start_locked(bin: &Path, root: &Path, lock: InstanceLock) -> Result<Self, LocalDbError> {
        let data = root.join("postgres");
        let socket_dir = root.join("run");
        let account = if is_root() { Some(server_account()?) } else { None };
        for dir in [root, &socket_dir] {
            std::fs::create_dir_all(dir).map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))?;
        }
        if let Some((uid, gid, _)) = &account {
            use std::os::unix::fs::PermissionsExt;
            // The server's account must traverse the root and own its dirs.
            let _ = std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755));
            std::fs::create_dir_all(&data).map_err(|e| failed(format!("cannot create {}: {e}", data.display())))?;
            for dir in [&data, &socket_dir] {
                std::os::unix::fs::chown(dir, Some(*uid), Some(*gid))
                    .map_err(|e| failed(format!("cannot hand {} to the server's account: {e}", dir.display())))?;
            }
        }
        let as_account = |command: &mut Command| {
            if let Some((uid, gid, _)) = &account {
                use std::os::unix::process::CommandExt;
                command.uid(*uid).gid(*gid);
            }
        };
        if !data.join("PG_VERSION").is_file() {
            tracing::info!(data = %data.display(), "creating the private PostgreSQL cluster (once)");
            let mut initdb = Command::new(bin.join("initdb"));
            initdb
                .args(["--username=postgres", "--auth=trust", "--encoding=UTF8", "--locale=C", "-D"])
                .arg(&data)
                .stdin(Stdio::null());
            as_account(&mut initdb);
            let out = initdb.output().map_err(|e| failed(format!("cannot run initdb: {e}")))?;
            if !out.status.success() {
                return Err(failed(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
            }
        }
        let log = std::fs::File::create(root.join("postgres.log"))
            .map_err(|e| failed(format!("cannot open postgres.log: {e}")))?;
        let mut server = Command::new(bin.join("postgres"));
        server
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(&socket_dir)
            // No TCP port: only the socket, which only the server's account (and root) may use.
            .args(["-c", "listen_addresses=", "-c", "unix_socket_permissions=0700", "-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        as_account(&mut server);
        {
            use std::os::unix::process::CommandExt;
            // Its own process group, so that a terminal's Ctrl-C reaches
            // conduit alone, which drains and then stops the database.
            server.process_group(0);
            // SAFETY: prctl is async-signal-safe; the closure touches nothing else.
            #[cfg(target_os = "linux")]
            unsafe {
                server.pre_exec(|| {
                    // Dies with conduit, even if conduit is killed.
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let child = spawn_from_lasting_thread(server)?;
        let mut local = Self { child: Some(child), socket_dir, data, lock: Some(lock) };
        local.wait_until_accepting(root).await?;
        local.create_database().await?;
        Ok(local)
    }

    /// The URL of conduit's database on the socket.
    pub fn url(&self) -> String {
        self.url_for(DATABASE)
    }

    /// The URL of any database of this server.
    pub fn url_for(&self, database: &str) -> String {
        let path = self.socket_dir.to_string_lossy();
        let socket = percent_encoding::utf8_percent_encode(&path, percent_encoding::NON_ALPHANUMERIC);
        format!("postgres://postgres@localhost/{database}?host={socket}")
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    async fn wait_until_accepting(&mut self, root: &Path) -> Result<(), LocalDbError> {
        use sqlx::Connection;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(conn) = sqlx::PgConnection::connect(&self.url_for("postgres")).await {
                let _ = conn.close().await;
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log = std::fs::read_to_string(root.join("postgres.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
                return Err(failed(format!("postgres exited ({status}): {}", tail.join(" | "))));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(failed("postgres did not accept connections within 60 s"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn create_database(&self) -> Result<(), LocalDbError> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.url_for("postgres")).await.map_err(failed)?;
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(DATABASE)
            .fetch_one(&mut conn)
            .await
            .map_err(failed)?;
        if !exists {
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {DATABASE}")))
                .execute(&mut conn)
                .await
                .map_err(failed)?;
        }
        let _ = conn.close().await;
        Ok(())
    }

    /// Stops the server (fast shutdown: sessions end, data is checkpointed)
    /// and waits for it, killing it after 15 s.
    pub async fn stop(mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SAFETY: kill only sends a signal to the server's process.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGINT);
        }
        let waited = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        });
        let _ = waited.await;
        tracing::info!("private PostgreSQL stopped");
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Spawns from a thread that outlives the server: Linux's parent-death
/// signal fires when the spawning *thread* ends, not the process.
fn spawn_from_lasting_thread(mut command: Command) -> Result<Child, LocalDbError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("postgres-parent".into())
        .spawn(move || {
            let _ = tx.send(command.spawn());
            loop {
                std::thread::park();
            }
        })
        .map_err(failed)?;
    rx.recv().map_err(failed)?.map_err(|e| failed(format!("cannot run postgres: {e}")))
}

/// The token secret kept in the data directory: read, or generated once
/// (48 random bytes, hex) and written with mode 0600.
pub fn jwt_secret(root: &Path) -> Result<String, LocalDbError> {
    use std::io::Read;
    let path = root.join("jwt-secret");
    if let Ok(secret) = std::fs::read_to_string(&path)
        && secret.trim().len() >= 32
    {
        return Ok(secret.trim().to_owned());
    }
    let mut bytes = [0u8; 48];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).map_err(failed)?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(root).map_err(failed)?;
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| failed(format!("cannot write {}: {e}", path.display())))?;
        file.write_all(secret.as_bytes()).map_err(failed)?;
    }
    tracing::info!(path = %path.display(), "no JWT_SECRET set: generated one and kept it in the data directory");
    Ok(secret)
}
