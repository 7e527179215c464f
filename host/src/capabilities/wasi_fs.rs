//! `wasi:filesystem/types` under the tier's quotas: wasmtime-wasi's implementation, wrapped.
//!
//! wasmtime-wasi has no disk quota and no cap on open descriptors, so a guest with a writable
//! workspace could fill the disk, and one holding descriptors could exhaust the process's
//! `RLIMIT_NOFILE`, which every agent of the process shares. This module links
//! `wasi:filesystem/types` itself over a view ([`WorkspaceFs`]) that hands every method to
//! wasmtime-wasi's own ([`WasiFilesystemCtxView`]), except for the ones that grow the disk or
//! hold a descriptor, which it counts first:
//!
//! - **bytes** (`workspace_bytes`): the workspace's size at boot (a bounded walk) plus every
//!   byte a run writes (`write`, and the output streams of `write-via-stream` and
//!   `append-via-stream`, wrapped in a counting stream), the hole a write or `set-size` past
//!   the end of a file opens, and a symlink's target. An overwrite counts again and deleting
//!   gives nothing back within a run, so the count never falls below what the files' lengths
//!   add up to. A write that would pass the limit is refused whole, before any byte of it is
//!   written.
//! - **files** (`workspace_files`): entries found at boot plus those a run creates
//!   (`open-at` with `create` of a path that did not exist, `create-directory-at`,
//!   `link-at`, `symlink-at`).
//! - **descriptors** (`descriptors`): what `open-at` opened and `drop` has not closed; and,
//!   process-wide, all agents together hold at most half of the process's open-file limit,
//!   which the host raises to its hard limit at start ([`raise_open_file_limit`]), so the
//!   other half stays the host's (ledger, state, each run's workspace).
//!
//! The guest sees an ordinary I/O error: `quota` for bytes and files, `insufficient-memory`
//! for descriptors (`wasi:filesystem` 0.2 has no "too many open files"). A refused stream write
//! is `last-operation-failed`, whose `filesystem-error-code` is `quota`; wasi-libc (and so
//! Rust's `std`) does not ask and reports any failed stream write as `EIO`. The first refusal of
//! each limit in a run is a `RESOURCE_LIMIT` violation charged to the error budget: recorded
//! through the run's governor before the guest sees it when the refused call is a
//! `wasi:filesystem` method; a refused stream write (`wasi:io/streams`, which wasmtime-wasi
//! links over the resource table alone) is recorded at the guest's next `wasi:filesystem`
//! call, or when the phase's guest call returns ([`AgentCtx::record_quota_refusal`]).

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::Mutex;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemCtxView, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::filesystem::types::{
    self, ErrorCode, HostDescriptor, HostDirectoryEntryStream,
};
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, FsError, FsResult, OutputStream, Pollable, StreamError,
    StreamResult,
};
use wasmtime_wasi::{OpenMode, WasiCtx, WasiCtxView, WasiView};

use super::AgentCtx;
use crate::governance::{CallRefusal, Governor, ViolationKind};
use crate::policy::TierPolicy;

/// Link `wasi:filesystem/types` through [`WorkspaceFs`], in place of wasmtime-wasi's own
/// (already in `linker`, from `wasmtime_wasi::p2::add_to_linker_async`).
pub(crate) fn add_to_linker(linker: &mut Linker<AgentCtx>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let linked = types::add_to_linker::<AgentCtx, WorkspaceFsData>(linker, view);
    linker.allow_shadowing(false);
    linked
}

fn view(ctx: &mut AgentCtx) -> WorkspaceFs<'_> {
    WorkspaceFs {
        wasi: WasiParts {
            ctx: &mut ctx.wasi,
            table: &mut ctx.table,
        },
        quota: &mut ctx.quota,
        gov: &mut ctx.gov,
    }
}

/// A limit a run reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum QuotaExceeded {
    /// The workspace would hold more bytes than `workspace_bytes`.
    #[error(
        "`{op}` of {wanted} bytes refused: the workspace holds {used} bytes and may hold {limit} (`tiers.{tier}.workspace_bytes`); raising it allows more, and deleting files gives room back at the next run"
    )]
    Bytes {
        op: &'static str,
        wanted: u64,
        used: u64,
        limit: u64,
        tier: &'static str,
    },
    /// The workspace would hold more files, directories and links than `workspace_files`.
    #[error(
        "`{op}` of `{path}` refused: the workspace holds {used} files and directories and may hold {limit} (`tiers.{tier}.workspace_files`); raising it allows more, and deleting gives room back at the next run"
    )]
    Files {
        op: &'static str,
        path: String,
        used: u64,
        limit: u64,
        tier: &'static str,
    },
    /// The agent holds `descriptors` open descriptors.
    #[error(
        "`open-at` of `{path}` refused: the agent holds {limit} open descriptors, its limit (`tiers.{tier}.descriptors`); closing one, or raising the limit, allows another"
    )]
    Descriptors {
        path: String,
        limit: u32,
        tier: &'static str,
    },
    /// The agents of this process together hold their share of the open-file limit.
    #[error(
        "`open-at` of `{path}` refused: the agents of this process hold {held} descriptors, their share of the process's open-file limit ({nofile}, `RLIMIT_NOFILE`), the rest of which the host keeps for itself; it is allowed again once other runs close theirs, or with a higher hard `RLIMIT_NOFILE`"
    )]
    Process {
        path: String,
        held: u64,
        nofile: u64,
    },
}

impl QuotaExceeded {
    /// The `wasi:filesystem` error the guest gets.
    fn code(&self) -> ErrorCode {
        match self {
            QuotaExceeded::Bytes { .. } | QuotaExceeded::Files { .. } => ErrorCode::Quota,
            QuotaExceeded::Descriptors { .. } | QuotaExceeded::Process { .. } => {
                ErrorCode::InsufficientMemory
            }
        }
    }

    /// Which limit, for "the first refusal of each limit".
    fn limit(&self) -> Limit {
        match self {
            QuotaExceeded::Bytes { .. } => Limit::Bytes,
            QuotaExceeded::Files { .. } => Limit::Files,
            QuotaExceeded::Descriptors { .. } => Limit::Descriptors,
            QuotaExceeded::Process { .. } => Limit::Process,
        }
    }

    /// What the violation row names.
    fn resource(&self) -> String {
        match self {
            QuotaExceeded::Bytes { .. } => "workspace".to_string(),
            QuotaExceeded::Files { path, .. }
            | QuotaExceeded::Descriptors { path, .. }
            | QuotaExceeded::Process { path, .. } => format!("workspace:{path}"),
        }
    }

    /// The ledger's name of the refused call.
    fn op(&self) -> &'static str {
        match self {
            QuotaExceeded::Bytes { op, .. } | QuotaExceeded::Files { op, .. } => op,
            QuotaExceeded::Descriptors { .. } | QuotaExceeded::Process { .. } => {
                "filesystem.open-at"
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    Bytes,
    Files,
    Descriptors,
    /// The process-wide share: not the agent's own limit, so never recorded against it.
    Process,
}

/// The byte count, shared with the counting streams a run's descriptors hand out.
#[derive(Debug)]
struct ByteQuota {
    limit: u64,
    used: AtomicU64,
    tier: &'static str,
    /// A refusal was noted this run (recorded, or pending in `pending`).
    noted: AtomicBool,
    /// A stream's refusal, waiting for the governor.
    pending: Mutex<Option<QuotaExceeded>>,
}

impl ByteQuota {
    /// Count `wanted` more bytes, or refuse them all.
    fn charge(&self, op: &'static str, wanted: u64) -> Result<(), QuotaExceeded> {
        if wanted == 0 {
            return Ok(());
        }
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(wanted)
                    .filter(|total| *total <= self.limit)
            })
            .map(|_| ())
            .map_err(|used| QuotaExceeded::Bytes {
                op,
                wanted,
                used,
                limit: self.limit,
                tier: self.tier,
            })
    }

    /// Give back bytes charged for a call that then failed.
    fn refund(&self, bytes: u64) {
        if bytes > 0 {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
        }
    }

    /// A stream's refusal: the first of the run waits for the governor.
    fn note_from_stream(&self, refusal: &QuotaExceeded) {
        if !self.noted.swap(true, Ordering::AcqRel) {
            *self.pending.lock() = Some(refusal.clone());
        }
    }
}

/// What one run holds against its tier's limits; part of the store's [`AgentCtx`].
#[derive(Debug)]
pub(crate) struct WorkspaceQuota {
    bytes: Arc<ByteQuota>,
    files: u64,
    files_limit: u64,
    descriptors_limit: u32,
    /// Resource reps of the descriptors `open-at` opened and `drop` has not closed.
    open: HashSet<u32>,
    /// The process's descriptors, shared with every other run.
    pool: Arc<DescriptorPool>,
    /// Whether a refusal of `workspace_files`, and of `descriptors`, was recorded this run.
    files_recorded: bool,
    descriptors_recorded: bool,
    tier: &'static str,
}

impl WorkspaceQuota {
    /// The limits of `policy` for a run over `workspace`. A writable workspace is measured
    /// (a walk of at most `workspace_files` + 1 entries that follows no symlink); one found
    /// with more entries counts as full. A read-only one is not: nothing can grow it.
    pub fn new(workspace: &Path, policy: &TierPolicy) -> WorkspaceQuota {
        let measured = if policy.workspace_write {
            measure(workspace, policy.workspace_files)
        } else {
            Measured::default()
        };
        let (bytes, files) = if measured.truncated {
            tracing::warn!(
                workspace = %workspace.display(),
                limit = policy.workspace_files,
                "the workspace holds more entries than its tier's `workspace_files`; it counts as full"
            );
            (measured.bytes.max(policy.workspace_bytes), measured.entries)
        } else {
            (measured.bytes, measured.entries)
        };
        WorkspaceQuota::with_usage(policy, bytes, files)
    }

    /// The limits of `policy` with `bytes` and `files` already in use.
    pub fn with_usage(policy: &TierPolicy, bytes: u64, files: u64) -> WorkspaceQuota {
        let tier = policy.tier.code();
        WorkspaceQuota {
            bytes: Arc::new(ByteQuota {
                limit: policy.workspace_bytes,
                used: AtomicU64::new(bytes),
                tier,
                noted: AtomicBool::new(false),
                pending: Mutex::new(None),
            }),
            files,
            files_limit: policy.workspace_files,
            descriptors_limit: policy.descriptors,
            open: HashSet::new(),
            pool: process_pool().clone(),
            files_recorded: false,
            descriptors_recorded: false,
            tier,
        }
    }

    /// Bytes counted so far: the size at boot plus what the run wrote.
    #[cfg(test)]
    pub fn bytes_used(&self) -> u64 {
        self.bytes.used.load(Ordering::Acquire)
    }

    /// Entries counted so far: those at boot plus those the run created.
    #[cfg(test)]
    pub fn files_used(&self) -> u64 {
        self.files
    }

    /// Descriptors the guest holds open.
    #[cfg(test)]
    pub fn descriptors_open(&self) -> usize {
        self.open.len()
    }

    /// Room for one more entry at `path`.
    fn check_file(&self, op: &'static str, path: &str) -> Result<(), QuotaExceeded> {
        if self.files >= self.files_limit {
            return Err(QuotaExceeded::Files {
                op,
                path: path.to_string(),
                used: self.files,
                limit: self.files_limit,
                tier: self.tier,
            });
        }
        Ok(())
    }

    /// Room for one more descriptor of this run, then of the process; takes the process's.
    fn acquire_descriptor(&self, path: &str) -> Result<(), QuotaExceeded> {
        if self.open.len() >= self.descriptors_limit as usize {
            return Err(QuotaExceeded::Descriptors {
                path: path.to_string(),
                limit: self.descriptors_limit,
                tier: self.tier,
            });
        }
        self.pool.acquire().map_err(|held| QuotaExceeded::Process {
            path: path.to_string(),
            held,
            nofile: self.pool.nofile,
        })
    }
}

impl Drop for WorkspaceQuota {
    /// The store is gone and its descriptors closed with it: give them back to the process.
    fn drop(&mut self) {
        self.pool.release(self.open.len() as u64);
    }
}

#[derive(Debug, Default)]
struct Measured {
    bytes: u64,
    entries: u64,
    truncated: bool,
}

/// Bytes of files and symlinks, and entries, under `root`, visiting at most `max + 1`
/// entries; symlinks are not followed. An unreadable entry counts as an entry of no bytes.
fn measure(root: &Path, max: u64) -> Measured {
    let mut measured = Measured::default();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            measured.entries += 1;
            if measured.entries > max {
                measured.truncated = true;
                return measured;
            }
            let Ok(metadata) = entry.path().symlink_metadata() else {
                continue;
            };
            if metadata.is_dir() {
                dirs.push(entry.path());
            } else {
                measured.bytes = measured.bytes.saturating_add(metadata.len());
            }
        }
    }
    measured
}

/// The descriptors agents may hold together: half of the process's open-file limit, the
/// other half being the host's (ledger, state, each run's workspace). One per process.
#[derive(Debug)]
pub(crate) struct DescriptorPool {
    /// The process's soft `RLIMIT_NOFILE`.
    nofile: u64,
    /// What agents may hold of it.
    share: u64,
    /// What they hold.
    held: AtomicU64,
}

impl DescriptorPool {
    /// A pool of `share` descriptors of a process allowed `nofile`.
    fn new(nofile: u64, share: u64) -> DescriptorPool {
        DescriptorPool {
            nofile,
            share,
            held: AtomicU64::new(0),
        }
    }

    /// Take one, or say how many are held.
    fn acquire(&self) -> Result<(), u64> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < self.share).then_some(held + 1)
            })
            .map(|_| ())
    }

    fn release(&self, count: u64) {
        if count > 0 {
            self.held.fetch_sub(count, Ordering::AcqRel);
        }
    }
}

static PROCESS_POOL: OnceLock<Arc<DescriptorPool>> = OnceLock::new();

/// The process's pool; the first call raises the soft `RLIMIT_NOFILE` to the hard limit.
fn process_pool() -> &'static Arc<DescriptorPool> {
    PROCESS_POOL.get_or_init(|| {
        let nofile = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(limit) => limit,
            Err(error) => {
                tracing::warn!(%error, "cannot raise the open-file limit (RLIMIT_NOFILE)");
                rlimit::Resource::NOFILE
                    .get()
                    .map_or(1024, |(soft, _hard)| soft)
            }
        };
        Arc::new(DescriptorPool::new(nofile, nofile / 2))
    })
}

/// Raise the process's soft `RLIMIT_NOFILE` to its hard limit (once per process) and return
/// it; agents together may hold half of it.
pub(crate) fn raise_open_file_limit() -> u64 {
    process_pool().nofile
}

impl AgentCtx {
    /// Record the run's pending quota refusal (a refused stream write), if any: a
    /// `RESOURCE_LIMIT` violation charged to the error budget. The phase driver calls it when
    /// a guest call returns.
    pub async fn record_quota_refusal(&mut self) {
        record_pending(&self.quota, &mut self.gov).await;
    }
}

async fn record_pending(quota: &WorkspaceQuota, gov: &mut Governor) {
    let pending = quota.bytes.pending.lock().take();
    if let Some(refusal) = pending {
        record(gov, &refusal).await;
    }
}

async fn record(gov: &mut Governor, refusal: &QuotaExceeded) {
    let refusal_call = CallRefusal {
        kind: ViolationKind::ResourceLimit,
        resource: refusal.resource(),
        message: refusal.to_string(),
    };
    // The guest gets the filesystem error; a revocation takes effect at the next epoch tick.
    let _answer = gov.refuse(refusal.op(), refusal_call).await;
}

/// wasmtime-wasi's `WasiView` over two fields of [`AgentCtx`], so that the governor and the
/// quota can be borrowed beside it.
struct WasiParts<'a> {
    ctx: &'a mut WasiCtx,
    table: &'a mut ResourceTable,
}

impl WasiView for WasiParts<'_> {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: self.ctx,
            table: self.table,
        }
    }
}

/// The view `wasi:filesystem/types` is implemented on: wasmtime-wasi's, the run's quota and
/// its governor.
pub(crate) struct WorkspaceFs<'a> {
    wasi: WasiParts<'a>,
    quota: &'a mut WorkspaceQuota,
    gov: &'a mut Governor,
}

/// [`HasData`] of [`WorkspaceFs`].
pub(crate) struct WorkspaceFsData;

impl HasData for WorkspaceFsData {
    type Data<'a> = WorkspaceFs<'a>;
}

/// The bytes between the end of `file` and `offset`, which a write at `offset` fills.
fn hole(file: &std::fs::File, offset: u64) -> std::io::Result<u64> {
    if offset == 0 {
        return Ok(0);
    }
    Ok(offset.saturating_sub(file.metadata()?.len()))
}

/// A borrowed handle of the same resource, to pass one descriptor to wasmtime-wasi twice.
fn borrow<T: 'static>(resource: &Resource<T>) -> Resource<T> {
    Resource::new_borrow(resource.rep())
}

impl WorkspaceFs<'_> {
    /// wasmtime-wasi's own view.
    fn fs(&mut self) -> WasiFilesystemCtxView<'_> {
        self.wasi.filesystem()
    }

    /// A refusal: recorded the first time of its limit in the run, then the guest's error.
    async fn refuse(&mut self, refusal: QuotaExceeded) -> FsError {
        let first = match refusal.limit() {
            Limit::Bytes => !self.quota.bytes.noted.swap(true, Ordering::AcqRel),
            Limit::Files => !std::mem::replace(&mut self.quota.files_recorded, true),
            Limit::Descriptors => !std::mem::replace(&mut self.quota.descriptors_recorded, true),
            Limit::Process => {
                tracing::warn!(agent = %self.gov.agent_id(), "{refusal}");
                false
            }
        };
        if first {
            record(self.gov, &refusal).await;
        }
        refusal.code().into()
    }

    /// Record a refused stream write still waiting for the governor.
    async fn flush_pending(&mut self) {
        if self.quota.bytes.noted.load(Ordering::Acquire) {
            record_pending(self.quota, self.gov).await;
        }
    }

    /// The file behind `fd` if the guest may write it (`None` for a directory, or a file it
    /// may not write, which wasmtime-wasi refuses by itself).
    fn writable_file(
        &self,
        fd: &Resource<types::Descriptor>,
    ) -> FsResult<Option<Arc<std::fs::File>>> {
        match self.wasi.table.get(fd)? {
            Descriptor::File(file)
                if !file.perms.write_not_permitted()
                    && file.open_mode.contains(OpenMode::WRITE) =>
            {
                Ok(Some(file.file.clone()))
            }
            Descriptor::File(_) | Descriptor::Dir(_) => Ok(None),
        }
    }

    /// Whether `fd` is a directory the guest may change.
    fn mutable_dir(&self, fd: &Resource<types::Descriptor>) -> FsResult<bool> {
        Ok(match self.wasi.table.get(fd)? {
            Descriptor::Dir(dir) => !dir.perms.write_not_permitted(),
            Descriptor::File(_) => false,
        })
    }

    /// Whether `path` under the directory `fd` exists (without following a final symlink).
    async fn exists(&mut self, fd: &Resource<types::Descriptor>, path: &str) -> bool {
        let stat = HostDescriptor::stat_at(
            &mut self.fs(),
            borrow(fd),
            types::PathFlags::empty(),
            path.to_string(),
        )
        .await;
        match stat {
            Ok(_) => true,
            // Anything but "no such entry" (a missing parent is one too) may still create it.
            Err(error) => !matches!(error.downcast_ref(), Some(ErrorCode::NoEntry)),
        }
    }

    /// Before a creation at `path` under the directory `fd`: whether it counts (the
    /// directory is writable), or the refusal when the workspace holds its `workspace_files`.
    async fn before_create(
        &mut self,
        op: &'static str,
        fd: &Resource<types::Descriptor>,
        path: &str,
    ) -> FsResult<bool> {
        self.flush_pending().await;
        if !self.mutable_dir(fd)? {
            return Ok(false);
        }
        if let Err(refusal) = self.quota.check_file(op, path) {
            return Err(self.refuse(refusal).await);
        }
        Ok(true)
    }

    /// After a creation that counts: one more entry if it succeeded.
    fn after_create<T>(&mut self, counts: bool, result: &FsResult<T>) {
        if counts && result.is_ok() {
            self.quota.files += 1;
        }
    }

    /// Wrap an output stream of a writable file in one that counts its bytes.
    fn counted(
        &mut self,
        stream: Resource<DynOutputStream>,
    ) -> FsResult<Resource<DynOutputStream>> {
        let inner = self.wasi.table.delete(stream)?;
        let counted: DynOutputStream = Box::new(CountingStream {
            inner,
            bytes: self.quota.bytes.clone(),
        });
        Ok(self.wasi.table.push(counted)?)
    }
}

impl types::Host for WorkspaceFs<'_> {
    fn convert_error_code(&mut self, err: FsError) -> wasmtime::Result<ErrorCode> {
        types::Host::convert_error_code(&mut self.fs(), err)
    }

    fn filesystem_error_code(
        &mut self,
        err: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        if let Some(refusal) = self.wasi.table.get(&err)?.downcast_ref::<QuotaExceeded>() {
            return Ok(Some(refusal.code()));
        }
        types::Host::filesystem_error_code(&mut self.fs(), err)
    }
}

impl HostDescriptor for WorkspaceFs<'_> {
    async fn advise(
        &mut self,
        fd: Resource<types::Descriptor>,
        offset: types::Filesize,
        len: types::Filesize,
        advice: types::Advice,
    ) -> FsResult<()> {
        HostDescriptor::advise(&mut self.fs(), fd, offset, len, advice).await
    }

    async fn sync_data(&mut self, fd: Resource<types::Descriptor>) -> FsResult<()> {
        HostDescriptor::sync_data(&mut self.fs(), fd).await
    }

    async fn get_flags(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<types::DescriptorFlags> {
        HostDescriptor::get_flags(&mut self.fs(), fd).await
    }

    async fn get_type(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<types::DescriptorType> {
        HostDescriptor::get_type(&mut self.fs(), fd).await
    }

    async fn set_size(
        &mut self,
        fd: Resource<types::Descriptor>,
        size: types::Filesize,
    ) -> FsResult<()> {
        self.flush_pending().await;
        let growth = match self.writable_file(&fd)? {
            Some(file) => size.saturating_sub(file.metadata()?.len()),
            None => 0,
        };
        if let Err(refusal) = self.quota.bytes.charge("filesystem.set-size", growth) {
            return Err(self.refuse(refusal).await);
        }
        let result = HostDescriptor::set_size(&mut self.fs(), fd, size).await;
        if result.is_err() {
            self.quota.bytes.refund(growth);
        }
        result
    }

    async fn set_times(
        &mut self,
        fd: Resource<types::Descriptor>,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        HostDescriptor::set_times(&mut self.fs(), fd, atim, mtim).await
    }

    async fn read(
        &mut self,
        fd: Resource<types::Descriptor>,
        len: types::Filesize,
        offset: types::Filesize,
    ) -> FsResult<(Vec<u8>, bool)> {
        HostDescriptor::read(&mut self.fs(), fd, len, offset).await
    }

    async fn write(
        &mut self,
        fd: Resource<types::Descriptor>,
        buf: Vec<u8>,
        offset: types::Filesize,
    ) -> FsResult<types::Filesize> {
        self.flush_pending().await;
        let wanted = buf.len() as u64;
        let charge = match self.writable_file(&fd)? {
            // The bytes, and the hole a write past the end opens.
            Some(file) => wanted.saturating_add(hole(&file, offset)?),
            None => 0,
        };
        if let Err(refusal) = self.quota.bytes.charge("filesystem.write", charge) {
            return Err(self.refuse(refusal).await);
        }
        let result = HostDescriptor::write(&mut self.fs(), fd, buf, offset).await;
        match &result {
            Ok(written) if charge > 0 => self.quota.bytes.refund(wanted.saturating_sub(*written)),
            Ok(_) => {}
            Err(_) => self.quota.bytes.refund(charge),
        }
        result
    }

    async fn read_directory(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<Resource<types::DirectoryEntryStream>> {
        HostDescriptor::read_directory(&mut self.fs(), fd).await
    }

    async fn sync(&mut self, fd: Resource<types::Descriptor>) -> FsResult<()> {
        HostDescriptor::sync(&mut self.fs(), fd).await
    }

    async fn create_directory_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path: String,
    ) -> FsResult<()> {
        let counts = self
            .before_create("filesystem.create-directory-at", &fd, &path)
            .await?;
        let result = HostDescriptor::create_directory_at(&mut self.fs(), fd, path).await;
        self.after_create(counts, &result);
        result
    }

    async fn stat(&mut self, fd: Resource<types::Descriptor>) -> FsResult<types::DescriptorStat> {
        HostDescriptor::stat(&mut self.fs(), fd).await
    }

    async fn stat_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::DescriptorStat> {
        HostDescriptor::stat_at(&mut self.fs(), fd, path_flags, path).await
    }

    async fn set_times_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        HostDescriptor::set_times_at(&mut self.fs(), fd, path_flags, path, atim, mtim).await
    }

    async fn link_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        old_path_flags: types::PathFlags,
        old_path: String,
        new_descriptor: Resource<types::Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        let counts = self
            .before_create("filesystem.link-at", &new_descriptor, &new_path)
            .await?;
        let result = HostDescriptor::link_at(
            &mut self.fs(),
            fd,
            old_path_flags,
            old_path,
            new_descriptor,
            new_path,
        )
        .await;
        self.after_create(counts, &result);
        result
    }

    async fn open_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        oflags: types::OpenFlags,
        flags: types::DescriptorFlags,
    ) -> FsResult<Resource<types::Descriptor>> {
        self.flush_pending().await;
        if let Err(refusal) = self.quota.acquire_descriptor(&path) {
            return Err(self.refuse(refusal).await);
        }
        // A creation counts only where the path does not exist yet (`std::fs::write` opens
        // an existing file with `create` every time).
        let creates = oflags.contains(types::OpenFlags::CREATE)
            && self.mutable_dir(&fd).unwrap_or(false)
            && (oflags.contains(types::OpenFlags::EXCLUSIVE) || !self.exists(&fd, &path).await);
        if creates && let Err(refusal) = self.quota.check_file("filesystem.open-at", &path) {
            self.quota.pool.release(1);
            return Err(self.refuse(refusal).await);
        }
        match HostDescriptor::open_at(&mut self.fs(), fd, path_flags, path, oflags, flags).await {
            Ok(opened) => {
                if creates {
                    self.quota.files += 1;
                }
                if !self.quota.open.insert(opened.rep()) {
                    // Not a new handle after all: it holds no second descriptor.
                    self.quota.pool.release(1);
                }
                Ok(opened)
            }
            Err(error) => {
                self.quota.pool.release(1);
                Err(error)
            }
        }
    }

    fn drop(&mut self, fd: Resource<types::Descriptor>) -> wasmtime::Result<()> {
        let rep = fd.rep();
        HostDescriptor::drop(&mut self.fs(), fd)?;
        if self.quota.open.remove(&rep) {
            self.quota.pool.release(1);
        }
        Ok(())
    }

    async fn readlink_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path: String,
    ) -> FsResult<String> {
        HostDescriptor::readlink_at(&mut self.fs(), fd, path).await
    }

    async fn remove_directory_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path: String,
    ) -> FsResult<()> {
        HostDescriptor::remove_directory_at(&mut self.fs(), fd, path).await
    }

    async fn rename_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        old_path: String,
        new_fd: Resource<types::Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        HostDescriptor::rename_at(&mut self.fs(), fd, old_path, new_fd, new_path).await
    }

    async fn symlink_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        src_path: String,
        dest_path: String,
    ) -> FsResult<()> {
        let counts = self
            .before_create("filesystem.symlink-at", &fd, &dest_path)
            .await?;
        // The target is stored in the link.
        let target = if counts { src_path.len() as u64 } else { 0 };
        if let Err(refusal) = self.quota.bytes.charge("filesystem.symlink-at", target) {
            return Err(self.refuse(refusal).await);
        }
        let result = HostDescriptor::symlink_at(&mut self.fs(), fd, src_path, dest_path).await;
        if result.is_err() {
            self.quota.bytes.refund(target);
        }
        self.after_create(counts, &result);
        result
    }

    async fn unlink_file_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path: String,
    ) -> FsResult<()> {
        HostDescriptor::unlink_file_at(&mut self.fs(), fd, path).await
    }

    fn read_via_stream(
        &mut self,
        fd: Resource<types::Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynInputStream>> {
        HostDescriptor::read_via_stream(&mut self.fs(), fd, offset)
    }

    fn write_via_stream(
        &mut self,
        fd: Resource<types::Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynOutputStream>> {
        let Some(file) = self.writable_file(&fd)? else {
            return HostDescriptor::write_via_stream(&mut self.fs(), fd, offset);
        };
        // The hole a stream starting past the end opens is counted when it is made.
        let hole = hole(&file, offset)?;
        if let Err(refusal) = self.quota.bytes.charge("filesystem.write-via-stream", hole) {
            self.quota.bytes.note_from_stream(&refusal);
            return Err(refusal.code().into());
        }
        match HostDescriptor::write_via_stream(&mut self.fs(), fd, offset) {
            Ok(stream) => self.counted(stream),
            Err(error) => {
                self.quota.bytes.refund(hole);
                Err(error)
            }
        }
    }

    fn append_via_stream(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<Resource<DynOutputStream>> {
        let writable = self.writable_file(&fd)?.is_some();
        let stream = HostDescriptor::append_via_stream(&mut self.fs(), fd)?;
        if writable {
            self.counted(stream)
        } else {
            Ok(stream)
        }
    }

    async fn is_same_object(
        &mut self,
        a: Resource<types::Descriptor>,
        b: Resource<types::Descriptor>,
    ) -> wasmtime::Result<bool> {
        HostDescriptor::is_same_object(&mut self.fs(), a, b).await
    }

    async fn metadata_hash(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<types::MetadataHashValue> {
        HostDescriptor::metadata_hash(&mut self.fs(), fd).await
    }

    async fn metadata_hash_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::MetadataHashValue> {
        HostDescriptor::metadata_hash_at(&mut self.fs(), fd, path_flags, path).await
    }
}

impl HostDirectoryEntryStream for WorkspaceFs<'_> {
    async fn read_directory_entry(
        &mut self,
        stream: Resource<types::DirectoryEntryStream>,
    ) -> FsResult<Option<types::DirectoryEntry>> {
        HostDirectoryEntryStream::read_directory_entry(&mut self.fs(), stream).await
    }

    fn drop(&mut self, stream: Resource<types::DirectoryEntryStream>) -> wasmtime::Result<()> {
        HostDirectoryEntryStream::drop(&mut self.fs(), stream)
    }
}

/// An output stream into a workspace file that counts what is written to it against the
/// run's [`ByteQuota`], and refuses a write past it whole.
struct CountingStream {
    inner: DynOutputStream,
    bytes: Arc<ByteQuota>,
}

impl CountingStream {
    fn charge(&self, len: usize) -> StreamResult<()> {
        self.bytes
            .charge("streams.write", len as u64)
            .map_err(|refusal| {
                self.bytes.note_from_stream(&refusal);
                StreamError::LastOperationFailed(wasmtime::Error::new(refusal))
            })
    }
}

#[async_trait::async_trait]
impl Pollable for CountingStream {
    async fn ready(&mut self) {
        self.inner.ready().await;
    }
}

#[async_trait::async_trait]
impl OutputStream for CountingStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.charge(bytes.len())?;
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }

    async fn blocking_write_and_flush(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.charge(bytes.len())?;
        self.inner.blocking_write_and_flush(bytes).await
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use wasmtime_wasi::p2::bindings::filesystem::preopens::Host as _;
    use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

    use super::*;
    use crate::capabilities::testing::{TestAgent, TestEnv};
    use crate::policy::{BUILTIN_TIERS_TOML, TierTable};
    use crate::tier::Tier;

    /// The built-in table with `key = value` among `[tiers.T3]`'s own keys.
    fn t3(keys: &[(&str, u64)]) -> TierTable {
        let (before, rest) = BUILTIN_TIERS_TOML.split_once("[tiers.T3]\n").unwrap();
        let (own, after) = rest.split_once("\n\n").unwrap();
        let own: Vec<String> = own
            .lines()
            .map(|line| {
                keys.iter()
                    .find(|(key, _)| line.starts_with(&format!("{key} =")))
                    .map_or(line.to_string(), |(key, value)| format!("{key} = {value}"))
            })
            .collect();
        let text = format!("{before}[tiers.T3]\n{}\n\n{after}", own.join("\n"));
        TierTable::from_toml_str(&text).unwrap()
    }

    /// A T3 agent whose workspace (a temporary directory holding `files`) is preopened
    /// writable, measured as at boot; and the preopen's descriptor.
    struct Workspace {
        agent: TestAgent,
        dir: tempfile::TempDir,
        root: Resource<Descriptor>,
    }

    async fn workspace(keys: &[(&str, u64)], files: &[(&str, usize)]) -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        for (name, len) in files {
            std::fs::write(dir.path().join(name), vec![b'x'; *len]).unwrap();
        }
        let mut agent = TestEnv::new()
            .tiers(t3(keys))
            .agent(Tier::Executor, json!({}))
            .await;
        let mut wasi = WasiCtxBuilder::new();
        wasi.preopened_dir(dir.path(), "/workspace", FsPerms::ReadWrite)
            .unwrap();
        agent.ctx.wasi = wasi.build();
        let policy = agent.services.tiers.policy(Tier::Executor);
        agent.ctx.quota = WorkspaceQuota::new(dir.path(), policy);
        let (root, _) = agent.ctx.filesystem().get_directories().unwrap().remove(0);
        Workspace { agent, dir, root }
    }

    impl Workspace {
        fn fs(&mut self) -> WorkspaceFs<'_> {
            view(&mut self.agent.ctx)
        }

        async fn open(
            &mut self,
            path: &str,
            oflags: types::OpenFlags,
            flags: types::DescriptorFlags,
        ) -> FsResult<Resource<Descriptor>> {
            let root = borrow(&self.root);
            HostDescriptor::open_at(
                &mut self.fs(),
                root,
                types::PathFlags::empty(),
                path.to_string(),
                oflags,
                flags,
            )
            .await
        }

        /// The workspace directory itself, once more.
        async fn open_root(&mut self) -> FsResult<Resource<Descriptor>> {
            self.open(".", types::OpenFlags::empty(), types::DescriptorFlags::READ)
                .await
        }

        /// A file for reading and writing, created if missing.
        async fn create(&mut self, path: &str) -> FsResult<Resource<Descriptor>> {
            let flags = types::DescriptorFlags::READ | types::DescriptorFlags::WRITE;
            self.open(path, types::OpenFlags::CREATE, flags).await
        }

        fn len(&self, path: &str) -> u64 {
            std::fs::metadata(self.dir.path().join(path)).unwrap().len()
        }
    }

    /// The filesystem error of a refused call.
    fn code<T>(result: FsResult<T>) -> ErrorCode {
        match result {
            Ok(_) => panic!("the call was allowed"),
            Err(error) => error.downcast().unwrap(),
        }
    }

    #[tokio::test]
    async fn open_descriptors_are_capped_and_closing_one_gives_it_back() {
        let mut ws = workspace(&[("descriptors", 2)], &[]).await;
        let first = ws.open_root().await.unwrap();
        let _second = ws.open_root().await.unwrap();
        for _ in 0..2 {
            assert_eq!(code(ws.open_root().await), ErrorCode::InsufficientMemory);
        }
        assert_eq!(ws.agent.ctx.quota.descriptors_open(), 2);
        HostDescriptor::drop(&mut ws.fs(), first).unwrap();
        assert_eq!(ws.agent.ctx.quota.descriptors_open(), 1);
        ws.open_root().await.unwrap();
        // Dropping the preopen (not opened by `open-at`) gives nothing back.
        let root = Resource::new_own(ws.root.rep());
        HostDescriptor::drop(&mut ws.fs(), root).unwrap();
        assert_eq!(ws.agent.ctx.quota.descriptors_open(), 2);
        // Refused twice, recorded and charged once.
        assert_eq!(ws.agent.violations(), ["RESOURCE_LIMIT"]);
        assert_eq!(ws.agent.errors().await.total, 1);
        let denied: Vec<String> = ws
            .agent
            .actions()
            .into_iter()
            .filter(|(_, decision, _)| decision == "denied")
            .map(|(action, _, _)| action)
            .collect();
        assert_eq!(denied, ["filesystem.open-at"]);
    }

    #[tokio::test]
    async fn the_process_pool_is_shared_and_a_dropped_store_gives_its_descriptors_back() {
        let pool = Arc::new(DescriptorPool::new(6, 3));
        let mut a = workspace(&[], &[]).await;
        let mut b = workspace(&[], &[]).await;
        a.agent.ctx.quota.pool = pool.clone();
        b.agent.ctx.quota.pool = pool.clone();
        a.open_root().await.unwrap();
        a.open_root().await.unwrap();
        b.open_root().await.unwrap();
        // `b` is far below its own limit, but the agents together hold the process's share.
        assert_eq!(code(b.open_root().await), ErrorCode::InsufficientMemory);
        // Not `b`'s fault: nothing recorded against it.
        assert!(b.agent.violations().is_empty());
        drop(a);
        assert_eq!(pool.held.load(Ordering::Acquire), 1);
        b.open_root().await.unwrap();
    }

    #[tokio::test]
    async fn writes_past_the_byte_quota_are_refused_whole() {
        let mut ws = workspace(&[("workspace_bytes", 100)], &[("old", 10)]).await;
        assert_eq!(ws.agent.ctx.quota.bytes_used(), 10, "measured at boot");
        let file = ws.create("f").await.unwrap();
        let write = async |ws: &mut Workspace, len: usize, offset: u64| {
            let fd = borrow(&file);
            HostDescriptor::write(&mut ws.fs(), fd, vec![b'a'; len], offset).await
        };
        assert_eq!(write(&mut ws, 50, 0).await.unwrap(), 50);
        // An overwrite counts again: 10 + 50 + 50 > 100.
        assert_eq!(code(write(&mut ws, 50, 0).await), ErrorCode::Quota);
        assert_eq!(ws.len("f"), 50, "nothing of a refused write is written");
        // A write past the end counts the hole it opens: 10 + 50 + 45 + 1 > 100.
        assert_eq!(code(write(&mut ws, 1, 95).await), ErrorCode::Quota);
        assert_eq!(ws.len("f"), 50);
        assert_eq!(write(&mut ws, 40, 0).await.unwrap(), 40);
        assert_eq!(ws.agent.ctx.quota.bytes_used(), 100);
        // Growing the file is writing; shrinking gives nothing back within the run.
        let fd = borrow(&file);
        assert_eq!(
            code(HostDescriptor::set_size(&mut ws.fs(), fd, 51).await),
            ErrorCode::Quota
        );
        let fd = borrow(&file);
        HostDescriptor::set_size(&mut ws.fs(), fd, 0).await.unwrap();
        assert_eq!(code(write(&mut ws, 1, 0).await), ErrorCode::Quota);
        assert_eq!(ws.agent.violations(), ["RESOURCE_LIMIT"]);
        assert_eq!(ws.agent.errors().await.total, 1);
    }

    #[tokio::test]
    async fn a_stream_write_past_the_quota_fails_and_is_recorded_when_the_guest_is_back() {
        let mut ws = workspace(&[("workspace_bytes", 4096)], &[]).await;
        let file = ws.create("f").await.unwrap();
        let fd = borrow(&file);
        let stream = HostDescriptor::write_via_stream(&mut ws.fs(), fd, 0).unwrap();
        let write = async |ws: &mut Workspace, len: usize| {
            let stream = ws.agent.ctx.table.get_mut(&stream).unwrap();
            stream
                .blocking_write_and_flush(Bytes::from(vec![b'a'; len]))
                .await
        };
        write(&mut ws, 4000).await.unwrap();
        let Err(StreamError::LastOperationFailed(error)) = write(&mut ws, 100).await else {
            panic!("a write past the quota was allowed");
        };
        assert!(
            error.to_string().contains("`tiers.T3.workspace_bytes`"),
            "{error}"
        );
        assert_eq!(ws.len("f"), 4000);
        // The guest asks what the error was: `quota`.
        let error = ws.agent.ctx.table.push(error).unwrap();
        assert_eq!(
            types::Host::filesystem_error_code(&mut ws.fs(), error).unwrap(),
            Some(ErrorCode::Quota)
        );
        // wasi:io/streams has no governor: recorded when the guest call returns.
        assert!(ws.agent.violations().is_empty());
        ws.agent.ctx.record_quota_refusal().await;
        assert_eq!(ws.agent.violations(), ["RESOURCE_LIMIT"]);
        write(&mut ws, 100).await.unwrap_err();
        ws.agent.ctx.record_quota_refusal().await;
        assert_eq!(ws.agent.violations(), ["RESOURCE_LIMIT"]);
        assert_eq!(ws.agent.errors().await.total, 1);
        // An append stream counts too.
        let fd = borrow(&file);
        let append = HostDescriptor::append_via_stream(&mut ws.fs(), fd).unwrap();
        let stream = ws.agent.ctx.table.get_mut(&append).unwrap();
        stream.write(Bytes::from(vec![b'a'; 97])).unwrap_err();
        assert_eq!(ws.agent.ctx.quota.bytes_used(), 4000);
    }

    #[tokio::test]
    async fn creations_count_against_the_file_quota() {
        let mut ws = workspace(&[("workspace_files", 3)], &[("old", 0)]).await;
        assert_eq!(ws.agent.ctx.quota.files_used(), 1, "measured at boot");
        let root = borrow(&ws.root);
        HostDescriptor::create_directory_at(&mut ws.fs(), root, "d".into())
            .await
            .unwrap();
        ws.create("f").await.unwrap();
        // Opening an existing path with `create` creates nothing.
        ws.create("f").await.unwrap();
        ws.create("old").await.unwrap();
        assert_eq!(ws.agent.ctx.quota.files_used(), 3);
        assert_eq!(code(ws.create("g").await), ErrorCode::Quota);
        let root = borrow(&ws.root);
        assert_eq!(
            code(HostDescriptor::create_directory_at(&mut ws.fs(), root, "e".into()).await),
            ErrorCode::Quota
        );
        let root = borrow(&ws.root);
        assert_eq!(
            code(HostDescriptor::symlink_at(&mut ws.fs(), root, "f".into(), "l".into()).await),
            ErrorCode::Quota
        );
        assert!(!ws.dir.path().join("g").exists());
        assert_eq!(ws.agent.violations(), ["RESOURCE_LIMIT"]);
    }

    #[test]
    fn the_boot_walk_counts_bytes_and_entries_follows_no_symlink_and_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f"), [0; 100]).unwrap();
        std::fs::write(dir.path().join("g"), [0; 20]).unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("big"), [0; 5000]).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let link_len = std::fs::symlink_metadata(dir.path().join("link"))
            .unwrap()
            .len();
        let measured = measure(dir.path(), 100);
        assert_eq!(
            (measured.bytes, measured.entries, measured.truncated),
            (120 + link_len, 5, false)
        );
        assert!(measure(dir.path(), 4).truncated);
    }

    #[test]
    fn a_workspace_over_its_file_quota_at_boot_counts_as_full() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a", "b", "c"] {
            std::fs::write(dir.path().join(name), [0; 1]).unwrap();
        }
        let table = t3(&[("workspace_files", 2)]);
        let quota = WorkspaceQuota::new(dir.path(), table.policy(Tier::Executor));
        assert_eq!(quota.bytes_used(), 64 << 20);
        assert!(quota.files_used() > 2);
        // A read-only workspace is not walked: nothing can grow it.
        let quota = WorkspaceQuota::new(dir.path(), table.policy(Tier::Operator));
        assert_eq!((quota.bytes_used(), quota.files_used()), (0, 0));
    }
}
