package commitlog

import (
	"fmt"
	"time"
)

// The writer and the syncer form a two-stage pipeline. The writer
// goroutine routes, deduplicates, encodes and writes a group, then hands
// it to the syncer goroutine and goes on with the next group while the
// syncer fsyncs. The syncer takes every group handed to it so far, fsyncs
// once (an fsync covers every write that returned before it was called),
// then makes the groups visible and acknowledges them, in order. So the
// CPU work of a group overlaps the fsync of the one before, and a group
// that arrives during an fsync is on its way to disk when the fsync
// returns instead of only then being encoded.
//
// Invariants:
//   - a group is acknowledged (and readable) only after an fsync that
//     began after its write returned (DurabilityAlways), and after every
//     group written before it;
//   - responses keep append order: every data group, even one with nothing
//     to write (all duplicates, or a routing error), passes through the
//     syncer, so a duplicate is acknowledged only once its original is
//     durable;
//   - anything else the writer does (topic changes, a segment roll, a
//     checkpoint, a cleaner relocation, an explicit sync) first waits for
//     the syncer to finish every group handed to it (drain), so it sees
//     the state of everything written.

// pipelineDepth bounds the groups written but not yet acknowledged; each
// holds its encoded buffer until the syncer has applied it.
const pipelineDepth = 4

// written is a group the writer has written (or failed, or found nothing
// to write for), on its way to the syncer.
type written struct {
	g     []*request
	buf   []byte // the encoded batch (the buffer is reused across groups)
	wrote bool   // buf was written to seg at pos
	seg   *segment
	pos   int64
	live  int           // appends in g that were routed
	msgs  int           // messages written
	write time.Duration // the write call (with an Observer)
}

// startSyncer starts the syncer goroutine and fills the pool of pipeline
// slots.
func (l *Log) startSyncer() {
	l.pipe = make(chan *written, pipelineDepth)
	l.slots = make(chan *written, pipelineDepth)
	for range pipelineDepth {
		l.slots <- &written{}
	}
	l.syncerDone = make(chan struct{})
	go l.runSyncer()
}

// stopSyncer finishes every group handed to the syncer and stops it.
func (l *Log) stopSyncer() {
	l.drain()
	close(l.pipe)
	<-l.syncerDone
}

// slot returns a free pipeline slot, waiting while pipelineDepth groups
// are in flight.
func (l *Log) slot() *written { return <-l.slots }

// handOff passes a group to the syncer.
func (l *Log) handOff(w *written) {
	l.inflight.Add(1)
	l.pipe <- w
}

// drain waits until the syncer has finished every group handed to it.
// With DurabilityAlways everything written is then on disk.
func (l *Log) drain() {
	l.inflight.Wait()
	if l.cfg.durability == DurabilityAlways && l.failedErr() == nil {
		l.dirty = false
	}
}

func (l *Log) runSyncer() {
	defer close(l.syncerDone)
	var ws []*written
	for w := range l.pipe {
		ws = append(ws[:0], w)
	more:
		for {
			select {
			case w, ok := <-l.pipe:
				if !ok {
					break more
				}
				ws = append(ws, w)
			default:
				break more
			}
		}
		l.syncGroups(ws)
	}
}

// syncGroups fsyncs what ws wrote, then applies and acknowledges each in
// order. An fsync or apply error fails the log and every group not yet
// acknowledged.
func (l *Log) syncGroups(ws []*written) {
	err := l.failedErr()
	var fsync time.Duration
	if err == nil && l.cfg.durability == DurabilityAlways {
		// Groups between two drains share the active segment; sync each
		// distinct file all the same, in case that ever changes.
		var synced *segment
		for _, w := range ws {
			if !w.wrote || w.seg == synced {
				continue
			}
			t0 := time.Now()
			if serr := w.seg.f.Sync(); serr != nil {
				err = l.fail(fmt.Errorf("fsync %s: %w", w.seg.path, serr))
				break
			}
			fsync += time.Since(t0)
			synced = w.seg
		}
	}
	obs := l.cfg.observer
	for _, w := range ws {
		if w.wrote && err == nil {
			if aerr := l.apply(w.seg, w.pos, w.buf); aerr != nil {
				err = aerr
			}
		}
		if obs != nil && w.wrote && err == nil {
			obs.GroupCommit(w.live, w.msgs, len(w.buf), w.write+fsync, fsync)
			fsync = 0 // the groups after this one shared its fsync
			now := time.Now()
			for _, r := range w.g {
				if r.err == nil {
					obs.Appended(now.Sub(r.start))
				}
			}
		}
		respond(w.g, err)
		l.release(w)
		l.inflight.Done()
	}
}

// release returns a slot to the pool, keeping its buffers for reuse
// unless one huge batch grew them.
func (l *Log) release(w *written) {
	clear(w.g)
	buf := w.buf[:0]
	if cap(buf) > 2*l.cfg.maxGroupBytes {
		buf = nil
	}
	*w = written{g: w.g[:0], buf: buf}
	l.slots <- w
}

// apply makes a durable batch visible to readers. An error is a bug (the
// batch was encoded by this process): it fails the log rather than
// acknowledge something readers cannot see.
func (l *Log) apply(seg *segment, pos int64, buf []byte) error {
	h, err := decodeBatchHeaderUnchecked(buf)
	if err == nil {
		err = l.applyBatch(seg.id, uint32(pos), h, buf)
	}
	if err != nil {
		return l.fail(fmt.Errorf("apply batch at %s:%d: %w", seg.path, pos, err))
	}
	return nil
}
