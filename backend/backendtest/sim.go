package backendtest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/dlq"
	"github.com/ferrymq/ferry/idempotency"
	"github.com/ferrymq/ferry/retry"
)

const (
	simGroup      = "g"
	simTopic      = "in"
	simDLQ        = "g.dlq"
	simOut        = "out"
	simStore      = "g.processed"
	simDurable    = 50 * time.Millisecond // WithDurableRetry threshold, unscaled
	simDrainLimit = 20 * time.Second      // unscaled
	simDrainStall = 2 * time.Second       // unscaled
	simDrainPoll  = 100 * time.Millisecond
	simMaxMembers = 3
	simStopLimit  = 30 * time.Second // for a member's Run to return once its context ended
	// simOutputWait bounds the wait for handled inputs' outputs to become
	// readable: a member that crashed inside a transaction leaves it open
	// where only a timeout aborts it (Kafka: the transaction timeout,
	// 40 s by default, unless a member with the same transactional ID
	// fences it first), and a read-committed reader sees nothing
	// committed after it until then.
	simOutputWait = 60 * time.Second
)

// SimWorld is a backend as Simulate sees it: how to make one, how fast it
// is, and what a member's failure can be made to look like on it.
type SimWorld struct {
	// New returns a backend with nothing in it (a fresh namespace: every
	// seed uses the same topic and group names), closed when t ends. It is
	// called once per seed, inside Bubble if that is set. Exactly-once
	// seeds run only if the backend is backend.Transactional.
	New func(t *testing.T) backend.Backend
	// Session is the session timeout of the backends New returns: a
	// paused member's lease ends a session timeout after the last
	// heartbeat the group took, and a pause lasts twice as long.
	Session time.Duration
	// Scale multiplies every duration of a scenario: the steps' waits,
	// slow handlers, retry-after delays and the durable-retry threshold,
	// the commit and heartbeat intervals, the retry backoff, and the final
	// drain's polling and limits (0 means 1). The scenarios are written
	// for the embedded backend in a synctest bubble, where 1 fits; over a
	// network, rebalances and round trips must fit in the scenario's
	// waits, or every seed tests little more than a backlog.
	Scale int
	// HeartbeatsByCaller declares that a session lives only as long as its
	// member calls Session.Heartbeat (the embedded backend), so that the
	// harness can withhold those calls. Then a "pause" withholds them for
	// twice the session timeout while the member goes on, and a "crash"
	// freezes the member: its backend calls fail, its handlers do nothing
	// more, its heartbeats, Release and Leave stop reaching the group, and
	// its session expires after the session timeout.
	//
	// Otherwise (JetStream, Kafka: the session heartbeats on its own)
	// pause steps are skipped, and a crash is modelled as: every write the
	// member makes through its backend fails from the crash step on
	// (publishes, commits, dead letters and their markers, as
	// crashAtMarker's), its handlers do nothing more, and its Run is
	// canceled, so that the member leaves the group (through its session,
	// which the harness cannot fail) instead of expiring. Its reads go on:
	// a write in flight at the crash may still land, and the member reads
	// it back before it reports the input handled (a dead letter's
	// redriven marker) as its successors will. What it had handled but not
	// committed is redelivered to the next owner, as after a real crash;
	// what a real crash adds, a session timeout during which nobody owns
	// its partitions, is left out.
	HeartbeatsByCaller bool
	// Seeds is how many seeds run (1..Seeds), ShortSeeds with -short;
	// the environment variable SeedsEnv, if set, overrides both.
	Seeds, ShortSeeds int
	SeedsEnv          string
	// Bubble, if set, runs each seed: testing/synctest.Test, for virtual
	// time. Without it the seeds run in real time.
	Bubble func(t *testing.T, f func(t *testing.T))
}

// NetworkSimWorld is the world of a backend over a network whose
// sessions heartbeat on their own (JetStream, Kafka), with session
// timeout session: real time, durations ×5, 8 seeds (2 with -short;
// FERRY_SIM_BACKEND_SEEDS), so that a seed takes a few seconds; no
// pauses, and crashes fail the member's calls and cancel its Run.
func NetworkSimWorld(session time.Duration, newBackend func(t *testing.T) backend.Backend) *SimWorld {
	return &SimWorld{New: newBackend, Session: session, Scale: 5, Seeds: 8, ShortSeeds: 2, SeedsEnv: "FERRY_SIM_BACKEND_SEEDS"}
}

// Simulate runs seeded scenarios of the processing runtime on w's
// backend, with an oracle; each seed is a parallel subtest. Each seed
// generates a scenario (math/rand/v2 PCG): one group "g" consuming topic
// "in" (2-4 partitions, 3-12 keys, DLQ "g.dlq"), and a list of steps:
// publish batches, start / stop / kill / crash / pause members, operator
// redrives (by key, by class, all) and purges (one entry, a key), fixes
// and breaks of handler behaviour, and waits. Inputs are identified by the
// payload "k<key>/<seq>" (seq counts per key in publication order), never
// by message ID: a redriven message may be a copy (new ID, header
// dlq.HeaderRedriveOf) or the original itself. Operator actions are only
// requests; the harness never assumes they take effect synchronously and
// only waits for quiescence at the end.
//
// Per input, the scenario picks a behaviour: ok, poison (ferry.Permanent
// until its key is fixed), transient (fails k times, then succeeds), panic
// (once), slow (a few ms, honouring its context), retry-after (asks once
// for a delay over the durable-retry threshold, so the retry is scheduled
// through the DLQ when the seed enables WithDurableRetry).
//
// Members: "stop" cancels Run's context and waits for Run to return;
// "kill" cancels it without waiting and starts a new member at once;
// "crash" starts a new member at once after making the old one dead as
// SimWorld.HeartbeatsByCaller describes (frozen until its session
// expires, or failing its writes and leaving); "pause" (only with
// HeartbeatsByCaller) withholds a member's heartbeats for twice the
// session timeout while its handlers and backend calls go on, and starts
// a new member at once. An invocation in flight when its member crashes
// counts as running until the crash only (a real crash ends it there).
//
// After the steps, the final drain fixes every poison input, starts a
// member if none runs, and redrives all dead entries repeatedly until the
// DLQ lists nothing dead and every input not purged was handled (20 s at
// most; it gives up after 2 s without a newly handled input; both times
// the world's Scale), then stops every member.
//
// Checked, over every handler invocation and observer event:
//  1. lost: every input is handled (EventHandled) or purged by an operator
//     step (purges are by the IDs List returned, so the purged seqs are
//     known exactly);
//  2. order: per key, the first successful handlings are in seq order,
//     purged seqs ignored;
//  3. overlap: no two invocations of one key run at once, on any members
//     (an invocation runs until its handler returns);
//  4. exactly-once (a third of the seeds, on a backend.Transactional
//     backend: WithExactlyOnce with a store per member; every invocation
//     emits one output with a fresh ID, so the log's deduplication cannot
//     hide a second effect): "out" holds exactly one output per handled
//     input and none for the others;
//  5. DLQ accounting: at the end nothing is dead in the DLQ and handled ∪
//     purged is every published input;
//  6. lease: a paused member starts no invocation after its lease ended
//     (the last heartbeat the group took plus the session timeout). An
//     invocation it started in time and that ran on past the lease is
//     left out of the overlap check: nothing can stop a handler already
//     running;
//
// and quiescence: the drain ends (a key that stays parked for good shows
// as "quiescence" plus "lost"); and stop: a member's Run returns within
// 30 s of its context ending (one that does not is no longer waited for). "Handled" means an EventHandled, an
// exactly-once skip of an input already marked included. An order
// violation names where the earlier seq was when the later one was
// handled; the key histories include the operator's and the drain's
// redrives and purges (kinds op-redrive, op-purge, drain-redrive: entries
// dead before the step and not after it).
//
// A failure prints the seed, the command that runs it again, the
// configuration, the steps (with what they did at run time) and each
// violated invariant with the invocations and events of the keys
// involved. The scenario is determined by the seed; goroutine scheduling
// (and, in real time, the backend's timing) is not, so a failing seed may
// need a few runs (-count) to fail again.
//
// Knobs (environment):
//
//	FERRY_SIM_SEEDS=n         seeds on the embedded backend, 1..n (default 500; 30 with -short)
//	FERRY_SIM_BACKEND_SEEDS=n seeds on JetStream and Kafka, 1..n (default 8; 2 with -short)
//	FERRY_SIM_SEED=s          run only seed s
//	FERRY_SIM_STEPS=n         steps per scenario (default 60)
//	FERRY_SIM_LOG=1           log the scenario of passing seeds too
//	FERRY_SIM_MUTATE=m        self-test of the checker: falsify the recorded history
//	                          once per seed, so the named invariant must fail:
//	                          order (a fake early success of a key's last seq),
//	                          overlap (a fake invocation beside a real one), lost
//	                          (one success left unrecorded), dup (a second output
//	                          for one input, exactly-once seeds only)
//	FERRY_SIM_STATIC=1        one member from the start, never stopped, killed or
//	                          crashed (separates rebalance defects from the rest)
//
// (The seed counts of a world are its Seeds and SeedsEnv; the two above
// are those of consumer.TestSimulation and of the JetStream and Kafka
// conformance runs.)
func Simulate(t *testing.T, w SimWorld) {
	steps := envInt(t, "FERRY_SIM_STEPS", 60)
	var seeds []uint64
	if v := os.Getenv("FERRY_SIM_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("FERRY_SIM_SEED=%q: %v", v, err)
		}
		seeds = append(seeds, s)
	} else {
		n := w.Seeds
		if testing.Short() {
			n = w.ShortSeeds
		}
		if w.SeedsEnv != "" {
			n = envInt(t, w.SeedsEnv, n)
		}
		for s := 1; s <= n; s++ {
			seeds = append(seeds, uint64(s))
		}
	}
	if w.Scale <= 0 {
		w.Scale = 1
	}
	bubble := w.Bubble
	if bubble == nil {
		bubble = func(t *testing.T, f func(*testing.T)) { f(t) }
	}
	verbose := os.Getenv("FERRY_SIM_LOG") != ""
	static := os.Getenv("FERRY_SIM_STATIC") != ""
	rerun := rerunCommand(t)
	for _, seed := range seeds {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			t.Parallel()
			bubble(t, func(t *testing.T) {
				b := w.New(t)
				_, tx := b.(backend.Transactional)
				sc := generateScenario(seed, steps, static, time.Duration(w.Scale), tx)
				r := runScenario(t, &w, b, sc)
				if fails := r.check(); len(fails) > 0 || verbose {
					msg := r.report(fails, fmt.Sprintf("FERRY_SIM_SEED=%d %s", seed, rerun))
					if len(fails) > 0 {
						t.Error(msg)
					} else {
						t.Log(msg)
					}
				}
			})
		})
	}
}

// testSimulation is Run's entry for Simulate: the harness's Simulation
// world, if it has one.
func testSimulation(t *testing.T, h Harness) {
	if h.Simulation == nil {
		t.Skip("the harness has no simulation world")
	}
	Simulate(t, *h.Simulation)
}

// rerunCommand is the go test command that runs t again, from the module's
// root.
func rerunCommand(t *testing.T) string {
	pkg := "."
	if wd, err := os.Getwd(); err == nil {
		for dir := wd; ; dir = filepath.Dir(dir) {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				if rel, err := filepath.Rel(dir, wd); err == nil {
					pkg = "./" + filepath.ToSlash(rel) + "/"
				}
				break
			}
			if filepath.Dir(dir) == dir {
				break
			}
		}
	}
	return fmt.Sprintf("go test -race -run '%s' %s -count=1", t.Name(), pkg)
}

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		t.Fatalf("%s=%q: want a non-negative integer", name, v)
	}
	return n
}

// ---------------------------------------------------------------------------
// Scenario

type behaviour int

const (
	bOK behaviour = iota
	bPoison
	bTransient
	bPanic
	bSlow
	bRetryAfter
)

func (b behaviour) String() string {
	return [...]string{"ok", "poison", "transient", "panic", "slow", "retry-after"}[b]
}

type inputSpec struct {
	key   string
	seq   int
	mode  behaviour
	n     int           // transient: failures before success
	delay time.Duration // slow: sleep; retry-after: requested delay
}

func (in inputSpec) name() string { return fmt.Sprintf("%s/%d", in.key, in.seq) }

func (in inputSpec) String() string {
	switch in.mode {
	case bTransient:
		return fmt.Sprintf("%s(transient×%d)", in.name(), in.n)
	case bSlow, bRetryAfter:
		return fmt.Sprintf("%s(%s %v)", in.name(), in.mode, in.delay)
	case bOK:
		return in.name()
	}
	return fmt.Sprintf("%s(%s)", in.name(), in.mode)
}

type stepKind int

const (
	sPublish stepKind = iota
	sStart
	sStop
	sKill
	sCrash
	sRedriveKey
	sRedriveClass
	sRedriveAll
	sPurgeOne
	sPurgeKey
	sFix
	sBreak
	sWait
	sPause
)

type step struct {
	kind  stepKind
	msgs  []inputSpec // publish
	key   string      // redrive/purge/fix/break key
	seq   int         // break
	class retry.Class // redrive by class
	pick  uint32      // which member / which entry
	after time.Duration
}

func (s step) String() string {
	var d string
	switch s.kind {
	case sPublish:
		parts := make([]string, len(s.msgs))
		for i, m := range s.msgs {
			parts[i] = m.String()
		}
		d = "publish " + strings.Join(parts, " ")
	case sStart:
		d = "start member"
	case sStop:
		d = fmt.Sprintf("stop member #%d (graceful, wait)", s.pick)
	case sKill:
		d = fmt.Sprintf("kill member #%d (cancel, no wait) + start one", s.pick)
	case sCrash:
		d = fmt.Sprintf("crash member #%d + start one", s.pick)
	case sPause:
		d = fmt.Sprintf("pause member #%d's heartbeats for twice the session timeout (its handlers go on) + start one", s.pick)
	case sRedriveKey:
		d = "redrive key " + s.key
	case sRedriveClass:
		d = "redrive class " + string(s.class)
	case sRedriveAll:
		d = "redrive all"
	case sPurgeOne:
		d = fmt.Sprintf("purge entry #%d", s.pick)
	case sPurgeKey:
		d = "purge key " + s.key
	case sFix:
		d = "fix key " + s.key
	case sBreak:
		d = fmt.Sprintf("break %s/%d (poison)", s.key, s.seq)
	case sWait:
		d = "wait"
	}
	if s.after > 0 {
		d += fmt.Sprintf(" ; +%v", s.after)
	}
	return d
}

type scenario struct {
	seed        uint64
	partitions  int
	keys        int
	maxAttempts int
	concurrency int
	maxParked   int // 0: the default
	eo          bool
	durable     bool
	commitEvery time.Duration
	heartbeat   time.Duration
	scale       time.Duration // the world's Scale: every duration above and in steps is multiplied by it
	steps       []step
}

// d is a duration of the scenario as written, scaled to its world.
func (sc *scenario) d(x time.Duration) time.Duration { return x * sc.scale }

func (sc *scenario) String() string {
	scale := ""
	if sc.scale != 1 {
		scale = fmt.Sprintf(" (durations ×%d)", sc.scale)
	}
	return fmt.Sprintf("seed=%d partitions=%d keys=%d maxAttempts=%d concurrency=%d maxParkedKeys=%d exactlyOnce=%v durableRetry=%v commit=%v heartbeat=%v steps=%d%s",
		sc.seed, sc.partitions, sc.keys, sc.maxAttempts, sc.concurrency, sc.maxParked, sc.eo, sc.durable, sc.commitEvery, sc.heartbeat, len(sc.steps), scale)
}

// generateScenario builds seed's scenario of n steps, its durations
// multiplied by scale. static (FERRY_SIM_STATIC) keeps one member from the
// first step on: no stops, kills or crashes. Exactly-once seeds (a third)
// are exactly-once only if tx (the backend is transactional). The random
// draws do not depend on scale or tx: a seed names the same scenario on
// every backend.
func generateScenario(seed uint64, n int, static bool, scale time.Duration, tx bool) *scenario {
	rng := rand.New(rand.NewPCG(seed, 0xfe77a))
	sc := &scenario{
		seed:        seed,
		scale:       scale,
		partitions:  2 + rng.IntN(3),
		keys:        3 + rng.IntN(10),
		maxAttempts: 2 + rng.IntN(2),
		concurrency: 2 + rng.IntN(3),
		eo:          seed%3 == 0 && tx,
		durable:     rng.IntN(2) == 0,
		commitEvery: time.Duration(2+rng.IntN(4)) * time.Millisecond * scale,
		heartbeat:   time.Duration(3+rng.IntN(5)) * time.Millisecond * scale,
	}
	if rng.IntN(4) == 0 {
		sc.maxParked = 2 + rng.IntN(2)
	}
	next := map[string]int{} // key -> next seq
	running := 0
	key := func() string { return fmt.Sprintf("k%d", rng.IntN(sc.keys)) }
	classes := []retry.Class{retry.ClassPermanent, retry.ClassTransient, retry.ClassPanic, dlq.ClassParked, dlq.ClassScheduled}
	if static {
		sc.steps = append(sc.steps, step{kind: sStart})
		running = simMaxMembers
	}
	for len(sc.steps) < n {
		var s step
		r := rng.IntN(100)
		if static && r >= 30 && r < 56 {
			r = 99 // a wait instead of a membership change
		}
		switch {
		case r < 30:
			s.kind = sPublish
			for range 1 + rng.IntN(5) {
				in := inputSpec{key: key()}
				in.seq = next[in.key]
				next[in.key]++
				switch m := rng.IntN(100); {
				case m < 8:
					in.mode = bPoison
				case m < 16:
					in.mode, in.n = bTransient, 1+rng.IntN(4)
				case m < 20:
					in.mode = bPanic
				case m < 26:
					in.mode, in.delay = bSlow, sc.d(time.Duration(1+rng.IntN(5))*time.Millisecond)
				case m < 30:
					in.mode, in.delay = bRetryAfter, sc.d(simDurable+time.Duration(10+rng.IntN(100))*time.Millisecond)
				}
				s.msgs = append(s.msgs, in)
			}
		case r < 40:
			if running >= simMaxMembers {
				continue
			}
			s.kind = sStart
			running++
		case r < 47:
			if running == 0 {
				continue
			}
			s.kind = sStop
			running--
		case r < 52, r < 56:
			if running == 0 {
				continue
			}
			switch {
			case r < 52:
				s.kind = sKill
			case r < 54:
				s.kind = sCrash
			default:
				s.kind = sPause
			}
		case r < 60:
			s.kind, s.key = sRedriveKey, key()
		case r < 64:
			s.kind, s.class = sRedriveClass, classes[rng.IntN(len(classes))]
		case r < 68:
			s.kind = sRedriveAll
		case r < 71:
			s.kind = sPurgeOne
		case r < 73:
			s.kind, s.key = sPurgeKey, key()
		case r < 79:
			s.kind, s.key = sFix, key()
		case r < 84:
			k := key()
			if next[k] == 0 {
				continue
			}
			s.kind, s.key, s.seq = sBreak, k, rng.IntN(next[k])
		default:
			s.kind = sWait
			s.after = sc.d(time.Duration(5+rng.IntN(100)) * time.Millisecond)
		}
		s.pick = rng.Uint32()
		if s.kind != sWait {
			s.after = sc.d(time.Duration(rng.IntN(10)) * time.Millisecond)
		}
		sc.steps = append(sc.steps, s)
	}
	return sc
}

// ---------------------------------------------------------------------------
// A member's view of the backend: everything passes through until the
// member crashes; then its writes fail, and either its reads too and its
// session is left to expire (freeze), or its reads go on and it leaves
// (see SimWorld.HeartbeatsByCaller).

type memberBackend struct {
	base    backend.Backend
	session time.Duration // the world's session timeout
	// freeze: a crash also keeps the member's heartbeats, releases and
	// leave from reaching the group (SimWorld.HeartbeatsByCaller).
	freeze bool
	dead   atomic.Bool
	// paused: its heartbeats do not reach the group, everything else goes
	// on (a stalled heartbeat, or the moments after a SIGSTOP ends before
	// the member learns its session is gone). lastBeat is when the group
	// last took one (unix nanoseconds): the member's lease ends a session
	// timeout later.
	paused     atomic.Bool
	pausedEver atomic.Bool
	lastBeat   atomic.Int64
}

// lease is when the member's partitions may be another's.
func (m *memberBackend) lease() time.Time {
	return time.Unix(0, m.lastBeat.Load()).Add(m.session)
}

// txMemberBackend is a member's view of a transactional backend.
type txMemberBackend struct{ *memberBackend }

var (
	_ backend.Backend       = (*memberBackend)(nil)
	_ backend.Transactional = txMemberBackend{}
)

// forConsumer is the member's backend as its consumer gets it:
// transactional if the base is.
func (m *memberBackend) forConsumer() backend.Backend {
	if _, ok := m.base.(backend.Transactional); ok {
		return txMemberBackend{m}
	}
	return m
}

// alive fails the member's writes once it crashed.
func (m *memberBackend) alive() error {
	if m.dead.Load() {
		return errCrashed
	}
	return nil
}

// readable fails the member's reads once it crashed, if it froze: a member
// that fails and leaves still reads, so that it learns which of its last
// writes went through before it stops (its successors will).
func (m *memberBackend) readable() error {
	if m.frozen() {
		return errCrashed
	}
	return nil
}

func (m *memberBackend) EnsureTopic(ctx context.Context, topic string, partitions int) error {
	if err := m.alive(); err != nil {
		return err
	}
	return m.base.EnsureTopic(ctx, topic, partitions)
}

func (m *memberBackend) Partitions(ctx context.Context, topic string) (int, error) {
	if err := m.readable(); err != nil {
		return 0, err
	}
	return m.base.Partitions(ctx, topic)
}

func (m *memberBackend) Publish(ctx context.Context, msgs ...*ferry.Message) error {
	if err := m.alive(); err != nil {
		return err
	}
	return m.base.Publish(ctx, msgs...)
}

func (m *memberBackend) Fetch(ctx context.Context, tp backend.TopicPartition, offset uint64, max int) (backend.Fetched, error) {
	if err := m.readable(); err != nil {
		return backend.Fetched{}, err
	}
	res, err := m.base.Fetch(ctx, tp, offset, max)
	if err := m.readable(); err != nil {
		return backend.Fetched{}, err
	}
	return res, err
}

func (m *memberBackend) Committed(ctx context.Context, group string, tp backend.TopicPartition) (uint64, bool, error) {
	if err := m.readable(); err != nil {
		return 0, false, err
	}
	return m.base.Committed(ctx, group, tp)
}

func (m *memberBackend) Bounds(ctx context.Context, tp backend.TopicPartition) (uint64, uint64, error) {
	if err := m.readable(); err != nil {
		return 0, 0, err
	}
	return m.base.Bounds(ctx, tp)
}

func (m *memberBackend) OffsetForTime(ctx context.Context, tp backend.TopicPartition, ts time.Time) (uint64, error) {
	if err := m.readable(); err != nil {
		return 0, err
	}
	return m.base.OffsetForTime(ctx, tp, ts)
}

func unwrapSession(s backend.Session) backend.Session {
	if ms, ok := s.(*memberSession); ok {
		return ms.Session
	}
	return s
}

func (m *memberBackend) Commit(ctx context.Context, s backend.Session, offsets ...backend.Offset) error {
	if err := m.alive(); err != nil {
		return err
	}
	return m.base.Commit(ctx, unwrapSession(s), offsets...)
}

func (m txMemberBackend) PublishAndCommit(ctx context.Context, s backend.Session, msgs []*ferry.Message, offsets ...backend.Offset) error {
	if err := m.alive(); err != nil {
		return err
	}
	if s != nil {
		s = unwrapSession(s)
	}
	return m.base.(backend.Transactional).PublishAndCommit(ctx, s, msgs, offsets...)
}

func (m txMemberBackend) StableEnd(ctx context.Context, tp backend.TopicPartition) (uint64, error) {
	if err := m.readable(); err != nil {
		return 0, err
	}
	return m.base.(backend.Transactional).StableEnd(ctx, tp)
}

func (m *memberBackend) Join(ctx context.Context, group, member string, topics []string) (backend.Session, error) {
	if err := m.alive(); err != nil {
		return nil, err
	}
	s, err := m.base.Join(ctx, group, member, topics)
	if err != nil {
		return nil, err
	}
	m.lastBeat.Store(time.Now().UnixNano())
	return &memberSession{Session: s, mb: m}, nil
}

func (m *memberBackend) Close() error { return nil } // the harness closes the base

type memberSession struct {
	backend.Session
	mb *memberBackend
}

// frozen: the member crashed and its session is left to expire.
func (m *memberBackend) frozen() bool { return m.freeze && m.dead.Load() }

func (s *memberSession) Heartbeat() error {
	if s.mb.frozen() || s.mb.paused.Load() {
		return nil // frozen or paused: no heartbeat reaches the group; the session expires
	}
	err := s.Session.Heartbeat()
	if err == nil {
		s.mb.lastBeat.Store(time.Now().UnixNano())
	}
	return err
}

func (s *memberSession) Release(tp backend.TopicPartition) {
	if !s.mb.frozen() {
		s.Session.Release(tp)
	}
}

func (s *memberSession) Leave() {
	if !s.mb.frozen() {
		s.Session.Leave()
	}
}

// ---------------------------------------------------------------------------
// Run

type member struct {
	n       int // index in start order
	id      string
	c       *consumer.Consumer
	mb      *memberBackend
	cancel  context.CancelFunc
	done    chan struct{}
	err     error
	crashCh chan struct{}
	crashed bool   // guarded by run.mu
	crashAt uint64 // tick of the crash
	state   string // running, stopped, killed, crashed, paused, exited
	stuck   bool   // its Run did not return after its context ended (awaitRun)
	started uint64 // tick of the start
}

type inputState struct {
	spec      inputSpec
	poisoned  bool
	fixed     bool
	failed    int // transient failures given
	panicked  bool
	deferred  bool // retry-after given
	published bool
}

type invocation struct {
	member    string
	key       string
	seq       int
	id        ferry.ID
	redriveOf string
	attempt   int
	start     uint64
	end       uint64 // 0 while running
	outcome   string
	// pastLease: its member was paused and it ran on past the member's
	// lease, which nothing can stop (it started in time): the overlap
	// check leaves it out. Starting past the lease is a violation.
	pastLease bool
}

func (iv *invocation) String() string {
	rd := ""
	if iv.redriveOf != "" {
		rd = " redrive-of=" + short(iv.redriveOf)
	}
	end := "running"
	if iv.end > 0 {
		end = strconv.FormatUint(iv.end, 10)
	}
	return fmt.Sprintf("[%d..%s] %s %s/%d id=%s%s attempt=%d %s", iv.start, end, iv.member, iv.key, iv.seq, short(iv.id.String()), rd, iv.attempt, iv.outcome)
}

type event struct {
	tick    uint64
	kind    consumer.EventKind
	member  string
	key     string
	seq     int // -1 if the message has no payload of ours
	id      ferry.ID
	attempt int
	class   retry.Class
}

func (e event) String() string {
	return fmt.Sprintf("@%d %s %s %s/%d id=%s attempt=%d %s", e.tick, e.member, e.kind, e.key, e.seq, short(e.id.String()), e.attempt, e.class)
}

func short(id string) string {
	if len(id) > 8 {
		return id[len(id)-8:]
	}
	return id
}

// simRun is one seed's run: its world, backend and what happened.
type simRun struct {
	t   *testing.T
	w   *SimWorld
	sc  *scenario
	ctx context.Context
	b   backend.Backend
	q   *dlq.Queue

	mu       sync.Mutex
	tick     uint64
	inputs   map[string][]*inputState // key -> by seq
	invs     []*invocation
	events   []event
	allFixed bool
	mutate   string // FERRY_SIM_MUTATE
	// leaseViolations: invocations started by a paused member after its
	// lease ended.
	leaseViolations []*invocation
	bg              sync.WaitGroup // the goroutines that end pauses
	mutated         bool
	purged          map[string]map[int]bool // key -> purged seqs
	log             []string                // what each step did
	members         []*member
	nextID          int

	drainErr string
	stuck    []string               // members whose Run did not return (awaitRun)
	dead     []dlq.Entry            // dead at the end
	outputs  map[string]map[int]int // key -> seq -> outputs in "out"
	stats    []string
}

func (r *simRun) tickLocked() uint64 { r.tick++; return r.tick }

func (r *simRun) logf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = append(r.log, fmt.Sprintf("@%d ", r.tick)+fmt.Sprintf(format, args...))
}

func parsePayload(p []byte) (string, int, bool) {
	k, s, ok := strings.Cut(string(p), "/")
	if !ok {
		return "", -1, false
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return "", -1, false
	}
	return k, n, true
}

// runScenario runs sc on b, a backend of w, and returns what happened.
func runScenario(t *testing.T, w *SimWorld, b backend.Backend, sc *scenario) *simRun {
	ctx := context.Background()
	r := &simRun{t: t, w: w, sc: sc, ctx: ctx, b: b, q: dlq.Open(b, simDLQ), inputs: map[string][]*inputState{}, purged: map[string]map[int]bool{}, mutate: os.Getenv("FERRY_SIM_MUTATE")}
	defer func() {
		// Whatever happened, end every member before the backend (closed
		// by New's cleanup), and every pause, or a bubble cannot end.
		r.bg.Wait()
		for _, m := range r.members {
			m.cancel()
		}
		for _, m := range r.members {
			if !m.stuck {
				<-m.done
			}
		}
	}()
	for _, topic := range []struct {
		name       string
		partitions int
	}{{simTopic, sc.partitions}, {simDLQ, 1}, {simOut, 1}} {
		ensure(t, b, topic.name, topic.partitions)
	}

	for i, s := range sc.steps {
		r.logf("step %d: %s", i, s)
		r.do(s)
		if s.after > 0 {
			time.Sleep(s.after)
		}
	}
	r.drain()
	// Stop everyone, the frozen members included (their Run returns once
	// their session expired).
	for _, m := range r.members {
		if m.state == "running" {
			m.state = "stopped"
			m.cancel()
		}
	}
	for _, m := range r.members {
		if !r.awaitRun(m) {
			continue
		}
		if m.err != nil && m.state != "crashed" {
			r.logf("member %s Run returned %v", m.id, m.err)
		}
	}
	if sc.eo {
		handled := r.handledSeqs(nil)
		for deadline := time.Now().Add(simOutputWait); ; time.Sleep(r.sc.d(simDrainPoll)) {
			r.outputs = r.readOutputs()
			visible := true
			for k, seqs := range handled {
				for s := range seqs {
					visible = visible && r.outputs[k][s] > 0
				}
			}
			if visible || time.Now().After(deadline) {
				break
			}
		}
	}
	return r
}

// readOutputs counts the outputs in "out" of each input (exactly-once
// seeds).
func (r *simRun) readOutputs() map[string]map[int]int {
	outs := map[string]map[int]int{}
	for _, m := range readAll(r.t, r.b, backend.TopicPartition{Topic: simOut}, 0) {
		k, s, ok := parsePayload(m.Payload)
		if !ok {
			r.t.Fatalf("output %q is not key/seq", m.Payload)
		}
		if outs[k] == nil {
			outs[k] = map[int]int{}
		}
		outs[k][s]++
	}
	return outs
}

// running returns the members that run. A member whose Run returned by
// itself (its session expired) is marked "exited" and logged.
// awaitRun waits for m's Run to return, after its context ended, for
// simStopLimit at most; a member that takes longer is reported stuck
// (a violation) and no longer waited for (in a bubble, the bubble then
// fails too: its goroutines never end).
func (r *simRun) awaitRun(m *member) bool {
	if m.stuck {
		return false
	}
	select {
	case <-m.done:
		return true
	case <-time.After(simStopLimit):
		m.stuck = true
		r.stuck = append(r.stuck, fmt.Sprintf("member %s (%s) did not return from Run %v after its context ended", m.id, m.state, simStopLimit))
		r.logf("  %s stuck: Run did not return %v after its context ended", m.id, simStopLimit)
		return false
	}
}

func (r *simRun) running() []*member {
	var ms []*member
	for _, m := range r.members {
		if m.state != "running" {
			continue
		}
		select {
		case <-m.done:
			m.state = "exited"
			r.logf("  %s: Run returned by itself: %v", m.id, m.err)
			continue
		default:
		}
		ms = append(ms, m)
	}
	return ms
}

// pickRunning picks a running member by pick, or logs that none runs.
func (r *simRun) pickRunning(pick uint32) *member {
	ms := r.running()
	if len(ms) == 0 {
		r.logf("  no member runs")
		return nil
	}
	return ms[int(pick)%len(ms)]
}

func (r *simRun) do(s step) {
	ctx := r.ctx
	switch s.kind {
	case sPublish:
		var msgs []*ferry.Message
		r.mu.Lock()
		for _, in := range s.msgs {
			st := &inputState{spec: in, poisoned: in.mode == bPoison, published: true}
			if len(r.inputs[in.key]) != in.seq {
				r.mu.Unlock()
				r.t.Fatalf("generator: %s published out of order", in.name())
			}
			r.inputs[in.key] = append(r.inputs[in.key], st)
			msgs = append(msgs, &ferry.Message{Topic: simTopic, Key: []byte(in.key), Payload: []byte(in.name())})
		}
		r.mu.Unlock()
		if err := r.b.Publish(ctx, msgs...); err != nil {
			r.t.Fatal(err)
		}
	case sStart:
		r.start()
	case sStop:
		m := r.pickRunning(s.pick)
		if m == nil {
			return
		}
		m.state = "stopped"
		m.cancel()
		if r.awaitRun(m) {
			r.logf("  %s stopped (Run returned %v)", m.id, m.err)
		}
	case sKill:
		m := r.pickRunning(s.pick)
		if m == nil {
			return
		}
		m.state = "killed"
		m.cancel()
		r.logf("  %s killed", m.id)
		r.start()
	case sCrash:
		m := r.pickRunning(s.pick)
		if m == nil {
			return
		}
		m.state = "crashed"
		r.mu.Lock()
		m.crashed = true
		m.crashAt = r.tickLocked()
		m.mb.dead.Store(true)
		close(m.crashCh)
		r.mu.Unlock()
		if r.w.HeartbeatsByCaller {
			r.logf("  %s crashed (frozen: its session expires)", m.id)
		} else {
			m.cancel() // its writes fail; it leaves the group
			r.logf("  %s crashed (its calls fail; Run canceled, so it leaves)", m.id)
		}
		r.start()
	case sPause:
		if !r.w.HeartbeatsByCaller {
			r.logf("  skipped: the backend's sessions heartbeat on their own")
			return
		}
		m := r.pickRunning(s.pick)
		if m == nil {
			return
		}
		m.state = "paused"
		m.mb.pausedEver.Store(true)
		m.mb.paused.Store(true)
		r.logf("  %s paused (lease until +%v)", m.id, time.Until(m.mb.lease()))
		r.start()
		r.bg.Go(func() {
			time.Sleep(2 * r.w.Session)
			m.mb.paused.Store(false) // its next heartbeat finds the session gone
		})
	case sRedriveKey, sRedriveClass, sRedriveAll:
		f := dlq.Filter{}
		switch s.kind {
		case sRedriveKey:
			f.Key = []byte(s.key)
		case sRedriveClass:
			f.Class = s.class
		}
		before, _ := r.q.List(ctx, dlq.Filter{})
		n, err := r.q.Redrive(ctx, dlq.RedriveOpts{Filter: f})
		r.logf("  redrove %d (%v)", n, err)
		r.noteGone(before, "op-redrive")
	case sPurgeOne, sPurgeKey:
		f := dlq.Filter{}
		if s.kind == sPurgeKey {
			f.Key = []byte(s.key)
		}
		entries, err := r.q.List(ctx, f)
		if err != nil {
			r.logf("  list: %v", err)
			return
		}
		if len(entries) == 0 {
			r.logf("  nothing dead")
			return
		}
		if s.kind == sPurgeOne {
			entries = entries[int(s.pick)%len(entries):][:1]
		}
		var names []string
		for _, e := range entries {
			f.IDs = append(f.IDs, e.Original.ID)
			names = append(names, fmt.Sprintf("%s(%s %s)", e.Original.Payload, e.Class, short(e.Original.ID.String())))
		}
		n, err := r.q.Purge(ctx, f)
		// Only what Purge marked counts; it lists again and marks the
		// entries still dead among these IDs, normally all of them.
		r.mu.Lock()
		if n == len(entries) {
			for _, e := range entries {
				k, sq, _ := parsePayload(e.Original.Payload)
				if r.purged[k] == nil {
					r.purged[k] = map[int]bool{}
				}
				r.purged[k][sq] = true
			}
		}
		r.mu.Unlock()
		r.logf("  purged %d of %s (%v)", n, strings.Join(names, " "), err)
		r.noteGone(entries, "op-purge")
		if n != len(entries) {
			// An entry redriven between List and Purge: which ones were
			// marked is unknown; resolve them one by one.
			r.resolvePurge(entries)
		}
	case sFix:
		r.mu.Lock()
		var fixed []int
		for _, in := range r.inputs[s.key] {
			if in.poisoned && !in.fixed {
				in.fixed = true
				fixed = append(fixed, in.spec.seq)
			}
		}
		r.mu.Unlock()
		r.logf("  fixed seqs %v", fixed)
	case sBreak:
		r.mu.Lock()
		in := r.inputs[s.key][s.seq]
		in.poisoned, in.fixed = true, false
		r.mu.Unlock()
	case sWait:
	}
}

// noteGone records, as an event of the operator, which of the entries
// dead before an operator step are no longer dead after it (for the
// histories a failure prints; in the meantime a consumer may have
// redriven some too).
func (r *simRun) noteGone(before []dlq.Entry, kind consumer.EventKind) {
	after, err := r.q.List(r.ctx, dlq.Filter{})
	if err != nil {
		return
	}
	still := map[ferry.ID]bool{}
	for _, e := range after {
		still[e.Original.ID] = true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range before {
		if !still[e.Original.ID] {
			k, sq, _ := parsePayload(e.Original.Payload)
			r.events = append(r.events, event{tick: r.tickLocked(), kind: kind, member: "operator", key: k, seq: sq, id: e.Original.ID, class: e.Class})
		}
	}
}

// resolvePurge records as purged those of entries whose latest state is
// purged.
func (r *simRun) resolvePurge(entries []dlq.Entry) {
	for _, e := range entries {
		got, err := r.q.Get(r.ctx, e.Original.ID)
		if err == nil && got.State == dlq.StatePurged {
			k, sq, _ := parsePayload(e.Original.Payload)
			r.mu.Lock()
			if r.purged[k] == nil {
				r.purged[k] = map[int]bool{}
			}
			r.purged[k][sq] = true
			r.mu.Unlock()
			r.logf("  %s purged", e.Original.Payload)
		}
	}
}

func (r *simRun) start() *member {
	sc := r.sc
	r.nextID++
	m := &member{n: r.nextID, id: fmt.Sprintf("m%d", r.nextID), mb: &memberBackend{base: r.b, session: r.w.Session, freeze: r.w.HeartbeatsByCaller}, done: make(chan struct{}), crashCh: make(chan struct{}), state: "running"}
	opts := []consumer.Opt{
		consumer.WithMember(m.id),
		consumer.WithConcurrency(sc.concurrency),
		consumer.WithRetryPolicy(retry.Policy{InitialBackoff: sc.d(time.Millisecond), MaxBackoff: sc.d(4 * time.Millisecond), MaxAttempts: sc.maxAttempts}),
		consumer.WithCommitInterval(sc.commitEvery),
		consumer.WithHeartbeatInterval(sc.heartbeat),
		consumer.WithSeed(sc.seed*31 + uint64(m.n)),
		consumer.WithObserver(r.observer()),
	}
	if sc.durable {
		opts = append(opts, consumer.WithDurableRetry(sc.d(simDurable)))
	} else {
		opts = append(opts, consumer.WithDurableRetry(0))
	}
	if sc.maxParked > 0 {
		opts = append(opts, consumer.WithMaxParkedKeys(sc.maxParked))
	}
	if sc.eo {
		store, err := idempotency.OpenLog(r.ctx, r.b, simStore, time.Hour, 100000)
		if err != nil {
			r.t.Fatal(err)
		}
		opts = append(opts, consumer.WithExactlyOnce(store))
	}
	c, err := consumer.New(m.mb.forConsumer(), simGroup, []string{simTopic}, r.handler(m), opts...)
	if err != nil {
		r.t.Fatal(err)
	}
	m.c = c
	ctx, cancel := context.WithCancel(r.ctx)
	m.cancel = cancel
	go func() {
		defer close(m.done)
		m.err = c.Run(ctx)
	}()
	r.members = append(r.members, m)
	r.mu.Lock()
	m.started = r.tickLocked()
	r.mu.Unlock()
	r.logf("  %s started", m.id)
	return m
}

var (
	errPoison    = errors.New("sim: poison")
	errTransient = errors.New("sim: transient failure")
	errLater     = errors.New("sim: come back later")
)

func (r *simRun) handler(m *member) consumer.Handler {
	return func(ctx context.Context, msg *ferry.Message) (err error) {
		key, seq, ok := parsePayload(msg.Payload)
		if !ok {
			return ferry.Permanent(fmt.Errorf("sim: payload %q is not key/seq", msg.Payload))
		}
		of, _ := msg.Header(dlq.HeaderRedriveOf)
		r.mu.Lock()
		iv := &invocation{member: m.id, key: key, seq: seq, id: msg.ID, redriveOf: string(of), attempt: consumer.Attempt(ctx), start: r.tickLocked()}
		r.invs = append(r.invs, iv)
		if m.crashed {
			iv.end, iv.outcome = iv.start, "zombie(after crash)"
			r.mu.Unlock()
			return errCrashed
		}
		if m.mb.pausedEver.Load() && !time.Now().Before(m.mb.lease()) {
			iv.outcome = "started past its member's lease"
			r.leaseViolations = append(r.leaseViolations, iv)
		}
		if seq >= len(r.inputs[key]) {
			iv.end, iv.outcome = r.tickLocked(), "unknown input"
			r.mu.Unlock()
			return ferry.Permanent(fmt.Errorf("sim: unknown input %s/%d", key, seq))
		}
		in := r.inputs[key][seq]
		var fail error
		var boom bool
		var delay time.Duration
		outcome := "ok"
		switch {
		case in.poisoned && !in.fixed && !r.allFixed:
			fail, outcome = ferry.Permanent(errPoison), "poison"
		case in.spec.mode == bTransient && in.failed < in.spec.n:
			in.failed++
			fail, outcome = errTransient, fmt.Sprintf("transient %d/%d", in.failed, in.spec.n)
		case in.spec.mode == bPanic && !in.panicked:
			in.panicked, boom, outcome = true, true, "panic"
		case in.spec.mode == bRetryAfter && !in.deferred:
			in.deferred = true
			fail, outcome = ferry.RetryAfter(errLater, in.spec.delay), "retry-after "+in.spec.delay.String()
		case in.spec.mode == bSlow:
			delay = in.spec.delay
		}
		r.mu.Unlock()
		finish := func(outcome string) {
			r.mu.Lock()
			defer r.mu.Unlock()
			iv.end = r.tickLocked()
			if m.crashed {
				// The process died while this ran: it ends at the crash
				// and had no effect.
				iv.end, iv.outcome = m.crashAt, "cut by crash ("+outcome+")"
				err = errCrashed
				return
			}
			iv.outcome = outcome
			if m.mb.pausedEver.Load() && !time.Now().Before(m.mb.lease()) {
				iv.pastLease = true
			}
		}
		if delay > 0 {
			tm := time.NewTimer(delay)
			select {
			case <-tm.C:
			case <-ctx.Done():
				tm.Stop()
				finish("canceled")
				return ctx.Err()
			case <-m.crashCh:
				tm.Stop()
				finish("crash")
				return errCrashed
			}
		}
		if boom {
			finish(outcome)
			panic("sim: panic once")
		}
		if fail == nil && r.sc.eo {
			if e := consumer.Emit(ctx, &ferry.Message{ID: ferry.NewID(), Topic: simOut, Key: []byte(key), Payload: msg.Payload}); e != nil {
				fail, outcome = e, "emit failed: "+e.Error()
			}
			if r.mutation("dup") {
				consumer.Emit(ctx, &ferry.Message{ID: ferry.NewID(), Topic: simOut, Key: []byte(key), Payload: msg.Payload})
			}
		}
		if fail == nil {
			r.mu.Lock()
			if last := len(r.inputs[key]) - 1; last > seq+1 && r.mutate == "order" && !r.mutated {
				r.mutated = true
				r.events = append(r.events, event{tick: r.tickLocked(), kind: consumer.EventHandled, member: "fake", key: key, seq: last})
			}
			if r.mutate == "overlap" && !r.mutated {
				r.mutated = true
				r.invs = append(r.invs, &invocation{member: "fake", key: key, seq: seq, start: iv.start, end: r.tickLocked(), outcome: "fake"})
			}
			r.mu.Unlock()
		}
		err = fail
		finish(outcome)
		return err
	}
}

func (r *simRun) observer() func(consumer.Event) {
	return func(e consumer.Event) {
		ev := event{kind: e.Kind, member: e.Member, attempt: e.Attempt, class: e.Class, seq: -1}
		if e.Message != nil {
			ev.id = e.Message.ID
			ev.key = string(e.Message.Key)
			if k, s, ok := parsePayload(e.Message.Payload); ok {
				ev.key, ev.seq = k, s
			}
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		if e.Kind == consumer.EventHandled && r.mutate == "lost" && !r.mutated {
			r.mutated = true
			return
		}
		ev.tick = r.tickLocked()
		r.events = append(r.events, ev)
	}
}

// mutation reports, once per run, whether the checker self-test m is on.
func (r *simRun) mutation(m string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mutate != m || r.mutated {
		return false
	}
	r.mutated = true
	return true
}

// handledSeqs returns, per key, the seqs handled so far: a success the
// runtime reported, or, under exactly-once (outs: the outputs in "out"),
// an attempt abandoned whose output is in outs. A backend may finish a
// transaction after its caller stopped waiting (Kafka: PublishAndCommit
// returns "outcome unknown" when its context ends first), so the member
// reports the input abandoned while its output and offset, or its
// entry's "redriven" marker, committed: that input was handled, once.
func (r *simRun) handledSeqs(outs map[string]map[int]int) map[string]map[int]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := map[string]map[int]bool{}
	for _, e := range r.events {
		if e.seq >= 0 && (e.kind == consumer.EventHandled || e.kind == consumer.EventAbandoned && outs[e.key][e.seq] > 0) {
			if h[e.key] == nil {
				h[e.key] = map[int]bool{}
			}
			h[e.key][e.seq] = true
		}
	}
	return h
}

// missing lists the inputs neither handled nor purged.
func (r *simRun) missing() []string {
	var outs map[string]map[int]int
	if r.sc.eo {
		outs = r.readOutputs()
	}
	h := r.handledSeqs(outs)
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, k := range sortedKeys(r.inputs) {
		for _, in := range r.inputs[k] {
			if !h[k][in.spec.seq] && !r.purged[k][in.spec.seq] {
				out = append(out, in.spec.name())
			}
		}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool {
		a, _ := strconv.Atoi(strings.TrimPrefix(ks[i], "k"))
		b, _ := strconv.Atoi(strings.TrimPrefix(ks[j], "k"))
		return a < b || a == b && ks[i] < ks[j]
	})
	return ks
}

func (r *simRun) drain() {
	r.mu.Lock()
	r.allFixed = true
	r.mu.Unlock()
	r.logf("drain: every input fixed")
	if len(r.running()) == 0 {
		r.start()
	}
	began := time.Now()
	limit, stall := r.sc.d(simDrainLimit), r.sc.d(simDrainStall)
	deadline := began.Add(limit)
	// A drain that handles nothing new for stall is stuck: waiting
	// longer only grows the DLQ (each redrive may park the copies again).
	progress, lastProgress := -1, began
	for {
		dead, err := r.q.List(r.ctx, dlq.Filter{})
		miss := r.missing()
		if err == nil && len(dead) == 0 && len(miss) == 0 {
			r.logf("drain: quiescent after %v", time.Since(began))
			return
		}
		if len(miss) != progress {
			progress, lastProgress = len(miss), time.Now()
		}
		stalled := time.Since(lastProgress) > stall
		if stalled || time.Now().After(deadline) {
			r.dead = dead
			why := fmt.Sprintf("not quiescent after %v", time.Since(began))
			if stalled {
				why = fmt.Sprintf("stuck: nothing new handled for %v (%v into the drain)", stall, time.Since(began))
			}
			r.drainErr = fmt.Sprintf("%s: %d dead entries (list err %v), missing inputs %v", why, len(dead), err, miss)
			for _, m := range r.running() {
				r.stats = append(r.stats, fmt.Sprintf("%s: %+v", m.id, m.c.Stats()))
			}
			r.logf("drain: %s", r.drainErr)
			return
		}
		if len(dead) > 0 {
			if _, err := r.q.Redrive(r.ctx, dlq.RedriveOpts{}); err != nil {
				r.logf("drain: redrive: %v", err)
			}
			r.noteGone(dead, "drain-redrive")
		}
		time.Sleep(r.sc.d(simDrainPoll))
	}
}

// ---------------------------------------------------------------------------
// Checker

type violation struct {
	invariant string
	what      string
	keys      []string // keys whose history to print
}

func (r *simRun) check() []violation {
	var out []violation
	add := func(inv, what string, keys ...string) {
		out = append(out, violation{invariant: inv, what: what, keys: keys})
	}
	if r.drainErr != "" {
		add("quiescence", r.drainErr)
	}
	for _, s := range r.stuck {
		add("stop", s)
	}
	// 6: single ownership: a paused member starts nothing once its lease
	// has ended (its partitions may be another's by then).
	for i, iv := range r.leaseViolations {
		if i == 3 {
			break
		}
		add("lease", fmt.Sprintf("key %s: %v started after its member's lease ended", iv.key, iv), iv.key)
	}
	handled := r.handledSeqs(r.outputs)

	// 1 and 5: lost inputs; accounting.
	for _, k := range sortedKeys(r.inputs) {
		var lost []int
		for _, in := range r.inputs[k] {
			if !handled[k][in.spec.seq] && !r.purged[k][in.spec.seq] {
				lost = append(lost, in.spec.seq)
			}
		}
		if len(lost) > 0 {
			add("lost", fmt.Sprintf("key %s: seqs %v neither handled nor purged", k, lost), k)
		}
	}
	for _, k := range sortedKeys(handled) {
		for s := range handled[k] {
			if s >= len(r.inputs[k]) {
				add("dlq-accounting", fmt.Sprintf("%s/%d handled but never published", k, s), k)
			}
		}
	}
	if len(r.dead) > 0 {
		var names []string
		for _, e := range r.dead {
			names = append(names, fmt.Sprintf("%s(%s)", e.Original.Payload, e.Class))
		}
		add("dlq-accounting", fmt.Sprintf("%d entries still dead at the end: %s", len(r.dead), strings.Join(names, " ")))
	}

	// 2: order of first successful handling.
	first := map[string][]int{}
	firstEv := map[string]map[int]event{}
	for _, e := range r.events {
		if e.kind != consumer.EventHandled || e.seq < 0 {
			continue
		}
		if firstEv[e.key] == nil {
			firstEv[e.key] = map[int]event{}
		}
		if _, ok := firstEv[e.key][e.seq]; !ok {
			firstEv[e.key][e.seq] = e
			first[e.key] = append(first[e.key], e.seq)
		}
	}
	started := map[string]uint64{}
	for _, m := range r.members {
		started[m.id] = m.started
	}
	for _, k := range sortedKeys(first) {
		last := -1
		for _, s := range first[k] {
			if r.purged[k][s] {
				continue
			}
			if s < last {
				// Where the earlier seq was when the later one was handled.
				later := firstEv[k][last]
				where := "no event yet"
				for _, e := range r.events {
					if e.tick > later.tick {
						break
					}
					if e.key == k && e.seq == s && e.kind != consumer.EventStarted {
						where = e.String()
					}
				}
				add("order", fmt.Sprintf("key %s: %s/%d first handled after %s/%d (first handlings, purged ignored: %v); %s/%d was handled %s (member started @%d), when %s/%d's last event was: %s",
					k, k, s, k, last, withoutPurged(first[k], r.purged[k]), k, last, later, started[later.member], k, s, where), k)
				break
			}
			last = s
		}
	}

	// 3: overlapping invocations of one key.
	crashAt := map[string]uint64{}
	for _, m := range r.members {
		if m.crashed {
			crashAt[m.id] = m.crashAt
		}
	}
	byKey := map[string][]*invocation{}
	for _, iv := range r.invs {
		if strings.HasPrefix(iv.outcome, "zombie") || iv.pastLease {
			continue
		}
		byKey[iv.key] = append(byKey[iv.key], iv)
	}
	endOf := func(iv *invocation) uint64 {
		e := iv.end
		if e == 0 {
			e = ^uint64(0)
		}
		if c, ok := crashAt[iv.member]; ok && c < e {
			e = c
		}
		return e
	}
	for _, k := range sortedKeys(byKey) {
		ivs := byKey[k]
		sort.Slice(ivs, func(i, j int) bool { return ivs[i].start < ivs[j].start })
		n := 0
		for i := 1; i < len(ivs) && n < 3; i++ {
			for j := 0; j < i; j++ {
				if endOf(ivs[j]) > ivs[i].start {
					add("overlap", fmt.Sprintf("key %s: %v and %v ran at once", k, ivs[j], ivs[i]), k)
					n++
					break
				}
			}
		}
	}

	// 4: exactly one output per handled input.
	if r.sc.eo {
		for _, k := range sortedKeys(r.inputs) {
			for _, in := range r.inputs[k] {
				s := in.spec.seq
				got := r.outputs[k][s]
				want := 0
				if handled[k][s] {
					want = 1
				}
				if got != want {
					add("exactly-once", fmt.Sprintf("%s/%d: %d outputs in %q, want %d (handled=%v purged=%v)", k, s, got, simOut, want, handled[k][s], r.purged[k][s]), k)
				}
			}
		}
	}
	return out
}

func withoutPurged(seqs []int, purged map[int]bool) []int {
	var out []int
	for _, s := range seqs {
		if !purged[s] {
			out = append(out, s)
		}
	}
	return out
}

// report describes the run and its violations; rerun is the command that
// runs the seed again.
func (r *simRun) report(fails []violation, rerun string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "simulation %s\n", r.sc)
	fmt.Fprintf(&b, "rerun: %s\n", rerun)
	if len(fails) == 0 {
		b.WriteString("all invariants hold\n")
	}
	invariants := map[string]int{}
	var keys []string
	for _, f := range fails {
		invariants[f.invariant]++
		for _, k := range f.keys {
			if !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	if len(fails) > 0 {
		var names []string
		for _, n := range sortedKeys(invariants) {
			names = append(names, fmt.Sprintf("%s×%d", n, invariants[n]))
		}
		fmt.Fprintf(&b, "VIOLATED: %s\n", strings.Join(names, ", "))
	}
	for i, f := range fails {
		if i == 20 {
			fmt.Fprintf(&b, "... %d more violations\n", len(fails)-i)
			break
		}
		fmt.Fprintf(&b, "  [%s] %s\n", f.invariant, f.what)
	}
	b.WriteString("scenario and what each step did:\n")
	for _, l := range r.log {
		b.WriteString("  " + l + "\n")
	}
	for _, s := range r.stats {
		b.WriteString("  stats " + s + "\n")
	}
	if len(keys) > 6 {
		keys = keys[:6]
	}
	for _, k := range keys {
		fmt.Fprintf(&b, "history of key %s (purged %v):\n", k, sortedInts(r.purged[k]))
		var lines []struct {
			tick uint64
			s    string
		}
		for _, iv := range r.invs {
			if iv.key == k {
				lines = append(lines, struct {
					tick uint64
					s    string
				}{iv.start, "  invocation " + iv.String()})
			}
		}
		for _, e := range r.events {
			if e.key == k && e.kind != consumer.EventStarted {
				lines = append(lines, struct {
					tick uint64
					s    string
				}{e.tick, "  event      " + e.String()})
			}
		}
		sort.SliceStable(lines, func(i, j int) bool { return lines[i].tick < lines[j].tick })
		if len(lines) > 200 {
			fmt.Fprintf(&b, "  (%d lines, last 200)\n", len(lines))
			lines = lines[len(lines)-200:]
		}
		for _, l := range lines {
			b.WriteString(l.s + "\n")
		}
	}
	return b.String()
}

func sortedInts(m map[int]bool) []int {
	var out []int
	for s := range m {
		out = append(out, s)
	}
	sort.Ints(out)
	return out
}
