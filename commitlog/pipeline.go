package commitlog

import (
	"fmt"
	"runtime"
	"slices"
	"time"

	"github.com/ferrymq/ferry/vfs"
)

// The pipelined group commit (DurabilityAlways). The writer encodes a
// group and hands it to the flusher goroutine, which writes it and fsyncs
// it; meanwhile the writer collects and encodes the next group, so its CPU
// work (routing, the dedup window, encoding, CRCs) runs beside the disk's
// instead of between fsyncs. A group is applied (made visible) and
// acknowledged once its fsync returned.
//
// What reaches the disk is what it was without the pipeline: one batch
// written, then fsynced, then the next. Never two batches between two
// fsyncs: a power loss could then keep the later one and tear the earlier,
// which recovery must refuse as corruption (a bad batch followed by a
// valid write) rather than cut as a torn tail.
//
// The writer owns every piece of state: it assigns a group's position and
// plans its zeros ahead when it encodes it; the flusher only writes what
// it is given, in order, and reports back. Anything that is not a group of
// appends (a control batch, a roll, a checkpoint, an explicit sync, a
// cleaner's batch, Close) first drains the pipeline, so it runs with
// nothing in flight, as it did before.

// maxInflightGroups is the default bound of the groups encoded and not
// yet durable: one being written and fsynced, one ready behind it. When
// both are taken, requests wait in the queue, and the next group collects
// all of them.
const maxInflightGroups = 2

// pipelineAheadBytes is the smallest group encoded while the fsync of the
// last runs: a smaller one (a few synchronous callers) waits for that
// fsync and collects the callers it acknowledges (see Log.run).
const pipelineAheadBytes = 64 << 10

// inflight is a group encoded and not yet durable. A group with no bytes
// (every message a duplicate of one in flight) waits for the fsync of
// what it duplicates.
type inflight struct {
	g          []*request
	seq        uint64 // the write it waits for (see Log.writeSeq)
	seg, pos   uint32
	buf        []byte // nil for a group with nothing to write
	zeroFrom   int64  // zeros to write ahead first, [zeroFrom, zeroTo) (see zeroAhead)
	zeroTo     int64
	live, msgs int
	t0         time.Time // when it was handed on (with an Observer)
}

// syncJob asks the flusher to write a group at pos of f and fsync f.
type syncJob struct {
	f                vfs.File
	path             string
	seq              uint64
	buf              []byte
	pos              int64
	zeroFrom, zeroTo int64
}

// syncResult is the flusher's report of a syncJob.
type syncResult struct {
	seq  uint64
	err  error
	took time.Duration // the fsync's
}

// syncLoop is the flusher.
func (l *Log) syncLoop() {
	var zeros []byte
	for j := range l.syncJobs {
		r := syncResult{seq: j.seq}
		if j.zeroTo > j.zeroFrom {
			if zeros == nil {
				zeros = make([]byte, zeroBlock)
			}
			r.err = writeZeros(j.f, j.path, zeros, j.zeroFrom, j.zeroTo, j.pos)
		}
		if r.err == nil {
			if _, err := j.f.Write(j.buf); err != nil {
				r.err = fmt.Errorf("write %s at %d: %w", j.path, j.pos, err)
			}
		}
		if r.err == nil {
			t0 := time.Now()
			if err := j.f.Sync(); err != nil {
				r.err = fmt.Errorf("fsync %s: %w", j.path, err)
			}
			r.took = time.Since(t0)
		}
		l.syncDone <- r
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
	if b != nil && cap(b) <= 2*l.cfg.maxGroupBytes && len(l.freeBufs) < l.cfg.maxInflight {
		l.freeBufs = append(l.freeBufs, b)
	}
}

// writeGroup gives the encoded group g its place in the active segment
// and queues it for the flusher; it is acknowledged in synced. buf is the
// pipeline's from now on.
func (l *Log) writeGroup(g []*request, buf []byte, live, msgs int) {
	if int64(len(buf)) > l.cfg.segmentBytes-batchHeaderSize {
		// See writeBatch.
		l.refuseInOrder(g, l.fail(fmt.Errorf("commitlog: bug: group of %d bytes exceeds the segment size %d", len(buf), l.cfg.segmentBytes)))
		l.putBuf(buf)
		return
	}
	if l.activeSize > 0 && l.activeSize+int64(len(buf)) > l.cfg.segmentBytes {
		l.drainPipe()
		err := l.failedErr()
		if err == nil {
			if err = l.roll(); err != nil {
				err = l.fail(err)
			}
		}
		if err != nil {
			respond(g, err) // nothing is in flight now
			l.putBuf(buf)
			return
		}
	}
	var t0 time.Time
	if l.cfg.observer != nil {
		t0 = time.Now()
	}
	pos := l.activeSize
	zeroFrom, zeroTo := l.planZeroAhead(len(buf))
	l.activeSize += int64(len(buf))
	l.dirty = true
	l.writeSeq++
	l.pipe = append(l.pipe, inflight{g: slices.Clone(g), seq: l.writeSeq, seg: l.active.id, pos: uint32(pos), buf: buf,
		zeroFrom: zeroFrom, zeroTo: zeroTo, live: live, msgs: msgs, t0: t0})
	l.kickSync()
}

// refuseInOrder answers every request of g with err (unless it has an
// error of its own) after the groups in flight, so that promises are
// called in append order.
func (l *Log) refuseInOrder(g []*request, err error) {
	for _, r := range g {
		if r.err == nil {
			r.err = err
		}
	}
	l.awaitInflight(g)
}

// awaitInflight queues g, whose messages were all duplicates (or whose
// requests were all refused), to be answered once the groups in flight
// are: at once if none is. A duplicate's original may be among them, and
// promises are called in append order.
func (l *Log) awaitInflight(g []*request) {
	if len(l.pipe) == 0 && !l.syncing {
		respond(g, nil)
		return
	}
	l.pipe = append(l.pipe, inflight{g: slices.Clone(g), seq: l.writeSeq})
	l.kickSync()
}

// kickSync hands the flusher the next group to write, if it is idle.
func (l *Log) kickSync() {
	if l.syncing {
		return
	}
	for _, e := range l.pipe {
		if e.seq > l.flushedSeq && e.buf != nil {
			l.syncing = true
			l.syncJobs <- syncJob{f: l.active.f, path: l.active.path, seq: e.seq, buf: e.buf, pos: int64(e.pos), zeroFrom: e.zeroFrom, zeroTo: e.zeroTo}
			return
		}
	}
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
		failed = l.fail(r.err)
	}
	if failed != nil {
		// Nothing more is acknowledged: what the fsync covered may be
		// durable, and reopening decides (an error does not say the
		// append was not written, as with any failed write).
		l.refusePipe(failed)
		return 0
	}
	l.flushedSeq = r.seq
	if r.seq == l.writeSeq {
		l.dirty = false
	}
	n, acked := 0, 0
	for _, e := range l.pipe {
		if e.seq > r.seq {
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
		l.observeCommit(e.g, e.live, e.msgs, len(e.buf), e.t0, fsync, err)
	}
	respond(e.g, err)
	l.putBuf(e.buf)
}

// refusePipe answers every group in the pipeline with err, in order, and
// empties it.
func (l *Log) refusePipe(err error) {
	for _, e := range l.pipe {
		respond(e.g, err)
		l.putBuf(e.buf)
	}
	clear(l.pipe)
	l.pipe = l.pipe[:0]
}

// drainPipe waits until every group handed on is durable and
// acknowledged.
func (l *Log) drainPipe() {
	for len(l.pipe) > 0 || l.syncing {
		l.kickSync()
		if !l.syncing {
			// Entries with nothing left to flush: cannot happen.
			l.refusePipe(l.fail(fmt.Errorf("commitlog: bug: %d groups in the pipeline and none to write", len(l.pipe))))
			return
		}
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
