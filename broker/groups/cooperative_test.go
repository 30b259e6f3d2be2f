package groups

import (
	"slices"
	"testing"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestCooperativeStickyTwoRounds drives the coordinator with franz-go's
// own CooperativeStickyBalancer the way kgo does: when b joins, the first
// rebalance only takes partitions away from a (b gets none, since a still
// owns them); a then revokes and rejoins, and the second rebalance gives b
// its share. The coordinator needs nothing special for this, but it must
// treat the leader's rejoin in Stable as a new rebalance.
func TestCooperativeStickyTwoRounds(t *testing.T) {
	bubble(t, func(t *testing.T) {
		c := newTest(t)
		bal := kgo.CooperativeStickyBalancer()
		topics := map[string]int32{"t": 6}
		type consumer struct {
			id    string
			gen   int32
			owned map[string][]int32
		}
		req := func(m *consumer) *kmsg.JoinGroupRequest {
			p := kmsg.NewJoinGroupRequestProtocol()
			p.Name = bal.ProtocolName()
			p.Metadata = bal.JoinGroupMetadata([]string{"t"}, m.owned, m.gen)
			return joinReq("g", m.id, []kmsg.JoinGroupRequestProtocol{p})
		}
		// round joins the given consumers (the leader last, as it is the one
		// rejoining), balances as the leader, syncs everyone.
		round := func(ms ...*consumer) {
			t.Helper()
			var chs []<-chan *kmsg.JoinGroupResponse
			for _, m := range ms {
				chs = append(chs, c.goJoin(9, req(m)))
			}
			var plan []kmsg.SyncGroupRequestGroupAssignment
			var gen int32
			for i, ch := range chs {
				r := done(t, ch)
				wantCode(t, "join", r.ErrorCode, 0)
				gen = r.Generation
				ms[i].gen = r.Generation
				if r.LeaderID == r.MemberID {
					plan = balance(t, bal, r.Members, topics)
				}
			}
			var syncs []<-chan *kmsg.SyncGroupResponse
			for _, m := range ms {
				sr := syncReq("g", m.id, gen, nil)
				if m == ms[len(ms)-1] {
					sr.GroupAssignment = plan
				}
				syncs = append(syncs, async(func() *kmsg.SyncGroupResponse { return c.Sync(ctxClient, 5, sr) }))
			}
			for i, ch := range syncs {
				r := done(t, ch)
				wantCode(t, "sync", r.ErrorCode, 0)
				owned, err := bal.ParseSyncAssignment(r.MemberAssignment)
				if err != nil {
					t.Fatal(err)
				}
				ms[i].owned = owned
			}
		}

		a := &consumer{id: c.memberID(t, "g", bal.ProtocolName()), gen: -1}
		round(a)
		if len(a.owned["t"]) != 6 {
			t.Fatalf("alone, a owns %v", a.owned)
		}
		b := &consumer{id: c.memberID(t, "g", bal.ProtocolName()), gen: -1}
		round(b, a)
		if len(a.owned["t"]) != 3 || len(b.owned["t"]) != 0 {
			t.Fatalf("first cooperative round: a %v b %v; want a to keep 3 and b to wait", a.owned, b.owned)
		}
		// a revoked three partitions and rejoins (it leads): b learns from
		// its heartbeat.
		chA := c.goJoin(9, req(a))
		wantCode(t, "b heartbeat", c.hb("g", b.id, b.gen), kerr.RebalanceInProgress.Code)
		chB := c.goJoin(9, req(b))
		ra, rb := done(t, chA), done(t, chB)
		if ra.Generation != b.gen+1 || rb.Generation != ra.Generation {
			t.Fatalf("second round generations %d %d", ra.Generation, rb.Generation)
		}
		// Finish the round with the balancer.
		plan := balance(t, bal, ra.Members, topics)
		sb := async(func() *kmsg.SyncGroupResponse { return c.Sync(ctxClient, 5, syncReq("g", b.id, rb.Generation, nil)) })
		la := syncReq("g", a.id, ra.Generation, nil)
		la.GroupAssignment = plan
		sa := async(func() *kmsg.SyncGroupResponse { return c.Sync(ctxClient, 5, la) })
		pa, _ := bal.ParseSyncAssignment(done(t, sa).MemberAssignment)
		pb, _ := bal.ParseSyncAssignment(done(t, sb).MemberAssignment)
		all := append(slices.Clone(pa["t"]), pb["t"]...)
		slices.Sort(all)
		if len(pa["t"]) != 3 || len(pb["t"]) != 3 || !slices.Equal(all, []int32{0, 1, 2, 3, 4, 5}) {
			t.Fatalf("second cooperative round: a %v b %v", pa, pb)
		}
		if !slices.Equal(pa["t"], a.owned["t"]) {
			t.Fatalf("sticky: a's partitions moved from %v to %v", a.owned["t"], pa["t"])
		}
	})
}

// balance runs the leader's side of a balancer as kgo does.
func balance(t *testing.T, bal kgo.GroupBalancer, members []kmsg.JoinGroupResponseMember, topics map[string]int32) []kmsg.SyncGroupRequestGroupAssignment {
	t.Helper()
	mb, _, err := bal.MemberBalancer(members)
	if err != nil {
		t.Fatal(err)
	}
	into, err := mb.(kgo.GroupMemberBalancerOrError).BalanceOrError(topics)
	if err != nil {
		t.Fatal(err)
	}
	return into.IntoSyncAssignment()
}
