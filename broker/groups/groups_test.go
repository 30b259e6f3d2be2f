package groups

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

func TestJoinMemberIDRequired(t *testing.T) {
	bubble(t, func(t *testing.T) {
		c := newTest(t)
		r := c.Join(ctxClient, 4, joinReq("g", "", protos("range")))
		wantCode(t, "v4 first join", r.ErrorCode, kerr.MemberIDRequired.Code)
		if !strings.HasPrefix(r.MemberID, "client-") || len(r.MemberID) != len("client-")+36 {
			t.Fatalf("member ID %q, want client-<uuid>", r.MemberID)
		}
		if c.state("g") != "Empty" {
			t.Fatalf("a pending member must not start a rebalance: %s", c.state("g"))
		}
		// Within the session timeout the ID is accepted.
		advance(testSession - time.Millisecond)
		j := c.Join(ctxClient, 4, joinReq("g", r.MemberID, protos("range")))
		wantCode(t, "rejoin", j.ErrorCode, 0)
		if j.Generation != 1 || j.LeaderID != r.MemberID || j.MemberID != r.MemberID {
			t.Fatalf("rejoin: %+v", j)
		}

		// One that does not come back within its session is dropped.
		r = c.Join(ctxClient, 9, joinReq("h", "", protos("range")))
		wantCode(t, "v9 first join", r.ErrorCode, kerr.MemberIDRequired.Code)
		advance(testSession)
		j = c.Join(ctxClient, 9, joinReq("h", r.MemberID, protos("range")))
		wantCode(t, "late rejoin", j.ErrorCode, kerr.UnknownMemberID.Code)

		// v3 and older get the ID at once.
		j = c.Join(ctxClient, 3, joinReq("old", "", protos("range")))
		wantCode(t, "v3 join", j.ErrorCode, 0)
		if !strings.HasPrefix(j.MemberID, "client-") || j.Generation != 1 {
			t.Fatalf("v3 join: %+v", j)
		}
	})
}

func TestPendingMemberHoldsUpJoin(t *testing.T) {
	bubble(t, func(t *testing.T) {
		c := newTest(t)
		ids, gen := c.stable(t, "g", 1)
		p := c.memberID(t, "g") // told MEMBER_ID_REQUIRED, never rejoins
		q := c.memberID(t, "g")
		chQ := c.goJoin(9, joinReq("g", q, protos("range")))
		chA := c.goJoin(9, joinReq("g", ids[0], protos("range")))
		stillBlocked(t, chA)
		// Once p's session ends it no longer holds the group up.
		advance(testSession - time.Millisecond)
		stillBlocked(t, chA)
		advance(time.Millisecond)
		if r := done(t, chA); r.ErrorCode != 0 || r.Generation != gen+1 || len(r.Members) != 2 {
			t.Fatalf("a: %s gen %d members %d", codeName(r.ErrorCode), r.Generation, len(r.Members))
		}
		done(t, chQ)
		wantCode(t, "p", c.Join(ctxClient, 9, joinReq("g", p, protos("range"))).ErrorCode, kerr.UnknownMemberID.Code)
	})
}

func TestJoinValidation(t *testing.T) {
	bubble(t, func(t *testing.T) {
		c := newTest(t, WithSessionTimeoutBounds(time.Second, time.Minute))
		req := joinReq("", "", protos("range"))
		wantCode(t, "empty group", c.Join(ctxClient, 9, req).ErrorCode, kerr.InvalidGroupID.Code)
		req = joinReq("g", "", protos("range"))
		req.SessionTimeoutMillis = 999
		wantCode(t, "short session", c.Join(ctxClient, 9, req).ErrorCode, kerr.InvalidSessionTimeout.Code)
		req.SessionTimeoutMillis = 60001
		wantCode(t, "long session", c.Join(ctxClient, 9, req).ErrorCode, kerr.InvalidSessionTimeout.Code)
		req = joinReq("g", "", nil)
		wantCode(t, "no protocols", c.Join(ctxClient, 9, req).ErrorCode, kerr.InconsistentGroupProtocol.Code)
		req = joinReq("g", "nobody", protos("range"))
		req.SessionTimeoutMillis = 10000
		wantCode(t, "unknown member, unknown group", c.Join(ctxClient, 9, req).ErrorCode, kerr.UnknownMemberID.Code)
		if got := c.List(5, kmsg.NewPtrListGroupsRequest()).Groups; len(got) != 0 {
			t.Fatalf("failed joins left groups behind: %+v", got)
		}
	})
}

func TestProtocolSelection(t *testing.T) {
	bubble(t, func(t *testing.T) {
		c := newTest(t)
		ids := []string{c.memberID(t, "g")}
		a := done(t, c.goJoin(9, joinReq("g", ids[0], protos("x", "y"))))
		ids = append(ids, c.memberID(t, "g", "x"), c.memberID(t, "g", "x"))
		wantCode(t, "a", a.ErrorCode, 0)
		if *a.Protocol != "x" {
			t.Fatalf("alone, a's first choice: got %s", *a.Protocol)
		}

		// Wrong protocol type, and no protocol in common with a.
		bad := joinReq("g", ids[1], protos("x"))
		bad.ProtocolType = "connect"
		wantCode(t, "protocol type", c.Join(ctxClient, 9, bad).ErrorCode, kerr.InconsistentGroupProtocol.Code)
		wantCode(t, "no common protocol", c.Join(ctxClient, 9, joinReq("g", ids[1], protos("z"))).ErrorCode, kerr.InconsistentGroupProtocol.Code)

		// b and c prefer y: y wins the vote although the leader prefers x.
		chs := []<-chan *kmsg.JoinGroupResponse{
			c.goJoin(9, joinReq("g", ids[1], protos("y", "x"))),
			c.goJoin(9, joinReq("g", ids[2], protos("z", "y", "x"))),
			c.goJoin(9, joinReq("g", ids[0], protos("x", "y"))),
		}
		for _, ch := range chs {
			r := done(t, ch)
			wantCode(t, "join", r.ErrorCode, 0)
			if *r.Protocol != "y" {
				t.Fatalf("vote: got %s, want y", *r.Protocol)
			}
		}
		// z is not supported by all: a member offering only z is refused.
		d := c.memberID(t, "g", "y")
		wantCode(t, "z only", c.Join(ctxClient, 9, joinReq("g", d, protos("z"))).ErrorCode, kerr.InconsistentGroupProtocol.Code)
	})
}

func TestProtocolVoteTieGoesToLeader(t *testing.T) {
	bubble(t, func(t *testing.T) {
		c := newTest(t)
		a := c.memberID(t, "g", "x")
		done(t, c.goJoin(9, joinReq("g", a, protos("x", "y"))))
		b := c.memberID(t, "g", "x")
		chB := c.goJoin(9, joinReq("g", b, protos("y", "x")))
		chA := c.goJoin(9, joinReq("g", a, protos("x", "y")))
		for _, r := range []*kmsg.JoinGroupResponse{done(t, chA), done(t, chB)} {
			if r.ErrorCode != 0 || *r.Protocol != "x" {
				t.Fatalf("tie: %s %s, want the leader's x", codeName(r.ErrorCode), *r.Protocol)
			}
		}
	})
}

func TestRebalanceWaitsForEveryMember(t *testing.T) {
	bubble(t, func(t *testing.T) {
		c := newTest(t)
		ids, gen := c.stable(t, "g", 2)
		a, b := ids[0], ids[1]

		newc := c.memberID(t, "g")
		chC := c.goJoin(9, joinReq("g", newc, protos("range")))
		stillBlocked(t, chC)
		wantCode(t, "a heartbeat", c.hb("g", a, gen), kerr.RebalanceInProgress.Code)
		wantCode(t, "b heartbeat", c.hb("g", b, gen), kerr.RebalanceInProgress.Code)

		chA := c.goJoin(9, joinReq("g", a, protos("range")))
		stillBlocked(t, chA) // b has not rejoined

		// b heartbeats but never rejoins: after the rebalance timeout it
		// is out.
		for range 3 {
			advance(testRebalance / 4)
			wantCode(t, "b heartbeat", c.hb("g", b, gen), kerr.RebalanceInProgress.Code)
		}
		advance(testRebalance/4 - time.Millisecond)
		stillBlocked(t, chA)
		advance(time.Millisecond)
		ra, rc := done(t, chA), done(t, chC)
		for _, r := range []*kmsg.JoinGroupResponse{ra, rc} {
			wantCode(t, "join", r.ErrorCode, 0)
			if r.Generation != gen+1 || r.LeaderID != a {
				t.Fatalf("join: generation %d leader %s, want %d %s", r.Generation, r.LeaderID, gen+1, a)
			}
		}
		if len(ra.Members) != 2 || len(rc.Members) != 0 {
			t.Fatalf("leader got %d members, follower %d; want 2 and 0", len(ra.Members), len(rc.Members))
		}
		for _, m := range ra.Members {
			if m.MemberID != a && m.MemberID != newc || !bytes.Equal(m.ProtocolMetadata, []byte("meta-range")) {
				t.Fatalf("leader's member list: %+v", ra.Members)
			}
		}
		wantCode(t, "removed b heartbeat", c.hb("g", b, gen), kerr.UnknownMemberID.Code)
		wantCode(t, "removed b join", c.Join(ctxClient, 9, joinReq("g", b, protos("range"))).ErrorCode, kerr.UnknownMemberID.Code)
	})
}

func TestRebalanceCompletesWhenAllRejoin(t *testing.T) {
	bubble(t, func(t *testing.T) {
		c := newTest(t)
		ids, gen := c.stable(t, "g", 3)
		// A non-leader rejoining with unchanged metadata in Stable gets
		// the current generation back and starts nothing.
		r := c.Join(ctxClient, 9, joinReq("g", ids[1], protos("range")))
		if r.ErrorCode != 0 || r.Generation != gen || len(r.Members) != 0 {
			t.Fatalf("unchanged follower rejoin: %s gen %d", codeName(r.ErrorCode), r.Generation)
		}
		wantCode(t, "heartbeat", c.hb("g", ids[0], gen), 0)

		// Changed metadata starts a rebalance; it completes as soon as the
		// last member rejoins, with no wait for the timeout.
		changed := protos("range")
		changed[0].Metadata = []byte("new")
		var chs []<-chan *kmsg.JoinGroupResponse
		chs = append(chs, c.goJoin(9, joinReq("g", ids[2], changed)))
		chs = append(chs, c.goJoin(9, joinReq("g", ids[0], protos("range"))))
		stillBlocked(t, chs[1])
		chs = append(chs, c.goJoin(9, joinReq("g", ids[1], protos("range"))))
		for _, ch := range chs {
			if r := done(t, ch); r.ErrorCode != 0 || r.Generation != gen+1 {
				t.Fatalf("rejoin: %s gen %d", codeName(r.ErrorCode), r.Generation)
			}
		}
	})
}

func TestSync(t *testing.T) {
	bubble(t, func(t *testing.T) {
		c := newTest(t)
		a := c.memberID(t, "g")
		done(t, c.goJoin(9, joinReq("g", a, protos("range"))))
		b, d := c.memberID(t, "g"), c.memberID(t, "g")
		chs := []<-chan *kmsg.JoinGroupResponse{
			c.goJoin(9, joinReq("g", b, protos("range"))),
			c.goJoin(9, joinReq("g", d, protos("range"))),
		}
		// During PreparingRebalance a sync is refused.
		wantCode(t, "sync while preparing", done(t, c.goSync(5, "g", a, 1, nil)).ErrorCode, kerr.RebalanceInProgress.Code)
		chs = append(chs, c.goJoin(9, joinReq("g", a, protos("range"))))
		for _, ch := range chs {
			done(t, ch)
		}
		gen := int32(2)
		wantCode(t, "wrong generation", done(t, c.goSync(5, "g", b, gen-1, nil)).ErrorCode, kerr.IllegalGeneration.Code)
		wantCode(t, "unknown member", done(t, c.goSync(5, "g", "who", gen, nil)).ErrorCode, kerr.UnknownMemberID.Code)
		wrongType := syncReq("g", b, gen, nil)
		wrongType.ProtocolType = kmsg.StringPtr("connect")
		wantCode(t, "v5 protocol type", c.Sync(context.Background(), 5, wrongType).ErrorCode, kerr.InconsistentGroupProtocol.Code)
		wrongName := syncReq("g", b, gen, nil)
		wrongName.Protocol = kmsg.StringPtr("roundrobin")
		wantCode(t, "v5 protocol name", c.Sync(context.Background(), 5, wrongName).ErrorCode, kerr.InconsistentGroupProtocol.Code)
		// Below v5 the fields do not exist and are not checked.
		sB4 := async(func() *kmsg.SyncGroupResponse { return c.Sync(context.Background(), 4, wrongName) })

		// Followers wait for the leader; d gets no assignment.
		sD := c.goSync(5, "g", d, gen, nil)
		stillBlocked(t, sB4)
		stillBlocked(t, sD)
		sA := c.goSync(5, "g", a, gen, map[string]string{a: "for-a", b: "for-b", "stranger": "x"})
		ra, rb, rd := done(t, sA), done(t, sB4), done(t, sD)
		for _, x := range []struct {
			r    *kmsg.SyncGroupResponse
			want string
		}{{ra, "for-a"}, {rb, "for-b"}, {rd, ""}} {
			wantCode(t, "sync", x.r.ErrorCode, 0)
			if string(x.r.MemberAssignment) != x.want || x.r.MemberAssignment == nil {
				t.Fatalf("assignment %q (nil %v), want %q", x.r.MemberAssignment, x.r.MemberAssignment == nil, x.want)
			}
		}
		if *ra.ProtocolType != "consumer" || *ra.Protocol != "range" {
			t.Fatalf("v5 sync response protocol: %v %v", *ra.ProtocolType, *ra.Protocol)
		}
		if rb.ProtocolType != nil {
			t.Fatalf("v4 sync response carries a protocol type")
		}
		if c.state("g") != "Stable" {
			t.Fatalf("state %s after the leader's sync", c.state("g"))
		}
		// In Stable a sync returns the assignment at once.
		if r := done(t, c.goSync(5, "g", b, gen, nil)); r.ErrorCode != 0 || string(r.MemberAssignment) != "for-b" {
			t.Fatalf("stable sync: %s %q", codeName(r.ErrorCode), r.MemberAssignment)
		}
	})
}

func TestSyncFailsWhenRebalanceStarts(t *testing.T) {
	bubble(t, func(t *testing.T) {
		c := newTest(t)
		a := c.memberID(t, "g")
		done(t, c.goJoin(9, joinReq("g", a, protos("range"))))
		b := c.memberID(t, "g")
		chB := c.goJoin(9, joinReq("g", b, protos("range")))
		done(t, c.goJoin(9, joinReq("g", a, protos("range"))))
		done(t, chB)
		sB := c.goSync(5, "g", b, 2, nil)
		stillBlocked(t, sB)
		// The leader leaves before syncing: b's sync must not hang.
		c.leave("g", a)
		wantCode(t, "follower sync", done(t, sB).ErrorCode, kerr.RebalanceInProgress.Code)
	})
}

func TestSyncDeadline(t *testing.T) {
	bubble(t, func(t *testing.T) {
		c := newTest(t)
		a := c.memberID(t, "g")
		done(t, c.goJoin(9, joinReq("g", a, protos("range"))))
		b := c.memberID(t, "g")
		chB := c.goJoin(9, joinReq("g", b, protos("range")))
		done(t, c.goJoin(9, joinReq("g", a, protos("range"))))
		done(t, chB)
		// a (the leader) heartbeats but never syncs; b waits in Sync.
		sB := c.goSync(5, "g", b, 2, nil)
		for range int(testRebalance/time.Second) - 1 {
			advance(time.Second)
			wantCode(t, "leader heartbeat", c.hb("g", a, 2), 0)
		}
		stillBlocked(t, sB)
		advance(time.Second)
		wantCode(t, "follower sync after the deadline", done(t, sB).ErrorCode, kerr.RebalanceInProgress.Code)
		wantCode(t, "unsynced leader", c.hb("g", a, 2), kerr.UnknownMemberID.Code)
		r := c.Join(ctxClient, 9, joinReq("g", b, protos("range")))
		if r.ErrorCode != 0 || r.LeaderID != b || r.Generation != 3 {
			t.Fatalf("b alone: %s leader %s gen %d", codeName(r.ErrorCode), r.LeaderID, r.Generation)
		}
	})
}

func TestHeartbeat(t *testing.T) {
	bubble(t, func(t *testing.T) {
		c := newTest(t)
		ids, gen := c.stable(t, "g", 2)
		a, b := ids[0], ids[1]
		wantCode(t, "unknown group", c.hb("nope", a, gen), kerr.UnknownMemberID.Code)
		wantCode(t, "unknown member", c.hb("g", "who", gen), kerr.UnknownMemberID.Code)
		wantCode(t, "old generation", c.hb("g", a, gen-1), kerr.IllegalGeneration.Code)
		wantCode(t, "empty group ID", c.hb("", a, gen), kerr.InvalidGroupID.Code)

		// Heartbeats keep a alive well past its session timeout; b stops
		// and expires, which starts a rebalance.
		for range 3 {
			advance(testSession / 2)
			wantCode(t, "a heartbeat", c.hb("g", a, gen), 0)
			wantCode(t, "b heartbeat", c.hb("g", b, gen), 0)
		}
		advance(testSession / 2)
		wantCode(t, "a heartbeat", c.hb("g", a, gen), 0)
		advance(testSession/2 - time.Millisecond)
		wantCode(t, "a heartbeat just before b's expiry", c.hb("g", a, gen), 0)
		advance(time.Millisecond)
		wantCode(t, "a after b expired", c.hb("g", a, gen), kerr.RebalanceInProgress.Code)
		wantCode(t, "b after its session", c.hb("g", b, gen), kerr.UnknownMemberID.Code)
		r := c.Join(ctxClient, 9, joinReq("g", a, protos("range")))
		if r.ErrorCode != 0 || r.Generation != gen+1 || len(r.Members) != 1 {
			t.Fatalf("a alone: %s gen %d members %d", codeName(r.ErrorCode), r.Generation, len(r.Members))
		}
	})
}

func TestSessionPausedWhileBlocked(t *testing.T) {
	bubble(t, func(t *testing.T) {
		c := newTest(t)
		ids, gen := c.stable(t, "g", 2)
		newc := c.memberID(t, "g")
		chC := c.goJoin(9, joinReq("g", newc, protos("range")))
		chA := c.goJoin(9, joinReq("g", ids[0], protos("range")))
		// a commits while its Join waits (a commit counts as a heartbeat):
		// that must not start a session timer under the waiting call.
		wantCode(t, "commit while joining", c.CheckMember("g", ids[0], gen), 0)
		// a waits in Join longer than its session (10 s) but within the
		// rebalance timeout (20 s); b heartbeats and rejoins late.
		for range 3 {
			advance(testSession / 2)
			wantCode(t, "b", c.hb("g", ids[1], gen), kerr.RebalanceInProgress.Code)
		}
		chB := c.goJoin(9, joinReq("g", ids[1], protos("range")))
		for _, ch := range []<-chan *kmsg.JoinGroupResponse{chA, chB, chC} {
			if r := done(t, ch); r.ErrorCode != 0 || r.Generation != gen+1 {
				t.Fatalf("join: %s gen %d", codeName(r.ErrorCode), r.Generation)
			}
		}
	})
}

func TestLeave(t *testing.T) {
	bubble(t, func(t *testing.T) {
		c := newTest(t)
		ids, gen := c.stable(t, "g", 3)

		// v3+: a batch, with a code per member.
		r := c.leave("g", ids[2], "stranger")
		wantCode(t, "batch", r.ErrorCode, 0)
		if len(r.Members) != 2 || r.Members[0].ErrorCode != 0 || r.Members[1].ErrorCode != kerr.UnknownMemberID.Code {
			t.Fatalf("leave batch: %+v", r.Members)
		}
		wantCode(t, "rest must rejoin", c.hb("g", ids[0], gen), kerr.RebalanceInProgress.Code)
		chs := []<-chan *kmsg.JoinGroupResponse{
			c.goJoin(9, joinReq("g", ids[0], protos("range"))),
			c.goJoin(9, joinReq("g", ids[1], protos("range"))),
		}
		for _, ch := range chs {
			if r := done(t, ch); r.ErrorCode != 0 || r.Generation != gen+1 {
				t.Fatalf("rejoin: %s gen %d", codeName(r.ErrorCode), r.Generation)
			}
		}
		// v0-v2: one member, the code at the top.
		old := kmsg.NewPtrLeaveGroupRequest()
		old.Group, old.MemberID = "g", ids[1]
		wantCode(t, "v1 leave", c.Leave(1, old).ErrorCode, 0)
		wantCode(t, "v1 leave again", c.Leave(1, old).ErrorCode, kerr.UnknownMemberID.Code)
		old.MemberID = ids[0]
		wantCode(t, "last leaves", c.Leave(2, old).ErrorCode, 0)
		if s := c.state("g"); s != "Empty" {
			t.Fatalf("state %s after the last member left", s)
		}
		if r := c.leave("nope", "x"); r.ErrorCode != 0 || r.Members[0].ErrorCode != kerr.UnknownMemberID.Code {
			t.Fatalf("unknown group leave: %+v", r)
		}
	})
}

func TestLeaveWhileJoining(t *testing.T) {
	bubble(t, func(t *testing.T) {
		c := newTest(t)
		ids, gen := c.stable(t, "g", 2)
		chA := c.goJoin(9, joinReq("g", ids[0], protos("x", "range")))
		stillBlocked(t, chA)
		// b leaves instead of rejoining: a need not wait for the timeout.
		c.leave("g", ids[1])
		if r := done(t, chA); r.ErrorCode != 0 || r.Generation != gen+1 || len(r.Members) != 1 {
			t.Fatalf("a: %s gen %d", codeName(r.ErrorCode), r.Generation)
		}
		// A pending member (MEMBER_ID_REQUIRED) may leave too.
		p := c.memberID(t, "g")
		if r := c.leave("g", p); r.Members[0].ErrorCode != 0 {
			t.Fatalf("pending leave: %s", codeName(r.Members[0].ErrorCode))
		}
		wantCode(t, "pending after leave", c.Join(ctxClient, 9, joinReq("g", p, protos("range"))).ErrorCode, kerr.UnknownMemberID.Code)
	})
}

func TestJoinContextEnds(t *testing.T) {
	bubble(t, func(t *testing.T) {
		c := newTest(t)
		ids, gen := c.stable(t, "g", 1)
		a := ids[0]
		b := c.memberID(t, "g")
		ctx, cancel := context.WithCancel(ctxClient)
		chB := async(func() *kmsg.JoinGroupResponse { return c.Join(ctx, 9, joinReq("g", b, protos("range"))) })
		stillBlocked(t, chB)
		cancel()
		wantCode(t, "cancelled join", done(t, chB).ErrorCode, kerr.RebalanceInProgress.Code)
		// b was new, so it is gone and a alone completes the rebalance.
		r := c.Join(ctxClient, 9, joinReq("g", a, protos("range")))
		if r.ErrorCode != 0 || r.Generation != gen+1 || len(r.Members) != 1 {
			t.Fatalf("a: %s gen %d members %d", codeName(r.ErrorCode), r.Generation, len(r.Members))
		}
		wantCode(t, "b after its join was withdrawn", c.Join(ctxClient, 9, joinReq("g", b, protos("range"))).ErrorCode, kerr.UnknownMemberID.Code)

		// A sync whose context ends withdraws only the sync.
		ids, gen = c.stable(t, "s", 2)
		chL := c.goJoin(9, joinReq("s", ids[0], protos("range")))
		done(t, c.goJoin(9, joinReq("s", ids[1], protos("range"))))
		done(t, chL)
		sctx, scancel := context.WithCancel(context.Background())
		sB := async(func() *kmsg.SyncGroupResponse { return c.Sync(sctx, 5, syncReq("s", ids[1], gen+1, nil)) })
		stillBlocked(t, sB)
		scancel()
		wantCode(t, "cancelled sync", done(t, sB).ErrorCode, kerr.RebalanceInProgress.Code)
		wantCode(t, "b still a member", c.hb("s", ids[1], gen+1), 0)
	})
}

func TestClose(t *testing.T) {
	bubble(t, func(t *testing.T) {
		c := New(WithSessionTimeoutBounds(time.Millisecond, time.Hour))
		defer c.Close()
		ids, gen := c.stable(t, "g", 2)
		chA := c.goJoin(9, joinReq("g", ids[0], protos("range")))
		ids2, _ := c.stable(t, "h", 2)
		chL := c.goJoin(9, joinReq("h", ids2[0], protos("range")))
		done(t, c.goJoin(9, joinReq("h", ids2[1], protos("range"))))
		done(t, chL)
		sB := c.goSync(5, "h", ids2[1], 3, nil)
		stillBlocked(t, chA)
		stillBlocked(t, sB)
		c.Close()
		wantCode(t, "blocked join", done(t, chA).ErrorCode, kerr.CoordinatorNotAvailable.Code)
		wantCode(t, "blocked sync", done(t, sB).ErrorCode, kerr.CoordinatorNotAvailable.Code)
		wantCode(t, "join after close", c.Join(ctxClient, 9, joinReq("g", "", protos("range"))).ErrorCode, kerr.CoordinatorNotAvailable.Code)
		wantCode(t, "heartbeat after close", c.hb("g", ids[1], gen), kerr.CoordinatorNotAvailable.Code)
		wantCode(t, "check after close", c.CheckMember("g", ids[1], gen), kerr.CoordinatorNotAvailable.Code)
		wantCode(t, "delete after close", c.Delete("g"), kerr.CoordinatorNotAvailable.Code)
		wantCode(t, "list after close", c.List(4, kmsg.NewPtrListGroupsRequest()).ErrorCode, kerr.CoordinatorNotAvailable.Code)
		c.Close() // idempotent
		// Every timer is stopped: advancing time runs nothing.
		advance(time.Hour)
	})
}

func TestCheckMember(t *testing.T) {
	bubble(t, func(t *testing.T) {
		c := newTest(t)
		wantCode(t, "simple commit, unknown group", c.CheckMember("g", "", -1), SimpleCommit)
		wantCode(t, "generation, unknown group", c.CheckMember("g", "m", 1), kerr.IllegalGeneration.Code)
		wantCode(t, "member, no generation, unknown group", c.CheckMember("g", "m", -1), kerr.UnknownMemberID.Code)
		wantCode(t, "empty group ID", c.CheckMember("", "", -1), kerr.InvalidGroupID.Code)

		ids, gen := c.stable(t, "g", 2)
		wantCode(t, "member", c.CheckMember("g", ids[1], gen), 0)
		wantCode(t, "simple commit to a group with members", c.CheckMember("g", "", -1), kerr.UnknownMemberID.Code)
		wantCode(t, "unknown member", c.CheckMember("g", "who", gen), kerr.UnknownMemberID.Code)
		wantCode(t, "old generation", c.CheckMember("g", ids[1], gen-1), kerr.IllegalGeneration.Code)

		// PreparingRebalance: commits of the current generation are allowed.
		chA := c.goJoin(9, joinReq("g", ids[0], protos("range")))
		stillBlocked(t, chA)
		wantCode(t, "while preparing", c.CheckMember("g", ids[1], gen), 0)
		chB := c.goJoin(9, joinReq("g", ids[1], protos("range")))
		done(t, chA)
		done(t, chB)
		// CompletingRebalance: the member must sync first.
		wantCode(t, "while completing", c.CheckMember("g", ids[1], gen+1), kerr.RebalanceInProgress.Code)

		// A commit counts as a heartbeat.
		sA := c.goSync(5, "g", ids[0], gen+1, nil)
		sB := c.goSync(5, "g", ids[1], gen+1, nil)
		done(t, sA)
		done(t, sB)
		for range 3 {
			advance(testSession / 2)
			wantCode(t, "commit a", c.CheckMember("g", ids[0], gen+1), 0)
			wantCode(t, "commit b", c.CheckMember("g", ids[1], gen+1), 0)
		}
		c.leave("g", ids...)
		wantCode(t, "simple commit, empty group", c.CheckMember("g", "", -1), SimpleCommit)
	})
}

func TestDeleteDescribeList(t *testing.T) {
	bubble(t, func(t *testing.T) {
		c := newTest(t)
		wantCode(t, "unknown", c.Delete("g"), kerr.GroupIDNotFound.Code)
		ids, _ := c.stable(t, "g", 2)
		c.stable(t, "other", 1)

		d := kmsg.NewPtrDescribeGroupsRequest()
		d.Groups = []string{"g", "nope"}
		r := c.Describe(5, d)
		g := r.Groups[0]
		if g.ErrorCode != 0 || g.State != "Stable" || g.ProtocolType != "consumer" || g.Protocol != "range" || len(g.Members) != 2 {
			t.Fatalf("describe: %+v", g)
		}
		m := g.Members[1]
		if m.MemberID != ids[1] || m.ClientID != "client" || m.ClientHost != "10.0.0.1" ||
			string(m.ProtocolMetadata) != "meta-range" || string(m.MemberAssignment) != "a-1" {
			t.Fatalf("describe member: %+v", m)
		}
		if r.Groups[1].State != "Dead" || r.Groups[1].ErrorCode != 0 {
			t.Fatalf("unknown group below v6: %+v", r.Groups[1])
		}
		if r := c.Describe(6, d); r.Groups[1].ErrorCode != kerr.GroupIDNotFound.Code {
			t.Fatalf("unknown group v6: %s", codeName(r.Groups[1].ErrorCode))
		}

		wantCode(t, "non-empty", c.Delete("g"), kerr.NonEmptyGroup.Code)
		c.leave("g", ids...)

		l := kmsg.NewPtrListGroupsRequest()
		names := func(r *kmsg.ListGroupsResponse) (s []string) {
			for _, g := range r.Groups {
				s = append(s, g.Group+":"+g.GroupState+":"+g.GroupType)
			}
			return s
		}
		if got := strings.Join(names(c.List(5, l)), " "); got != "g:Empty:classic other:Stable:classic" {
			t.Fatalf("list v5: %s", got)
		}
		l.StatesFilter = []string{"empty"}
		if got := strings.Join(names(c.List(4, l)), " "); got != "g:Empty:" {
			t.Fatalf("list v4 Empty: %s", got)
		}
		if got := strings.Join(names(c.List(3, l)), " "); got != "g:: other::" {
			t.Fatalf("list v3 ignores the filter: %s", got)
		}
		l.StatesFilter, l.TypesFilter = nil, []string{"consumer"}
		if got := c.List(5, l).Groups; len(got) != 0 {
			t.Fatalf("types filter consumer: %+v", got)
		}

		wantCode(t, "delete empty", c.Delete("g"), 0)
		wantCode(t, "deleted", c.Delete("g"), kerr.GroupIDNotFound.Code)
		wantCode(t, "old member of deleted group", c.hb("g", ids[0], 1), kerr.UnknownMemberID.Code)
	})
}

func TestInitialRebalanceDelay(t *testing.T) {
	bubble(t, func(t *testing.T) {
		const delay = 3 * time.Second
		c := newTest(t, WithInitialRebalanceDelay(delay))
		a, b := c.memberID(t, "g"), c.memberID(t, "g")
		start := time.Now()
		chA := c.goJoin(9, joinReq("g", a, protos("range")))
		advance(2 * time.Second)
		chB := c.goJoin(9, joinReq("g", b, protos("range")))
		// b arrived within the delay: it is extended by another 3 s.
		advance(2 * time.Second)
		stillBlocked(t, chA)
		ra, rb := <-chA, <-chB
		if waited := time.Since(start); waited != 2*delay {
			t.Fatalf("waited %v, want %v", waited, 2*delay)
		}
		if ra.Generation != 1 || rb.Generation != 1 || len(ra.Members) != 2 {
			t.Fatalf("after the delay: gen %d %d members %d", ra.Generation, rb.Generation, len(ra.Members))
		}
		// A later rebalance does not wait for the delay.
		d := c.memberID(t, "g")
		chD := c.goJoin(9, joinReq("g", d, protos("range")))
		chA = c.goJoin(9, joinReq("g", a, protos("range")))
		chB = c.goJoin(9, joinReq("g", b, protos("range")))
		if r := done(t, chD); r.Generation != 2 {
			t.Fatalf("second rebalance gen %d", r.Generation)
		}
		done(t, chA)
		done(t, chB)
	})
}

func TestGroupMaxSize(t *testing.T) {
	bubble(t, func(t *testing.T) {
		c := newTest(t, WithMaxGroupSize(2))
		c.memberID(t, "g")
		c.memberID(t, "g")
		wantCode(t, "third", c.Join(ctxClient, 9, joinReq("g", "", protos("range"))).ErrorCode, kerr.GroupMaxSizeReached.Code)
	})
}

func TestNewPanicsOnBadOptions(t *testing.T) {
	for _, o := range []Opt{
		WithSessionTimeoutBounds(0, time.Second),
		WithSessionTimeoutBounds(time.Second, time.Millisecond),
		WithInitialRebalanceDelay(-1),
		WithLogger(nil),
		WithMaxGroupSize(-1),
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("New accepted a bad option")
				}
			}()
			New(o)
		}()
	}
}

// Make sure the helpers' bubble is what the tests think it is.
var _ = synctest.Wait
