package groups

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

const (
	testSession   = 10 * time.Second
	testRebalance = 20 * time.Second
)

// newTest returns a coordinator that accepts short sessions; it must be
// called inside the synctest bubble. Close runs when the test ends.
func newTest(t *testing.T, opts ...Opt) *Coordinator {
	t.Helper()
	c := New(append([]Opt{WithSessionTimeoutBounds(time.Millisecond, time.Hour)}, opts...)...)
	t.Cleanup(c.Close)
	return c
}

func bubble(t *testing.T, f func(t *testing.T)) { synctest.Test(t, f) }

var ctxClient = ClientContext(context.Background(), "client", "10.0.0.1")

type proto struct{ name, meta string }

func protos(names ...string) []kmsg.JoinGroupRequestProtocol {
	var ps []kmsg.JoinGroupRequestProtocol
	for _, n := range names {
		p := kmsg.NewJoinGroupRequestProtocol()
		p.Name, p.Metadata = n, []byte("meta-"+n)
		ps = append(ps, p)
	}
	return ps
}

func joinReq(group, member string, ps []kmsg.JoinGroupRequestProtocol) *kmsg.JoinGroupRequest {
	r := kmsg.NewPtrJoinGroupRequest()
	r.Group, r.MemberID = group, member
	r.SessionTimeoutMillis = int32(testSession / time.Millisecond)
	r.RebalanceTimeoutMillis = int32(testRebalance / time.Millisecond)
	r.ProtocolType = "consumer"
	r.Protocols = ps
	return r
}

// async runs f in a goroutine of the bubble; its result arrives on the
// returned channel. It returns once the call has returned or blocked, so
// calls started one after another reach the coordinator in that order.
func async[T any](f func() T) <-chan T {
	ch := make(chan T, 1)
	go func() { ch <- f() }()
	synctest.Wait()
	return ch
}

// advance moves the bubble's clock on by d and lets every timer that
// fired meanwhile finish its work.
func advance(d time.Duration) {
	time.Sleep(d)
	synctest.Wait()
}

// done returns what ch delivered once every goroutine of the bubble is
// blocked, failing if ch has nothing yet.
func done[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	synctest.Wait()
	select {
	case v := <-ch:
		return v
	default:
		t.Fatalf("call still blocked")
		panic("unreachable")
	}
}

// stillBlocked fails if ch delivered.
func stillBlocked[T any](t *testing.T, ch <-chan T) {
	t.Helper()
	synctest.Wait()
	select {
	case v := <-ch:
		t.Fatalf("call returned %+v, want it blocked", v)
	default:
	}
}

func (c *Coordinator) goJoin(v int16, req *kmsg.JoinGroupRequest) <-chan *kmsg.JoinGroupResponse {
	return async(func() *kmsg.JoinGroupResponse { return c.Join(ctxClient, v, req) })
}

func (c *Coordinator) goSync(v int16, group, member string, gen int32, as map[string]string) <-chan *kmsg.SyncGroupResponse {
	req := syncReq(group, member, gen, as)
	return async(func() *kmsg.SyncGroupResponse { return c.Sync(context.Background(), v, req) })
}

func syncReq(group, member string, gen int32, as map[string]string) *kmsg.SyncGroupRequest {
	req := kmsg.NewPtrSyncGroupRequest()
	req.Group, req.MemberID, req.Generation = group, member, gen
	for id, a := range as {
		ga := kmsg.NewSyncGroupRequestGroupAssignment()
		ga.MemberID, ga.MemberAssignment = id, []byte(a)
		req.GroupAssignment = append(req.GroupAssignment, ga)
	}
	return req
}

func (c *Coordinator) hb(group, member string, gen int32) int16 {
	req := kmsg.NewPtrHeartbeatRequest()
	req.Group, req.MemberID, req.Generation = group, member, gen
	return c.Heartbeat(4, req).ErrorCode
}

func (c *Coordinator) leave(group string, members ...string) *kmsg.LeaveGroupResponse {
	req := kmsg.NewPtrLeaveGroupRequest()
	req.Group = group
	for _, m := range members {
		lm := kmsg.NewLeaveGroupRequestMember()
		lm.MemberID = m
		req.Members = append(req.Members, lm)
	}
	return c.Leave(5, req)
}

func (c *Coordinator) state(group string) string {
	req := kmsg.NewPtrDescribeGroupsRequest()
	req.Groups = []string{group}
	return c.Describe(5, req).Groups[0].State
}

// memberID gets a member ID the v4+ way: MEMBER_ID_REQUIRED first.
func (c *Coordinator) memberID(t *testing.T, group string, ps ...string) string {
	t.Helper()
	if len(ps) == 0 {
		ps = []string{"range"}
	}
	r := c.Join(ctxClient, 9, joinReq(group, "", protos(ps...)))
	wantCode(t, "first join", r.ErrorCode, kerr.MemberIDRequired.Code)
	return r.MemberID
}

// stable forms a group of n members (the first is the leader) and
// syncs it with assignment "a-<i>" for member i; it returns the member IDs
// and the generation.
func (c *Coordinator) stable(t *testing.T, group string, n int) ([]string, int32) {
	t.Helper()
	// The first member forms a generation alone at once; the others'
	// joins start a rebalance that its rejoin completes. Each gets its
	// member ID just before it joins: a member told MEMBER_ID_REQUIRED
	// holds up the join phase until it rejoins.
	ids := []string{c.memberID(t, group)}
	first := done(t, c.goJoin(9, joinReq(group, ids[0], protos("range"))))
	wantCode(t, "first join", first.ErrorCode, 0)
	gen := first.Generation
	if n > 1 {
		var chs []<-chan *kmsg.JoinGroupResponse
		for range n - 1 {
			id := c.memberID(t, group)
			ids = append(ids, id)
			chs = append(chs, c.goJoin(9, joinReq(group, id, protos("range"))))
		}
		chs = append(chs, c.goJoin(9, joinReq(group, ids[0], protos("range"))))
		for _, ch := range chs {
			r := done(t, ch)
			wantCode(t, "join", r.ErrorCode, 0)
			gen = r.Generation
		}
	}
	as := map[string]string{}
	for i, id := range ids {
		as[id] = "a-" + string(rune('0'+i))
	}
	var syncs []<-chan *kmsg.SyncGroupResponse
	for _, id := range ids {
		syncs = append(syncs, c.goSync(5, group, id, gen, as))
	}
	for i, ch := range syncs {
		r := done(t, ch)
		wantCode(t, "sync", r.ErrorCode, 0)
		if string(r.MemberAssignment) != as[ids[i]] {
			t.Fatalf("member %d got %q, want %q", i, r.MemberAssignment, as[ids[i]])
		}
	}
	return ids, gen
}

func wantCode(t *testing.T, what string, got, want int16) {
	t.Helper()
	if got != want {
		t.Fatalf("%s: error %v, want %v", what, codeName(got), codeName(want))
	}
}

func codeName(c int16) string {
	if c == 0 {
		return "NONE"
	}
	if c == SimpleCommit {
		return "SimpleCommit"
	}
	if e := kerr.ErrorForCode(c); e != nil {
		return e.Error()
	}
	return "?"
}
