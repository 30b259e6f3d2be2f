package groups

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

var (
	simSeed  = flag.Uint64("groups.seed", 0, "run the randomized group test with this seed only")
	simSeeds = flag.Int("groups.seeds", 40, "how many seeds the randomized group test runs")
)

// TestRandomized runs simulated members doing join, sync, heartbeat,
// leave, restart (static members), withdrawn calls and stalls (time passing
// with nobody heartbeating) in seeded random orders, and checks the
// invariants after every step. A failure names its seed; rerun it with
// -groups.seed=N.
func TestRandomized(t *testing.T) {
	seeds := make([]uint64, 0, *simSeeds)
	if *simSeed != 0 {
		seeds = append(seeds, *simSeed)
	} else {
		base := uint64(time.Now().UnixNano())
		for i := range *simSeeds {
			seeds = append(seeds, base+uint64(i))
		}
	}
	if testing.Short() && len(seeds) > 5 {
		seeds = seeds[:5]
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			bubble(t, func(t *testing.T) {
				s := newSim(t, seed)
				defer func() {
					if t.Failed() {
						t.Logf("seed %d (rerun with -run 'TestRandomized' -groups.seed=%d); last steps:\n%s", seed, seed, s.history())
					}
				}()
				for step := range 400 {
					s.step = step
					s.act()
					s.collect()
					s.check()
					if t.Failed() {
						return
					}
				}
				s.c.Close()
				s.collect()
				for _, m := range s.ms {
					if m.join != nil || m.sync != nil {
						t.Fatalf("member %d still blocked after Close", m.idx)
					}
				}
			})
		})
	}
}

type simMember struct {
	idx      int
	static   bool
	version  int16 // JoinGroup version
	meta     string
	id       string
	gen      int32 // generation of the last successful join, -1 if none
	lastGen  int32
	leader   bool
	members  []kmsg.JoinGroupResponseMember
	synced   bool
	join     <-chan *kmsg.JoinGroupResponse
	sync     <-chan *kmsg.SyncGroupResponse
	isLeader bool // the in-flight sync is the leader's
	cancel   context.CancelFunc
}

type sim struct {
	t    *testing.T
	seed uint64
	rng  *rand.Rand
	c    *Coordinator
	ms   []*simMember
	step int
	log  []string

	owner       map[string]int              // member ID → sim member that got it
	genLeader   map[int32]int               // generation → sim member that led it
	genLeaders  map[int32]map[int]bool      // generation → sim members that got the member list
	assignments map[int32]map[string]string // generation → the leader's assignment
	lastGen     int32
}

const simGroup = "sim"

func newSim(t *testing.T, seed uint64) *sim {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	s := &sim{
		t:           t,
		seed:        seed,
		rng:         rng,
		c:           newTest(t),
		owner:       map[string]int{},
		genLeader:   map[int32]int{},
		genLeaders:  map[int32]map[int]bool{},
		assignments: map[int32]map[string]string{},
	}
	n := 2 + rng.IntN(4)
	versions := []int16{3, 4, 9}
	for i := range n {
		m := &simMember{idx: i, gen: -1, lastGen: -1, meta: "m0", version: versions[rng.IntN(len(versions))]}
		if rng.IntN(3) == 0 {
			m.static, m.version = true, 9
		}
		s.ms = append(s.ms, m)
	}
	return s
}

func (s *sim) logf(format string, args ...any) {
	s.log = append(s.log, fmt.Sprintf("%4d ", s.step)+fmt.Sprintf(format, args...))
}

func (s *sim) history() string {
	from := max(0, len(s.log)-40)
	var b bytes.Buffer
	for _, l := range s.log[from:] {
		b.WriteString(l + "\n")
	}
	return b.String()
}

func (s *sim) joinReq(m *simMember) *kmsg.JoinGroupRequest {
	ps := protos("range")
	if m.idx%2 == 1 {
		ps = protos("sticky", "range")
	}
	for i := range ps {
		ps[i].Metadata = []byte(m.meta)
	}
	r := joinReq(simGroup, m.id, ps)
	r.SessionTimeoutMillis = 10000
	r.RebalanceTimeoutMillis = int32(5000 + 5000*(m.idx%3))
	if m.static {
		r.InstanceID = kmsg.StringPtr(fmt.Sprintf("i%d", m.idx))
	}
	return r
}

func (s *sim) startJoin(m *simMember) {
	ctx, cancel := context.WithCancel(ctxClient)
	m.cancel = cancel
	req := s.joinReq(m)
	s.logf("m%d join v%d id=%s meta=%s", m.idx, m.version, short(m.id), m.meta)
	m.join = async(func() *kmsg.JoinGroupResponse { return s.c.Join(ctx, m.version, req) })
}

func (s *sim) startSync(m *simMember) {
	req := syncReq(simGroup, m.id, m.gen, nil)
	m.isLeader = m.leader
	if m.leader {
		for _, jm := range m.members {
			if s.rng.IntN(5) == 0 {
				continue // the leader may leave a member out: it gets empty bytes
			}
			ga := kmsg.NewSyncGroupRequestGroupAssignment()
			ga.MemberID = jm.MemberID
			ga.MemberAssignment = fmt.Appendf(nil, "g%d-%s", m.gen, jm.MemberID)
			req.GroupAssignment = append(req.GroupAssignment, ga)
		}
	}
	ctx, cancel := context.WithCancel(ctxClient)
	m.cancel = cancel
	s.logf("m%d sync gen=%d leader=%v", m.idx, m.gen, m.leader)
	m.sync = async(func() *kmsg.SyncGroupResponse { return s.c.Sync(ctx, 5, req) })
}

func (s *sim) act() {
	r := s.rng.IntN(100)
	switch {
	case r < 12:
		d := time.Duration(s.rng.IntN(3000)) * time.Millisecond
		s.logf("time +%v", d)
		advance(d)
		return
	case r < 14:
		s.logf("stall: time +11s")
		advance(11 * time.Second)
		return
	}
	m := s.ms[s.rng.IntN(len(s.ms))]
	if m.join != nil || m.sync != nil {
		if s.rng.IntN(8) == 0 {
			s.logf("m%d withdraws its call", m.idx)
			m.cancel()
			synctest.Wait()
		}
		return
	}
	p := s.rng.IntN(100)
	switch {
	case m.id == "" || m.gen < 0:
		if m.id != "" && p < 5 {
			s.leave(m)
			return
		}
		s.startJoin(m)
	case !m.synced:
		switch {
		case p < 75:
			s.startSync(m)
		case p < 85:
			s.startJoin(m)
		default:
			s.heartbeat(m)
		}
	default:
		switch {
		case p < 60:
			s.heartbeat(m)
		case p < 70:
			s.startJoin(m)
		case p < 78:
			m.meta = fmt.Sprintf("m%d", s.rng.IntN(3))
			s.startJoin(m)
		case p < 85 && m.static:
			s.logf("m%d restarts", m.idx)
			m.id, m.gen, m.synced, m.leader = "", -1, false, false
			s.startJoin(m)
		case p < 92:
			s.leave(m)
		default:
			code := s.c.CheckMember(simGroup, m.id, m.gen)
			s.logf("m%d commit gen=%d: %s", m.idx, m.gen, codeName(code))
			if code != 0 && code != kerr.RebalanceInProgress.Code && code != kerr.UnknownMemberID.Code && code != kerr.IllegalGeneration.Code {
				s.t.Errorf("commit by m%d: %s", m.idx, codeName(code))
			}
		}
	}
}

func (s *sim) heartbeat(m *simMember) {
	code := s.c.hb(simGroup, m.id, m.gen)
	s.logf("m%d heartbeat gen=%d: %s", m.idx, m.gen, codeName(code))
	switch code {
	case 0:
	case kerr.RebalanceInProgress.Code, kerr.IllegalGeneration.Code:
		m.gen, m.synced = -1, false
	case kerr.UnknownMemberID.Code:
		s.reset(m)
	default:
		s.t.Errorf("heartbeat by m%d: %s", m.idx, codeName(code))
	}
}

func (s *sim) leave(m *simMember) {
	r := s.c.leave(simGroup, m.id)
	s.logf("m%d leaves: %s", m.idx, codeName(r.Members[0].ErrorCode))
	if c := r.Members[0].ErrorCode; c != 0 && c != kerr.UnknownMemberID.Code {
		s.t.Errorf("leave by m%d: %s", m.idx, codeName(c))
	}
	s.reset(m)
}

func (s *sim) reset(m *simMember) {
	m.id, m.gen, m.synced, m.leader, m.members = "", -1, false, false, nil
}

// collect processes every answer that has arrived: the leader's syncs
// first, so their assignments are known when the followers' are checked.
func (s *sim) collect() {
	synctest.Wait()
	answered := map[*simMember]*kmsg.JoinGroupResponse{}
	for _, m := range s.ms {
		select {
		case r := <-m.join:
			m.join = nil
			answered[m] = r
			if r.ErrorCode == 0 || r.ErrorCode == kerr.MemberIDRequired.Code {
				s.claim(m, r.MemberID) // before any answer names it as leader
			}
		default:
		}
	}
	for _, m := range s.ms {
		if r, ok := answered[m]; ok {
			s.joined(m, r)
		}
	}
	for _, leaders := range []bool{true, false} {
		for _, m := range s.ms {
			if m.sync == nil || m.isLeader != leaders {
				continue
			}
			select {
			case r := <-m.sync:
				m.sync = nil
				s.synced(m, r)
			default:
			}
		}
	}
}

func (s *sim) claim(m *simMember, id string) {
	if o, ok := s.owner[id]; ok && o != m.idx {
		s.t.Errorf("member ID %s given to m%d and m%d", id, o, m.idx)
	}
	s.owner[id] = m.idx
}

func (s *sim) joined(m *simMember, r *kmsg.JoinGroupResponse) {
	s.logf("m%d join answered: %s gen=%d id=%s leader=%s members=%d", m.idx, codeName(r.ErrorCode), r.Generation, short(r.MemberID), short(r.LeaderID), len(r.Members))
	switch r.ErrorCode {
	case kerr.MemberIDRequired.Code:
		s.claim(m, r.MemberID)
		m.id = r.MemberID
		return
	case kerr.UnknownMemberID.Code:
		s.reset(m)
		return
	case kerr.RebalanceInProgress.Code, kerr.CoordinatorNotAvailable.Code:
		m.gen, m.synced = -1, false
		return
	case 0:
	default:
		s.t.Errorf("join by m%d: %s", m.idx, codeName(r.ErrorCode))
		return
	}
	s.claim(m, r.MemberID)
	if r.Generation < m.lastGen {
		s.t.Errorf("m%d: generation went back from %d to %d", m.idx, m.lastGen, r.Generation)
	}
	m.id, m.gen, m.lastGen, m.synced = r.MemberID, r.Generation, r.Generation, false
	m.leader, m.members = r.LeaderID == r.MemberID, r.Members
	// One leader per generation (a static leader's restarts are still the
	// same sim member).
	leader, ok := s.owner[r.LeaderID]
	if !ok {
		s.t.Errorf("gen %d: leader %s is nobody's member ID", r.Generation, r.LeaderID)
	}
	if l, seen := s.genLeader[r.Generation]; seen && l != leader {
		s.t.Errorf("gen %d has two leaders: m%d and m%d", r.Generation, l, leader)
	}
	s.genLeader[r.Generation] = leader
	if len(r.Members) > 0 {
		if !m.leader {
			s.t.Errorf("gen %d: follower m%d got the member list", r.Generation, m.idx)
		}
		if s.genLeaders[r.Generation] == nil {
			s.genLeaders[r.Generation] = map[int]bool{}
		}
		s.genLeaders[r.Generation][m.idx] = true
		if len(s.genLeaders[r.Generation]) > 1 {
			s.t.Errorf("gen %d: several members got the member list: %v", r.Generation, s.genLeaders[r.Generation])
		}
		seen := map[string]bool{}
		for _, jm := range r.Members {
			if seen[jm.MemberID] {
				s.t.Errorf("gen %d: member ID %s twice in the leader's list", r.Generation, jm.MemberID)
			}
			seen[jm.MemberID] = true
		}
	}
}

func (s *sim) synced(m *simMember, r *kmsg.SyncGroupResponse) {
	s.logf("m%d sync answered: %s %q", m.idx, codeName(r.ErrorCode), r.MemberAssignment)
	switch r.ErrorCode {
	case 0:
	case kerr.UnknownMemberID.Code:
		s.reset(m)
		return
	case kerr.RebalanceInProgress.Code, kerr.IllegalGeneration.Code, kerr.CoordinatorNotAvailable.Code:
		m.gen, m.synced = -1, false
		return
	default:
		s.t.Errorf("sync by m%d: %s", m.idx, codeName(r.ErrorCode))
		return
	}
	if m.isLeader && s.assignments[m.gen] == nil {
		// The first successful leader sync of a generation decides it.
		as := map[string]string{}
		for _, jm := range m.members {
			as[jm.MemberID] = ""
		}
		s.assignments[m.gen] = as
		// What the leader sent is re-derived from the answers below:
		// every member's assignment must name its generation and itself,
		// or be empty.
	}
	as, ok := s.assignments[m.gen]
	if !ok {
		s.t.Errorf("m%d synced gen %d before its leader", m.idx, m.gen)
		return
	}
	got := string(r.MemberAssignment)
	if prev, ok := as[m.id]; ok && prev != "" && prev != got {
		s.t.Errorf("m%d gen %d: assignment %q, earlier %q", m.idx, m.gen, got, prev)
	}
	// The assignment names its generation and the member it was given
	// to: this member, or (a static member's restart keeps its
	// assignment) an earlier incarnation of it.
	if got != "" {
		prefix := fmt.Sprintf("g%d-", m.gen)
		id, ok := strings.CutPrefix(got, prefix)
		if o, known := s.owner[id]; !ok || !known || o != m.idx || id != m.id && !m.static {
			s.t.Errorf("m%d gen %d (%s): got assignment %q meant for someone else", m.idx, m.gen, short(m.id), got)
		}
	}
	as[m.id] = got
	m.synced = true
}

// check asserts the coordinator's own invariants and that they agree with
// what the simulated members were told.
func (s *sim) check() {
	t := s.t
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	g := c.groups[simGroup]
	if g == nil {
		return
	}
	if g.generation < s.lastGen {
		t.Errorf("group generation went back from %d to %d", s.lastGen, g.generation)
	}
	s.lastGen = g.generation
	if (g.leader == "") != (len(g.members) == 0) || g.leader != "" && g.members[g.leader] == nil {
		t.Errorf("leader %q with %d members", g.leader, len(g.members))
	}
	switch {
	case g.state == stateEmpty && len(g.members) > 0:
		t.Errorf("Empty with %d members", len(g.members))
	case len(g.members) == 0 && g.state != stateEmpty && !(g.state == statePreparing && len(g.pending) > 0):
		t.Errorf("%s with no members and %d pending", g.state, len(g.pending))
	}
	for inst, id := range g.static {
		if m := g.members[id]; m == nil || m.instanceID == nil || *m.instanceID != inst {
			t.Errorf("static %s → %s is not that member", inst, id)
		}
	}
	for _, m := range g.members {
		if m.instanceID != nil && g.static[*m.instanceID] != m.id {
			t.Errorf("static member %s missing from the instance map", m.id)
		}
		if m.join != nil && g.state != statePreparing {
			t.Errorf("member %s waits in Join in %s", m.id, g.state)
		}
		if m.sync != nil && g.state != stateCompleting {
			t.Errorf("member %s waits in Sync in %s", m.id, g.state)
		}
		if m.join == nil && m.sync == nil && m.session == nil {
			t.Errorf("member %s has no session timer", m.id)
		}
	}
	if g.state != stateCompleting && g.state != stateStable {
		return
	}
	if !g.allSupportLocked(g.protocol, "") {
		t.Errorf("protocol %q not supported by every member", g.protocol)
	}
	// Every member of a Completing or Stable group was told this
	// generation, by the same member that the coordinator holds it for.
	for _, m := range g.members {
		o, ok := s.owner[m.id]
		if !ok {
			t.Errorf("member %s in the group was never answered", m.id)
			continue
		}
		if sm := s.ms[o]; sm.id == m.id && sm.join == nil && sm.gen != -1 && sm.gen != g.generation {
			t.Errorf("%s gen %d: m%d holds generation %d", g.state, g.generation, o, sm.gen)
		}
		if g.state == stateStable && m.assignment == nil {
			t.Errorf("Stable member %s has no assignment", m.id)
		}
	}
	if l, ok := s.genLeader[g.generation]; ok && s.owner[g.leader] != l {
		t.Errorf("gen %d: coordinator's leader is m%d, members were told m%d", g.generation, s.owner[g.leader], l)
	}
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
