package commitlog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/semaphore"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/vfs"
)

// Directory layout:
//
//	<dir>/FERRY                    marker: identifies a ferry data directory
//	<dir>/LOCK                     flock'ed by the owning process; holds its PID
//	<dir>/wal/<segment id>.seg     the write-ahead log, 20-digit zero-padded IDs
//	<dir>/checkpoints/<seg>-<pos>.ckpt  state as of log position (seg, pos)
const (
	markerFile    = "FERRY"
	markerText    = "ferry data directory, format 1\n"
	lockFile      = "LOCK"
	walDir        = "wal"
	checkpointDir = "checkpoints"
	segSuffix     = ".seg"
	ckptSuffix    = ".ckpt"
	tmpSuffix     = ".tmp" // a file being written, renamed into place when durable
)

// Log is an embedded, durable, partitioned log: one write-ahead log per
// data directory shared by every topic and partition, written by one
// goroutine that group-commits all waiting appends with a single fsync.
//
// Lock order: Log.mu, then partition.mu. segment reference counts need no
// lock. The writer goroutine owns every field marked "writer".
type Log struct {
	cfg  cfg
	dir  string
	lock io.Closer

	mu          sync.RWMutex
	topics      map[string]*topic
	byID        map[uint32]*topic
	groups      map[string]map[groupKey]uint64
	nextTopicID uint32
	segs        map[uint32]*segment
	openSegs    atomic.Int32 // segment files open (see segcache.go)
	segClock    atomic.Int64 // orders segment uses, for the cache

	reqs        chan *request
	sendMu      sync.RWMutex        // held shared while sending on reqs, exclusively by Close (see enqueue)
	queueBytes  *semaphore.Weighted // budget of bytes held by queued appends
	stop        chan struct{}
	stopped     chan struct{}
	closed      atomic.Bool
	cleanerDone chan struct{}
	failed      atomic.Pointer[error]

	active     *segment // writer
	activeSize int64    // writer
	zeroedTo   int64    // writer: the active segment holds zeros from activeSize up to here (see zeroAhead)
	zeros      []byte   // writer: a block of zeros for zeroAhead
	dirty      bool     // writer: written since the last fsync
	lastFsync  int64    // writer: nanoseconds the last fsync took (with an Observer)
	wbuf       []byte   // writer
	scratch    writerScratch

	// The pipelined group commit (see pipeline.go); nil channels when
	// the durability is not DurabilityAlways.
	syncJobs   chan syncJob    // writer to flusher
	syncDone   chan syncResult // flusher to writer
	pipe       []inflight      // writer: groups written, waiting for an fsync, in write order
	writeSeq   uint64          // writer: groups handed to the flusher so far
	flushedSeq uint64          // writer: the last of them written and fsynced
	syncing    bool            // writer: an fsync is in flight
	freeBufs   [][]byte        // writer: buffers of groups acknowledged

	// The checkpoint chain (see checkpoint): the position of its newest
	// checkpoint (writer), the consumer offsets committed since (under
	// mu), and what the compactor weighs (atomics).
	ckHave       bool
	ckSeg        uint32
	ckPos        uint64
	ckOffsets    map[string]map[groupKey]bool
	ckBaseBytes  atomic.Int64
	ckDeltaBytes atomic.Int64
	ckDeltas     atomic.Int32
	ckKick       chan struct{}
	ckDone       chan struct{}

	recovery     Recovery
	lastReplayed int64      // recovery: the newest append time of the batches it replayed
	cleanMu      sync.Mutex // serializes cleaner runs
}

// Recovery reports what Open found and did.
type Recovery struct {
	// Checkpoint is the checkpoint file recovery started from ("" if none).
	Checkpoint string
	// SegmentsScanned and BytesScanned measure the log tail replayed.
	SegmentsScanned int
	BytesScanned    int64
	// TornFile and TornBytes describe an incomplete final batch that was
	// cut off: an append that was never acknowledged or, with
	// DurabilityInterval or DurabilityNone, what followed the last fsync
	// (which those modes may lose, acknowledged or not). Zeros at its end
	// count in ZeroTailBytes.
	TornFile  string
	TornBytes int64
	// ZeroTailBytes counts the zeros cut from the end of the last segment:
	// space the writer had zeroed ahead of its appends when the process
	// stopped without Close, or that a crash left. Never data.
	ZeroTailBytes int64
	// Repaired lists what WithRepair cut from a corrupt log.
	Repaired []string
}

func segName(id uint32) string { return fmt.Sprintf("%020d%s", id, segSuffix) }

func (l *Log) segPath(id uint32) string { return filepath.Join(l.dir, walDir, segName(id)) }

// Open opens (creating if needed) the log in dir. It takes the directory
// lock, loads the newest valid checkpoint and replays the log after it,
// cutting off a torn final batch. Corruption anywhere else stops it with
// an error naming the file and offset (see WithRepair).
func Open(ctx context.Context, dir string, opts ...Opt) (*Log, error) {
	c := defaultCfg()
	for _, o := range opts {
		o.apply(&c)
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	if c.readOnly {
		return openReadOnly(ctx, dir, c)
	}
	l := newLog(dir, c)
	if err := l.prepareDir(); err != nil {
		return nil, err
	}
	if err := l.recover(ctx); err != nil {
		l.closeFiles()
		return nil, err
	}
	l.reqs = make(chan *request, c.queueDepth)
	l.queueBytes = semaphore.NewWeighted(c.queueBytes)
	l.stop = make(chan struct{})
	l.stopped = make(chan struct{})
	l.cleanerDone = make(chan struct{})
	l.ckKick = make(chan struct{}, 1)
	l.ckDone = make(chan struct{})
	if c.durability == DurabilityAlways {
		l.syncJobs, l.syncDone = make(chan syncJob), make(chan syncResult, 1)
		go l.syncLoop()
	}
	go l.run()
	go l.runCleaner()
	go l.runCheckpointCompactor()
	return l, nil
}

func newLog(dir string, c cfg) *Log {
	return &Log{
		cfg:       c,
		dir:       dir,
		topics:    map[string]*topic{},
		byID:      map[uint32]*topic{},
		groups:    map[string]map[groupKey]uint64{},
		segs:      map[uint32]*segment{},
		ckOffsets: map[string]map[groupKey]bool{},
		// Topic IDs start at 1: 0 is the control topic.
		nextTopicID: 1,
	}
}

// readOnlyAttempts bounds how often a read-only Open lists the directory
// again because the owner changed it under the previous attempt.
const readOnlyAttempts = 20

// openReadOnly opens a log that another process may be writing. Its
// owner rolls segments, replaces checkpoints and deletes segments while
// this process lists and reads them: a file that vanished, or a
// checkpoint that no longer fits the listing, means the directory moved
// on, so recovery starts over with a fresh listing. (A bad batch at the
// end of the last segment is the end: see isTornTail.)
func openReadOnly(ctx context.Context, dir string, c cfg) (*Log, error) {
	var err error
	for range readOnlyAttempts {
		l := newLog(dir, c)
		if err = l.prepareDir(); err != nil {
			return nil, err
		}
		if err = l.recover(ctx); err == nil {
			return l, nil
		}
		l.closeFiles()
		if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, ferry.ErrCorrupt) || ctx.Err() != nil {
			return nil, err
		}
	}
	return nil, err
}

func (l *Log) prepareDir() error {
	fsys := l.cfg.fs
	marker := filepath.Join(l.dir, markerFile)
	_, err := fsys.Stat(marker)
	fresh := errors.Is(err, fs.ErrNotExist)
	switch {
	case err == nil:
	case fresh && l.cfg.readOnly:
		return fmt.Errorf("commitlog: %s is not a ferry data directory (no %s file): %w", l.dir, markerFile, ferry.ErrInvalidArgument)
	case fresh:
		names, _ := fsys.List(l.dir)
		for _, n := range names {
			// A directory whose initialization was interrupted holds only
			// these; anything else is somebody else's data.
			if n != lockFile && n != walDir && n != checkpointDir {
				return fmt.Errorf("commitlog: %s is not empty and is not a ferry data directory (no %s file; found %q): %w", l.dir, markerFile, n, ferry.ErrInvalidArgument)
			}
		}
	default:
		return fmt.Errorf("commitlog: open %s: %w", l.dir, err)
	}
	if l.cfg.readOnly {
		return nil
	}
	if err := fsys.MkdirAll(l.dir); err != nil {
		return fmt.Errorf("commitlog: create %s: %w", l.dir, err)
	}
	if fresh {
		// The directory's own entry must be durable too, or a power loss
		// could take back a log that acknowledged appends.
		if err := fsys.SyncDir(filepath.Dir(filepath.Clean(l.dir))); err != nil {
			return fmt.Errorf("commitlog: fsync the directory holding %s: %w", l.dir, err)
		}
	}
	lk, err := fsys.Lock(filepath.Join(l.dir, lockFile))
	if err != nil {
		if errors.Is(err, vfs.ErrLockHeld) {
			return fmt.Errorf("commitlog: %s is in use by process %s: %w", l.dir, l.lockHolder(), ferry.ErrLocked)
		}
		return fmt.Errorf("commitlog: lock %s: %w", l.dir, err)
	}
	l.lock = lk
	if err := l.initDir(fresh); err != nil {
		lk.Close()
		l.lock = nil
		return err
	}
	return nil
}

// initDir records the owner's PID and creates the layout. The marker is
// written last, so a directory without it was never fully initialized.
func (l *Log) initDir(fresh bool) error {
	fsys := l.cfg.fs
	if err := l.writeFileSynced(filepath.Join(l.dir, lockFile), []byte(strconv.Itoa(os.Getpid())+"\n"), false); err != nil {
		return err
	}
	for _, d := range []string{walDir, checkpointDir} {
		if err := fsys.MkdirAll(filepath.Join(l.dir, d)); err != nil {
			return fmt.Errorf("commitlog: create %s: %w", d, err)
		}
	}
	if fresh {
		return l.writeFileSynced(filepath.Join(l.dir, markerFile), []byte(markerText), true)
	}
	return nil
}

// lockHolder returns the PID written in the lock file, or "unknown".
func (l *Log) lockHolder() string {
	f, err := l.cfg.fs.Open(filepath.Join(l.dir, lockFile))
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	b := make([]byte, 32)
	n, _ := f.ReadAt(b, 0)
	if pid := strings.TrimSpace(string(b[:n])); pid != "" {
		return pid
	}
	return "unknown"
}

// writeFileSynced writes a whole file and fsyncs it (and, with syncDir,
// its directory, so that the file's existence is durable too).
func (l *Log) writeFileSynced(path string, data []byte, syncDir bool) error {
	fsys := l.cfg.fs
	f, err := fsys.Create(path)
	if err != nil {
		return fmt.Errorf("commitlog: create %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("commitlog: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("commitlog: fsync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("commitlog: close %s: %w", path, err)
	}
	if syncDir {
		if err := fsys.SyncDir(filepath.Dir(path)); err != nil {
			return fmt.Errorf("commitlog: fsync directory of %s: %w", path, err)
		}
	}
	return nil
}

// replaceFile makes path hold data, durably and atomically: it writes a
// temporary file, fsyncs it, renames it over path and fsyncs the
// directory. A crash at any point leaves path as it was or as data, never
// truncated (a checkpoint of the same name as the newest one is written
// whenever the log stops twice at one position).
func (l *Log) replaceFile(path string, data []byte) error {
	tmp := path + tmpSuffix
	if err := l.writeFileSynced(tmp, data, false); err != nil {
		return err
	}
	if err := l.cfg.fs.Rename(tmp, path); err != nil {
		return fmt.Errorf("commitlog: rename %s to %s: %w", tmp, path, err)
	}
	if err := l.cfg.fs.SyncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("commitlog: fsync directory of %s: %w", path, err)
	}
	return nil
}

// listSegments returns the segment IDs in the wal directory, ascending.
func (l *Log) listSegments() ([]uint32, error) {
	names, err := l.cfg.fs.List(filepath.Join(l.dir, walDir))
	if err != nil {
		return nil, fmt.Errorf("commitlog: list segments: %w", err)
	}
	var ids []uint32
	for _, n := range names {
		if !strings.HasSuffix(n, segSuffix) {
			continue
		}
		id, err := strconv.ParseUint(strings.TrimSuffix(n, segSuffix), 10, 32)
		if err != nil {
			return nil, fmt.Errorf("commitlog: unexpected file %s in %s: %w", n, walDir, ferry.ErrCorrupt)
		}
		ids = append(ids, uint32(id))
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids, nil
}

// Recovery returns what Open found and did.
func (l *Log) Recovery() Recovery { return l.recovery }

// Dir returns the data directory.
func (l *Log) Dir() string { return l.dir }

func (l *Log) closeFiles() {
	l.mu.Lock()
	// Wake every Fetch; it will see the log closed.
	for _, t := range l.topics {
		for _, p := range t.parts {
			p.mu.Lock()
			close(p.changed)
			p.changed = make(chan struct{})
			p.mu.Unlock()
		}
	}
	for id, s := range l.segs {
		delete(l.segs, id)
		s.remove()
	}
	l.mu.Unlock()
	if l.lock != nil {
		l.lock.Close()
		l.lock = nil
	}
}

// Close stops accepting appends, writes everything already queued, fsyncs,
// writes a checkpoint and releases the directory. Appends that arrive
// during or after Close fail with ferry.ErrClosed.
func (l *Log) Close() error {
	if !l.closed.CompareAndSwap(false, true) {
		return ferry.ErrClosed
	}
	var err error
	if !l.cfg.readOnly {
		close(l.stop)
		// Wait out senders that saw the log open: after this, nothing more
		// is queued.
		l.sendMu.Lock()
		l.sendMu.Unlock()
		<-l.stopped
		// The writer wrote what was queued when it saw stop; what was sent
		// after that is refused.
		for drained := false; !drained; {
			select {
			case r := <-l.reqs:
				r.err = ferry.ErrClosed
				r.finish()
			default:
				drained = true
			}
		}
		<-l.cleanerDone
		<-l.ckDone
		// A Clean called by the user may still be running: it fails at its
		// next request; its file removals must not interleave with ours.
		l.cleanMu.Lock()
		defer l.cleanMu.Unlock()
		if l.failedErr() == nil {
			err = l.trimZeroed()
			if err == nil {
				err = l.syncActive()
			}
			if err == nil {
				if cerr := l.writeCheckpoint(l.active.id, uint64(l.activeSize)); cerr != nil {
					l.cfg.logger.Warn("checkpoint on close failed", "err", cerr)
				}
			}
		} else {
			err = l.failedErr()
		}
	}
	l.closeFiles()
	return err
}

func (l *Log) failedErr() error {
	if p := l.failed.Load(); p != nil {
		return *p
	}
	return nil
}

// fail stops the log after a write or fsync error: nothing is acknowledged
// on top of a state that may not be on disk.
func (l *Log) fail(err error) error {
	err = fmt.Errorf("%w: %w", ferry.ErrLogFailed, err)
	l.failed.CompareAndSwap(nil, &err)
	l.cfg.logger.Error("log failed; reopen it to recover", "dir", l.dir, "err", err)
	return l.failedErr()
}
