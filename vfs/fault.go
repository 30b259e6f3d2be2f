package vfs

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Op names a filesystem operation, for fault injection.
type Op int

// The operations FaultFS can fail. The mutating ones (see Op.Mutates) are
// the crash points counted by CrashAt.
const (
	OpCreate Op = iota
	OpOpen
	OpRemove
	OpRename
	OpMkdir
	OpList
	OpSyncDir
	OpLock
	OpStat
	OpWrite
	OpRead
	OpSync
	OpTruncate
	OpClose
	OpSeek
	OpSize
)

var opNames = [...]string{"create", "open", "remove", "rename", "mkdir", "list", "syncdir", "lock", "stat", "write", "read", "sync", "truncate", "close", "seek", "size"}

// String returns the operation's name, e.g. "fsync".
func (o Op) String() string {
	if int(o) < len(opNames) {
		return opNames[o]
	}
	return fmt.Sprintf("op(%d)", int(o))
}

// Mutates reports whether the operation changes what is on disk.
func (o Op) Mutates() bool {
	switch o {
	case OpCreate, OpRemove, OpRename, OpSyncDir, OpWrite, OpSync, OpTruncate:
		return true
	}
	return false
}

// Injected errors, as a disk would report them.
var (
	EIO    error = syscall.EIO
	ENOSPC error = syscall.ENOSPC
	// ErrCrashed is returned by every operation after a crash: the process
	// that issued it no longer exists as far as the disk is concerned.
	ErrCrashed = errors.New("vfs: crashed")
)

// Injector decides whether an operation fails: it returns the error to
// inject, or nil. seq is the operation's sequence number among mutating
// operations (0 for the others).
type Injector func(op Op, path string, seq int64) error

// FaultFS wraps an FS and injects faults: errors chosen by an Injector, torn
// writes (a failed write leaves a prefix behind), slow fsync, and crashes
// that keep only what a power loss would (when the inner FS is a *MemFS).
type FaultFS struct {
	inner FS

	// mu is held shared by every operation while it runs and exclusively by
	// a crash, so a crash clone never misses an operation that has already
	// reported success, and no operation succeeds after it.
	mu        sync.RWMutex
	crashed   bool
	clone     *MemFS
	crashRand *rand.Rand

	seq       atomic.Int64 // mutating operations started
	crashAt   atomic.Int64 // crash when seq reaches this (0: never)
	injector  atomic.Pointer[Injector]
	syncDelay atomic.Int64 // nanoseconds
	tearMu    sync.Mutex
	tear      *rand.Rand
}

// NewFaultFS wraps inner.
func NewFaultFS(inner FS) *FaultFS { return &FaultFS{inner: inner} }

// SetInjector installs fn (nil removes it).
func (f *FaultFS) SetInjector(fn Injector) {
	if fn == nil {
		f.injector.Store(nil)
		return
	}
	f.injector.Store(&fn)
}

// SetSyncDelay makes every Sync and SyncDir wait d first.
func (f *FaultFS) SetSyncDelay(d time.Duration) { f.syncDelay.Store(int64(d)) }

// TearWrites makes each failed Write leave a random prefix of its data
// behind, as a real disk may. rng nil turns it off.
func (f *FaultFS) TearWrites(rng *rand.Rand) {
	f.tearMu.Lock()
	f.tear = rng
	f.tearMu.Unlock()
}

// CrashAt arranges a crash just before the n-th mutating operation (n >= 1)
// runs; that operation and all later ones fail with ErrCrashed. rng shapes
// the clone as in MemFS.CrashClone.
func (f *FaultFS) CrashAt(n int64, rng *rand.Rand) {
	f.mu.Lock()
	f.crashRand = rng
	f.mu.Unlock()
	f.crashAt.Store(n)
}

// Crash crashes now and returns the filesystem left behind. Every later
// operation fails with ErrCrashed. It panics if the inner FS is not a MemFS.
func (f *FaultFS) Crash(rng *rand.Rand) *MemFS {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.crashLocked(rng)
	return f.clone
}

func (f *FaultFS) crashLocked(rng *rand.Rand) {
	if f.crashed {
		return
	}
	m, ok := f.inner.(*MemFS)
	if !ok {
		panic("vfs: FaultFS.Crash needs a *MemFS inside")
	}
	f.clone = m.CrashClone(rng)
	f.crashed = true
}

// Crashed returns the filesystem left by a crash, or nil if none happened.
func (f *FaultFS) Crashed() *MemFS {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.clone
}

// MutatingOps returns how many mutating operations have started.
func (f *FaultFS) MutatingOps() int64 { return f.seq.Load() }

// begin runs before every operation. On success the caller must call the
// returned release when the operation is done.
func (f *FaultFS) begin(op Op, path string) (release func(), err error) {
	f.mu.RLock()
	if f.crashed {
		f.mu.RUnlock()
		return nil, &os.PathError{Op: op.String(), Path: path, Err: ErrCrashed}
	}
	var seq int64
	if op.Mutates() {
		seq = f.seq.Add(1)
		if at := f.crashAt.Load(); at > 0 && seq >= at {
			f.mu.RUnlock()
			f.mu.Lock()
			f.crashLocked(f.crashRand)
			f.mu.Unlock()
			return nil, &os.PathError{Op: op.String(), Path: path, Err: ErrCrashed}
		}
	}
	if inj := f.injector.Load(); inj != nil {
		if err := (*inj)(op, path, seq); err != nil {
			f.mu.RUnlock()
			return nil, &os.PathError{Op: op.String(), Path: path, Err: err}
		}
	}
	if op == OpSync || op == OpSyncDir {
		if d := time.Duration(f.syncDelay.Load()); d > 0 {
			time.Sleep(d)
		}
	}
	return f.mu.RUnlock, nil
}

var _ FS = (*FaultFS)(nil)

func (f *FaultFS) wrap(file File, path string, err error) (File, error) {
	if err != nil {
		return nil, err
	}
	return &faultFile{fs: f, f: file, path: path}, nil
}

// Create implements FS.
func (f *FaultFS) Create(name string) (File, error) {
	done, err := f.begin(OpCreate, name)
	if err != nil {
		return nil, err
	}
	defer done()
	file, err := f.inner.Create(name)
	return f.wrap(file, name, err)
}

// OpenRW implements FS.
func (f *FaultFS) OpenRW(name string) (File, error) {
	done, err := f.begin(OpOpen, name)
	if err != nil {
		return nil, err
	}
	defer done()
	file, err := f.inner.OpenRW(name)
	return f.wrap(file, name, err)
}

// Open implements FS.
func (f *FaultFS) Open(name string) (File, error) {
	done, err := f.begin(OpOpen, name)
	if err != nil {
		return nil, err
	}
	defer done()
	file, err := f.inner.Open(name)
	return f.wrap(file, name, err)
}

func (f *FaultFS) do(op Op, path string, fn func() error) error {
	done, err := f.begin(op, path)
	if err != nil {
		return err
	}
	defer done()
	return fn()
}

// Remove implements FS.
func (f *FaultFS) Remove(name string) error {
	return f.do(OpRemove, name, func() error { return f.inner.Remove(name) })
}

// Rename implements FS.
func (f *FaultFS) Rename(oldname, newname string) error {
	return f.do(OpRename, oldname, func() error { return f.inner.Rename(oldname, newname) })
}

// MkdirAll implements FS.
func (f *FaultFS) MkdirAll(dir string) error {
	return f.do(OpMkdir, dir, func() error { return f.inner.MkdirAll(dir) })
}

// List implements FS.
func (f *FaultFS) List(dir string) (names []string, err error) {
	err = f.do(OpList, dir, func() error { names, err = f.inner.List(dir); return err })
	return names, err
}

// SyncDir implements FS.
func (f *FaultFS) SyncDir(dir string) error {
	return f.do(OpSyncDir, dir, func() error { return f.inner.SyncDir(dir) })
}

// Lock implements FS.
func (f *FaultFS) Lock(name string) (l io.Closer, err error) {
	err = f.do(OpLock, name, func() error { l, err = f.inner.Lock(name); return err })
	return l, err
}

// Stat implements FS.
func (f *FaultFS) Stat(name string) (fi os.FileInfo, err error) {
	err = f.do(OpStat, name, func() error { fi, err = f.inner.Stat(name); return err })
	return fi, err
}

type faultFile struct {
	fs   *FaultFS
	f    File
	path string
}

func (ff *faultFile) Write(p []byte) (int, error) {
	done, err := ff.fs.begin(OpWrite, ff.path)
	if err != nil {
		ff.fs.tearMu.Lock()
		tear := ff.fs.tear
		var n int
		if tear != nil && len(p) > 0 && !errors.Is(err, ErrCrashed) {
			n = tear.IntN(len(p))
		}
		ff.fs.tearMu.Unlock()
		if n > 0 {
			// Torn write: part of the data reaches the file, then the error.
			ff.f.Write(p[:n])
		}
		return n, err
	}
	defer done()
	return ff.f.Write(p)
}

func (ff *faultFile) ReadAt(p []byte, off int64) (n int, err error) {
	err = ff.fs.do(OpRead, ff.path, func() error { n, err = ff.f.ReadAt(p, off); return err })
	return n, err
}

func (ff *faultFile) Close() error {
	// Closing always releases the inner handle, even after a crash.
	err := ff.f.Close()
	if _, berr := ff.fs.begin(OpClose, ff.path); berr != nil {
		return berr
	} else {
		ff.fs.mu.RUnlock()
	}
	return err
}

func (ff *faultFile) Sync() error {
	return ff.fs.do(OpSync, ff.path, ff.f.Sync)
}

func (ff *faultFile) Truncate(size int64) error {
	return ff.fs.do(OpTruncate, ff.path, func() error { return ff.f.Truncate(size) })
}

func (ff *faultFile) Size() (n int64, err error) {
	err = ff.fs.do(OpSize, ff.path, func() error { n, err = ff.f.Size(); return err })
	return n, err
}

func (ff *faultFile) Seek(offset int64, whence int) (n int64, err error) {
	err = ff.fs.do(OpSeek, ff.path, func() error { n, err = ff.f.Seek(offset, whence); return err })
	return n, err
}
