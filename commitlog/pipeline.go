package commitlog

import (
	"fmt"
	"runtime"
	"slices"
	"time"

	"github.com/ferrymq/ferry/vfs"
)

// The pipelined group commit (DurabilityAlways). The writer writes a
// group and hands the fsync to the syncer goroutine, then goes on to
// collect, encode and write the next group while the disk works; a group
// is applied (made visible) and acknowledged once an fsync that began
// after its write returned. One fsync is in flight at a time, and it
// covers every group written before it began, so under load each fsync
// takes what was written while the previous one ran: the disk is kept
// busy, and the writer's CPU work (encoding, CRCs, the dedup window) runs
// beside it instead of between fsyncs.
//
// The writer still owns every piece of state: the syncer only calls Sync
// on the file it is given and reports back. Anything that is not a group
// of appends (a control batch, a roll, a checkpoint, an explicit sync, a
// cleaner's batch, Close) first drains the pipeline, so it runs with
// nothing in flight, as it did before.

// maxInflightGroups is the default bound of the groups written and
// waiting for an fsync (and so of the buffers held for them).
const maxInflightGroups = 4

// inflight is a group written to the active segment and not yet fsynced.
// A group with no bytes (every message a duplicate of one in flight)
// waits for the fsync of what it duplicates.
type inflight struct {
	g          []*request
	seq        uint64 // the write it waits for (see Log.writeSeq)
	seg, pos   uint32
	buf        []byte // nil for a group with nothing to write
	live, msgs int
	t0         time.Time // when its write began (with an Observer)
}

// syncJob asks the syncer to fsync f, which holds every write up to upTo.
type syncJob struct {
	f    vfs.File
	upTo uint64
}

// syncResult is the syncer's report of a syncJob.
type syncResult struct {
	upTo uint64
	err  error
	took time.Duration
}

// syncLoop is the syncer.
func (l *Log) syncLoop() {
	for j := range l.syncJobs {
		t0 := time.Now()
		err := j.f.Sync()
		l.syncDone <- syncResult{upTo: j.upTo, err: err, took: time.Since(t0)}
	}
}

// pipelined reports whether group commits go through the pipeline.
func (l *Log) pipelined() bool { return l.syncJobs != nil }

// takeBuf returns a buffer to encode a group into.
func (l *Log) takeBuf() []byte {
	if n := len(l.freeBufs); n > 0 {
		b := l.freeBufs[n-1]
		l.freeBufs = l.freeBufs[:n-1]
		return b[:0]
	}
	return nil
}

// putBuf keeps b for a later group, unless one huge batch grew it.
func (l *Log) putBuf(b []byte) {
	if b != nil && cap(b) <= 2*l.cfg.maxGroupBytes && len(l.freeBufs) <= l.cfg.maxInflight {
		l.freeBufs = append(l.freeBufs, b)
	}
}

// writeGroup writes the encoded group g and queues it for the syncer; it
// is acknowledged in synced. buf is the pipeline's from now on.
func (l *Log) writeGroup(g []*request, buf []byte, live, msgs int) {
	if int64(len(buf)) > l.cfg.segmentBytes-batchHeaderSize {
		// See writeBatch.
		respond(g, l.fail(fmt.Errorf("commitlog: bug: group of %d bytes exceeds the segment size %d", len(buf), l.cfg.segmentBytes)))
		return
	}
	if l.activeSize > 0 && l.activeSize+int64(len(buf)) > l.cfg.segmentBytes {
		l.drainPipe()
		if err := l.failedErr(); err != nil {
			respond(g, err)
			return
		}
		if err := l.roll(); err != nil {
			respond(g, l.fail(err))
			return
		}
	}
	var t0 time.Time
	if l.cfg.observer != nil {
		t0 = time.Now()
	}
	pos := l.activeSize
	if err := l.zeroAhead(len(buf)); err != nil {
		respond(g, l.fail(err))
		return
	}
	if _, err := l.active.f.Write(buf); err != nil {
		respond(g, l.fail(fmt.Errorf("write %s at %d: %w", l.active.path, pos, err)))
		return
	}
	l.activeSize += int64(len(buf))
	l.dirty = true
	l.writeSeq++
	l.pipe = append(l.pipe, inflight{g: slices.Clone(g), seq: l.writeSeq, seg: l.active.id, pos: uint32(pos), buf: buf, live: live, msgs: msgs, t0: t0})
	l.kickSync()
}

// awaitInflight queues g, whose messages were all duplicates, to be
// acknowledged once what it duplicates is durable: at once if nothing is
// in flight.
func (l *Log) awaitInflight(g []*request) {
	if len(l.pipe) == 0 && !l.syncing {
		respond(g, nil)
		return
	}
	l.pipe = append(l.pipe, inflight{g: slices.Clone(g), seq: l.writeSeq})
	l.kickSync()
}

// kickSync starts an fsync of what was written if none is in flight.
func (l *Log) kickSync() {
	if l.syncing || len(l.pipe) == 0 {
		return
	}
	l.syncing = true
	l.syncJobs <- syncJob{f: l.active.f, upTo: l.writeSeq}
}

// synced takes the syncer's report: the groups its fsync covered are
// applied and acknowledged, in the order they were written, and the next
// fsync starts if more was written meanwhile. It returns how many callers
// it acknowledged.
func (l *Log) synced(r syncResult) int {
	l.syncing = false
	if l.cfg.observer != nil {
		l.lastFsync = int64(r.took)
	}
	failed := l.failedErr()
	if r.err != nil {
		failed = l.fail(fmt.Errorf("fsync %s: %w", l.active.path, r.err))
	}
	if failed != nil {
		// Nothing more is acknowledged: what the fsync covered may be
		// durable, and reopening decides (an error does not say the
		// append was not written, as with any failed write).
		for _, e := range l.pipe {
			respond(e.g, failed)
			l.putBuf(e.buf)
		}
		clear(l.pipe)
		l.pipe = l.pipe[:0]
		return 0
	}
	if r.upTo == l.writeSeq {
		l.dirty = false
	}
	n, acked := 0, 0
	for _, e := range l.pipe {
		if e.seq > r.upTo {
			break
		}
		acked += waiters(e.g)
		l.complete(e, r.took)
		n++
	}
	rest := copy(l.pipe, l.pipe[n:])
	clear(l.pipe[rest:])
	l.pipe = l.pipe[:rest]
	l.kickSync()
	return acked
}

// complete applies a group the fsync made durable and acknowledges it.
func (l *Log) complete(e inflight, fsync time.Duration) {
	var err error
	if e.buf != nil {
		var h batchHeader
		h, err = decodeBatchHeaderUnchecked(e.buf)
		if err == nil {
			err = l.applyBatch(e.seg, e.pos, h, e.buf)
		}
		if err != nil {
			// See writeBatch.
			err = l.fail(fmt.Errorf("apply batch at segment %d:%d: %w", e.seg, e.pos, err))
		}
		if obs := l.cfg.observer; obs != nil {
			done := time.Now()
			obs.GroupCommit(e.live, e.msgs, len(e.buf), done.Sub(e.t0), fsync)
			for _, r := range e.g {
				if r.err == nil && err == nil {
					obs.Appended(done.Sub(r.start))
				}
			}
		}
	}
	respond(e.g, err)
	l.putBuf(e.buf)
}

// drainPipe waits until every group written is durable and acknowledged.
func (l *Log) drainPipe() {
	for len(l.pipe) > 0 || l.syncing {
		l.kickSync()
		l.synced(<-l.syncDone)
	}
}

// takeSynced acknowledges what an fsync that finished made durable,
// without waiting, and lets the callers run (most append again at once,
// and belong in the next group).
func (l *Log) takeSynced() {
	select {
	case r := <-l.syncDone:
		if l.synced(r) > 1 {
			runtime.Gosched()
		}
	default:
	}
}
