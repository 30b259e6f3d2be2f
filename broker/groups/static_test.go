package groups

import (
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

func staticReq(group, member, instance string, ps []kmsg.JoinGroupRequestProtocol) *kmsg.JoinGroupRequest {
	r := joinReq(group, member, ps)
	r.InstanceID = kmsg.StringPtr(instance)
	return r
}

func (c *Coordinator) hbStatic(group, member, instance string, gen int32) int16 {
	req := kmsg.NewPtrHeartbeatRequest()
	req.Group, req.MemberID, req.Generation = group, member, gen
	req.InstanceID = kmsg.StringPtr(instance)
	return c.Heartbeat(4, req).ErrorCode
}

// staticPair forms a Stable group of static members i1 (the leader) and
// i2, assigned "one" and "two".
func (c *Coordinator) staticPair(t *testing.T) (a, b string, gen int32) {
	t.Helper()
	ra := c.Join(ctxClient, 9, staticReq("g", "", "i1", protos("range")))
	wantCode(t, "static join", ra.ErrorCode, 0) // no MEMBER_ID_REQUIRED for static members
	a = ra.MemberID
	if !strings.HasPrefix(a, "i1-") {
		t.Fatalf("static member ID %q, want i1-<uuid>", a)
	}
	chB := c.goJoin(9, staticReq("g", "", "i2", protos("range")))
	chA := c.goJoin(9, staticReq("g", a, "i1", protos("range")))
	rb, ra := done(t, chB), done(t, chA)
	wantCode(t, "b", rb.ErrorCode, 0)
	wantCode(t, "a", ra.ErrorCode, 0)
	b, gen = rb.MemberID, ra.Generation
	if got := *ra.Members[1].InstanceID; got != "i2" {
		t.Fatalf("leader sees instance %q", got)
	}
	sb := c.goSync(5, "g", b, gen, nil)
	sa := c.goSync(5, "g", a, gen, map[string]string{a: "one", b: "two"})
	done(t, sa)
	done(t, sb)
	return a, b, gen
}

func TestStaticMemberRestartsWithoutRebalance(t *testing.T) {
	bubble(t, func(t *testing.T) {
		c := newTest(t)
		a, b, gen := c.staticPair(t)

		// The leader restarts: same instance, same metadata, new member ID.
		r := c.Join(ctxClient, 9, staticReq("g", "", "i1", protos("range")))
		wantCode(t, "restart", r.ErrorCode, 0)
		a2 := r.MemberID
		if a2 == a || r.Generation != gen || r.LeaderID != a2 || !r.SkipAssignment {
			t.Fatalf("restart: member %s (old %s) gen %d leader %s skip %v", a2, a, r.Generation, r.LeaderID, r.SkipAssignment)
		}
		wantCode(t, "b is not disturbed", c.hb("g", b, gen), 0)
		if s := c.state("g"); s != "Stable" {
			t.Fatalf("state %s", s)
		}
		if sr := done(t, c.goSync(5, "g", a2, gen, nil)); string(sr.MemberAssignment) != "one" {
			t.Fatalf("restarted member's assignment %q, want its old one", sr.MemberAssignment)
		}

		// The old incarnation is fenced.
		wantCode(t, "old heartbeat with instance", c.hbStatic("g", a, "i1", gen), kerr.FencedInstanceID.Code)
		wantCode(t, "old heartbeat without instance", c.hb("g", a, gen), kerr.UnknownMemberID.Code)
		wantCode(t, "old join", c.Join(ctxClient, 9, staticReq("g", a, "i1", protos("range"))).ErrorCode, kerr.FencedInstanceID.Code)
		old := syncReq("g", a, gen, nil)
		old.InstanceID = kmsg.StringPtr("i1")
		wantCode(t, "old sync", done(t, async(func() *kmsg.SyncGroupResponse { return c.Sync(ctxClient, 5, old) })).ErrorCode, kerr.FencedInstanceID.Code)
		wantCode(t, "new heartbeat", c.hbStatic("g", a2, "i1", gen), 0)

		// Below v9 the leader gets no SkipAssignment.
		r = c.Join(ctxClient, 8, staticReq("g", "", "i1", protos("range")))
		if r.ErrorCode != 0 || r.SkipAssignment || r.Generation != gen {
			t.Fatalf("v8 restart: %s skip %v", codeName(r.ErrorCode), r.SkipAssignment)
		}
	})
}

func TestStaticMemberRestartWithChangesRebalances(t *testing.T) {
	bubble(t, func(t *testing.T) {
		c := newTest(t)
		a, _, gen := c.staticPair(t)
		changed := protos("range")
		changed[0].Metadata = []byte("other topics")
		chB := c.goJoin(9, staticReq("g", "", "i2", changed))
		stillBlocked(t, chB)
		wantCode(t, "a", c.hbStatic("g", a, "i1", gen), kerr.RebalanceInProgress.Code)
		chA := c.goJoin(9, staticReq("g", a, "i1", protos("range")))
		rb, ra := done(t, chB), done(t, chA)
		if rb.ErrorCode != 0 || rb.Generation != gen+1 || ra.Generation != gen+1 || len(ra.Members) != 2 {
			t.Fatalf("rebalance: %s gen %d/%d", codeName(rb.ErrorCode), rb.Generation, ra.Generation)
		}
	})
}

func TestStaticMemberRestartsDuringRebalance(t *testing.T) {
	bubble(t, func(t *testing.T) {
		c := newTest(t)
		a, b, gen := c.staticPair(t)
		// The leader rejoins: a rebalance waits for b.
		chA := c.goJoin(9, staticReq("g", a, "i1", protos("range")))
		stillBlocked(t, chA)
		wantCode(t, "b heartbeat", c.hbStatic("g", b, "i2", gen), kerr.RebalanceInProgress.Code)
		// b restarts meanwhile: its new incarnation takes the old one's
		// place and completes the join.
		rn := done(t, c.goJoin(9, staticReq("g", "", "i2", protos("range"))))
		ra := done(t, chA)
		if rn.ErrorCode != 0 || rn.MemberID == b || ra.Generation != gen+1 || len(ra.Members) != 2 {
			t.Fatalf("replaced during rebalance: %s gen %d members %d", codeName(rn.ErrorCode), ra.Generation, len(ra.Members))
		}
		for _, m := range ra.Members {
			if m.MemberID == b {
				t.Fatalf("the leader still sees b's old incarnation")
			}
		}
		wantCode(t, "old b", c.hbStatic("g", b, "i2", gen+1), kerr.FencedInstanceID.Code)
	})
}

func TestStaticMemberFencedWhileWaiting(t *testing.T) {
	bubble(t, func(t *testing.T) {
		c := newTest(t)
		a, b, gen := c.staticPair(t)
		// b's old incarnation is blocked in Join (a has not rejoined yet).
		changed := protos("range")
		changed[0].Metadata = []byte("v2")
		chOld := c.goJoin(9, staticReq("g", b, "i2", changed))
		stillBlocked(t, chOld)
		chNew := c.goJoin(9, staticReq("g", "", "i2", changed))
		wantCode(t, "blocked old incarnation", done(t, chOld).ErrorCode, kerr.FencedInstanceID.Code)
		stillBlocked(t, chNew)
		chA := c.goJoin(9, staticReq("g", a, "i1", protos("range")))
		if r := done(t, chNew); r.ErrorCode != 0 || r.Generation != gen+1 {
			t.Fatalf("new incarnation: %s gen %d", codeName(r.ErrorCode), r.Generation)
		}
		done(t, chA)
	})
}

func TestStaticLeave(t *testing.T) {
	bubble(t, func(t *testing.T) {
		c := newTest(t)
		a, b, gen := c.staticPair(t)
		req := kmsg.NewPtrLeaveGroupRequest()
		req.Group = "g"
		wrong := kmsg.NewLeaveGroupRequestMember()
		wrong.MemberID, wrong.InstanceID = a, kmsg.StringPtr("i2") // i2 is b's
		byInstance := kmsg.NewLeaveGroupRequestMember()
		byInstance.InstanceID = kmsg.StringPtr("i2")
		unknown := kmsg.NewLeaveGroupRequestMember()
		unknown.InstanceID = kmsg.StringPtr("i9")
		req.Members = []kmsg.LeaveGroupRequestMember{wrong, byInstance, unknown}
		r := c.Leave(4, req)
		want := []int16{kerr.FencedInstanceID.Code, 0, kerr.UnknownMemberID.Code}
		for i, m := range r.Members {
			wantCode(t, "leave member", m.ErrorCode, want[i])
		}
		wantCode(t, "b left", c.hb("g", b, gen), kerr.UnknownMemberID.Code)
		wantCode(t, "a must rejoin", c.hb("g", a, gen), kerr.RebalanceInProgress.Code)
		// The instance is free again: a new i2 joins as a new member.
		if r := c.Join(ctxClient, 9, staticReq("g", "", "i2", protos("range"))); r.ErrorCode != 0 && r.ErrorCode != kerr.RebalanceInProgress.Code {
			t.Fatalf("i2 again: %s", codeName(r.ErrorCode))
		}
	})
}

func TestInstanceIDIgnoredBelowV5(t *testing.T) {
	bubble(t, func(t *testing.T) {
		c := newTest(t)
		r := c.Join(ctxClient, 4, staticReq("g", "", "i1", protos("range")))
		wantCode(t, "v4 with an instance ID is dynamic", r.ErrorCode, kerr.MemberIDRequired.Code)
	})
}
