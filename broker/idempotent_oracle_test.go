package broker_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferrymq/ferry/commitlog"
)

// The idempotent producer against an oracle: seeded random sequences of
// what clients do (the next batch, a retry of an acknowledged one, a batch
// after a gap, pipelined pairs with a gap, in order, and a retry of one
// still being written, epoch bumps local and by InitProducerId) mixed with
// restarts of the server, from two producers into one partition. After
// every step the partition must hold exactly the batches acknowledged,
// each once, in the order acknowledged; a refusal writes nothing; a
// DUPLICATE_SEQUENCE_NUMBER answer is given only for a batch in the log;
// and what must progress does: the batch after an acknowledged one (no
// restart between), and sequence 0 of a new epoch. A failure prints the
// seed and the steps; FERRY_ORACLE_SEEDS runs more seeds.
func TestIdempotentProducerOracle(t *testing.T) {
	seeds := 30
	if testing.Short() {
		seeds = 5
	}
	if v, err := strconv.Atoi(os.Getenv("FERRY_ORACLE_SEEDS")); err == nil {
		seeds = v
	}
	for seed := range uint64(seeds) {
		runIdempotentOracle(t, seed, 60)
		if t.Failed() {
			return
		}
	}
}

type oracleBatch struct {
	epoch int16
	seq   int32
	vals  []string
	base  int64
}

type oracleProducer struct {
	pid   int64
	epoch int16
	next  int32
	acked []oracleBatch // in the current epoch, in order
	// mustTake: the next batch at next must be written (the one before
	// was acknowledged in this run, or the epoch began in it).
	mustTake bool
	// seen: the server got a batch of this producer since it started; only
	// then can it tell that a local epoch bump begins a new epoch (after a
	// restart the client needs one bump more).
	seen bool
}

func runIdempotentOracle(t *testing.T, seed uint64, steps int) {
	rng := rand.New(rand.NewPCG(seed, 0x6f7261636c65))
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg := commitlog.TopicConfig{Partitions: 1}
	switch seed % 3 {
	case 1: // no dedup window: the log cannot answer for an unknown producer
		cfg.DedupWindow = -1
	case 2: // a window that forgets fast
		cfg.DedupMaxIDs = 4
	}
	if err := tb.log.CreateTopic(ctx, "t", cfg); err != nil {
		t.Fatal(err)
	}
	cl := tb.client()
	var log []string // the values the partition must hold, in order
	var trail []string
	fail := func(format string, args ...any) {
		t.Helper()
		t.Errorf("seed %d, step %d: %s\nsteps:\n  %s", seed, len(trail), fmt.Sprintf(format, args...), strings.Join(trail, "\n  "))
	}
	ps := make([]*oracleProducer, 2)
	for i := range ps {
		init, err := kmsg.NewPtrInitProducerIDRequest().RequestWith(ctx, cl)
		if err != nil || init.ErrorCode != 0 {
			t.Fatalf("InitProducerId: %v %v", err, init)
		}
		ps[i] = &oracleProducer{pid: init.ProducerID, epoch: init.ProducerEpoch, mustTake: true}
	}
	vals := func(p, n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("s%d/p%d/%d", seed, p, len(trail)*10+i)
		}
		return out
	}
	inLog := func(b oracleBatch) bool {
		return b.base >= 0 && int(b.base)+len(b.vals) <= len(log) && slices.Equal(log[b.base:int(b.base)+len(b.vals)], b.vals)
	}
	// sent handles the answer to a batch that is new (fresh values).
	sentNew := func(p *oracleProducer, b oracleBatch, r kmsg.ProduceResponseTopicPartition, must bool) bool {
		t.Helper()
		switch {
		case r.ErrorCode == 0:
			if r.BaseOffset != int64(len(log)) {
				fail("new batch %v answered at %d, the log ends at %d", b.vals, r.BaseOffset, len(log))
				return false
			}
			b.base = r.BaseOffset
			log = append(log, b.vals...)
			p.acked = append(p.acked, b)
			p.next = b.seq + int32(len(b.vals))
			p.mustTake = true
			return true
		case r.ErrorCode == kerr.DuplicateSequenceNumber.Code:
			fail("a batch never written (%v) answered DUPLICATE_SEQUENCE_NUMBER: the client counts it written, and it is lost", b.vals)
		case must:
			fail("producer %d epoch %d seq %d: %v, but the batch before was acknowledged in this run (or the epoch began in it): it must be written", p.pid, p.epoch, b.seq, kerr.ErrorForCode(r.ErrorCode))
		}
		return false
	}
	check := func() {
		t.Helper()
		res, err := tb.log.Read("t", 0, 0, commitlog.ReadOpts{MaxMessages: 100000})
		if err != nil {
			fail("read: %v", err)
			return
		}
		var got []string
		for _, m := range res.Messages {
			got = append(got, string(m.Payload))
		}
		if !slices.Equal(got, log) {
			fail("the partition holds %v\nwant the acknowledged %v", got, log)
		}
	}
	for len(trail) < steps && !t.Failed() {
		pi := rng.IntN(len(ps))
		p := ps[pi]
		switch op := rng.IntN(100); {
		case op < 35: // the next batch
			b := oracleBatch{epoch: p.epoch, seq: p.next, vals: vals(pi, 1+rng.IntN(3))}
			trail = append(trail, fmt.Sprintf("p%d next e%d s%d %d", pi, b.epoch, b.seq, len(b.vals)))
			r := produceBatch(t, ctx, cl, "t", p.pid, b.epoch, b.seq, b.vals...)
			if !sentNew(p, b, r, p.mustTake) {
				p.mustTake = false
			}
		case op < 50: // a retry of one of the last acknowledged
			if len(p.acked) == 0 {
				continue
			}
			b := p.acked[max(0, len(p.acked)-1-rng.IntN(5)):][0]
			trail = append(trail, fmt.Sprintf("p%d retry e%d s%d", pi, b.epoch, b.seq))
			r := produceBatch(t, ctx, cl, "t", p.pid, b.epoch, b.seq, b.vals...)
			before := len(log)
			if r.ErrorCode == 0 && r.BaseOffset != b.base {
				fail("a retry of %v answered at %d, it was written at %d", b.vals, r.BaseOffset, b.base)
			}
			_ = before
			// A retry may move what the server expects next (after a
			// restart): the next batch is then not owed.
			p.mustTake = p.mustTake && r.ErrorCode == 0 && b.seq+int32(len(b.vals)) == p.next
		case op < 60: // a batch after a gap
			gap := int32(1 + rng.IntN(3))
			b := oracleBatch{epoch: p.epoch, seq: p.next + gap, vals: vals(pi, 1)}
			trail = append(trail, fmt.Sprintf("p%d gap e%d s%d", pi, b.epoch, b.seq))
			r := produceBatch(t, ctx, cl, "t", p.pid, b.epoch, b.seq, b.vals...)
			if r.ErrorCode == 0 {
				fail("a batch after a gap (seq %d, next %d) was written at %d", b.seq, p.next, r.BaseOffset)
			}
		case op < 70: // pipelined: a gap, then the batch after it
			a := oracleBatch{epoch: p.epoch, seq: p.next + 1, vals: vals(pi, 1)}
			b := oracleBatch{epoch: p.epoch, seq: a.seq + 1, vals: []string{a.vals[0] + "+"}}
			trail = append(trail, fmt.Sprintf("p%d pipelined gap e%d s%d,s%d", pi, a.epoch, a.seq, b.seq))
			for i, r := range pipeline(t, tb.addr, p.pid, []oracleBatch{a, b}) {
				if r.ErrorCode == 0 {
					fail("pipelined batch %d after a gap was written at %d", i, r.BaseOffset)
				}
			}
		case op < 78: // pipelined: the next two, in order
			a := oracleBatch{epoch: p.epoch, seq: p.next, vals: vals(pi, 1+rng.IntN(2))}
			b := oracleBatch{epoch: p.epoch, seq: a.seq + int32(len(a.vals)), vals: vals(pi, 1)}
			b.vals[0] += "+"
			trail = append(trail, fmt.Sprintf("p%d pipelined e%d s%d,s%d", pi, a.epoch, a.seq, b.seq))
			rs := pipeline(t, tb.addr, p.pid, []oracleBatch{a, b})
			must := p.mustTake
			if sentNew(p, a, rs[0], must) {
				if !sentNew(p, b, rs[1], must) {
					p.mustTake = false
				}
			} else {
				p.mustTake = false
				if rs[1].ErrorCode == 0 {
					fail("the second of a pipelined pair was written at %d after the first was refused (%v): a gap", rs[1].BaseOffset, kerr.ErrorForCode(rs[0].ErrorCode))
				}
			}
		case op < 84: // pipelined: the next batch, and its retry at once
			a := oracleBatch{epoch: p.epoch, seq: p.next, vals: vals(pi, 1+rng.IntN(2))}
			trail = append(trail, fmt.Sprintf("p%d pipelined retry e%d s%d", pi, a.epoch, a.seq))
			rs := pipeline(t, tb.addr, p.pid, []oracleBatch{a, a})
			must := p.mustTake
			if sentNew(p, a, rs[0], must) {
				if rs[1].ErrorCode != 0 || rs[1].BaseOffset != rs[0].BaseOffset {
					fail("the retry of a batch still being written: %v at %d, want the first's answer %d", kerr.ErrorForCode(rs[1].ErrorCode), rs[1].BaseOffset, rs[0].BaseOffset)
				}
			} else if rs[1].ErrorCode == 0 {
				p.mustTake = false
				if rs[1].BaseOffset != int64(len(log)) || true {
					// The first was refused; the retry, answered after it,
					// may be taken on its own: then it is new.
					b := a
					if !sentNew(p, b, rs[1], false) {
						p.mustTake = false
					}
				}
			} else {
				p.mustTake = false
			}
		case op < 90: // a local epoch bump (franz-go after an error)
			p.epoch++
			p.next, p.acked, p.mustTake = 0, nil, p.seen
			trail = append(trail, fmt.Sprintf("p%d bump to e%d", pi, p.epoch))
		case op < 93: // InitProducerId with the current ID: a bump by the server
			req := kmsg.NewPtrInitProducerIDRequest()
			req.ProducerID, req.ProducerEpoch = p.pid, p.epoch
			resp, err := req.RequestWith(ctx, cl)
			trail = append(trail, fmt.Sprintf("p%d init from e%d", pi, p.epoch))
			if err != nil || resp.ErrorCode != 0 {
				fail("InitProducerId: %v %v", err, resp)
				break
			}
			p.pid, p.epoch = resp.ProducerID, resp.ProducerEpoch
			p.next, p.acked, p.mustTake = 0, nil, true
		default: // a restart of the server
			trail = append(trail, "restart")
			cl.Close()
			tb.stop()
			tb.start("127.0.0.1:0")
			cl = tb.client()
			for _, q := range ps {
				q.mustTake, q.seen = false, false
			}
		}
		if strings.HasPrefix(trail[len(trail)-1], fmt.Sprintf("p%d ", pi)) && !strings.Contains(trail[len(trail)-1], " bump ") && !strings.Contains(trail[len(trail)-1], " init ") {
			p.seen = true
		}
		for _, b := range p.acked {
			if !inLog(b) {
				fail("acknowledged batch %v is not at %d", b.vals, b.base)
			}
		}
		check()
	}
	// Every producer makes progress again, as franz-go does: bumps its
	// epoch until its batch is taken, at most twice (once more after a
	// restart: the server has to see an epoch before it can tell a bump).
	for pi, p := range ps {
		for bumps := 1; !t.Failed(); bumps++ {
			p.epoch++
			trail = append(trail, fmt.Sprintf("p%d final bump to e%d and next", pi, p.epoch))
			b := oracleBatch{epoch: p.epoch, seq: 0, vals: vals(pi, 1)}
			if sentNew(p, b, produceBatch(t, ctx, cl, "t", p.pid, b.epoch, 0, b.vals...), bumps == 2) {
				break
			}
		}
		check()
	}
	cl.Close()
}

// pipeline sends the batches of producer pid to t/0 on one connection
// before reading any answer, and returns the answers in order.
func pipeline(t *testing.T, addr string, pid int64, bs []oracleBatch) []kmsg.ProduceResponseTopicPartition {
	t.Helper()
	rc := dialRaw(t, addr)
	defer rc.nc.Close()
	var buf []byte
	for _, b := range bs {
		req := produceRequest(nil, "t", 0, producerBatch(t, 0, pid, b.epoch, b.seq, false, b.vals...))
		req.Version = 7
		buf = append(buf, rc.encode(req)...)
	}
	if _, err := rc.nc.Write(buf); err != nil {
		t.Fatal(err)
	}
	out := make([]kmsg.ProduceResponseTopicPartition, len(bs))
	for i := range bs {
		resp := kmsg.NewPtrProduceResponse()
		resp.Version = 7
		if err := rc.recv(resp, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		out[i] = resp.Topics[0].Partitions[0]
	}
	return out
}
