package broker

import (
	"maps"
	"slices"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferrymq/ferry/broker/groups"
	"github.com/ferrymq/ferry/commitlog"
)

// handleOffsetCommit records a group's offsets in the log, after the
// coordinator checked that the member and generation are current (a
// member that lost its partitions in a rebalance cannot move the group).
// Commit metadata strings are not kept: OffsetFetch answers them empty.
func handleOffsetCommit(r *request) kmsg.Response {
	req := r.body.(*kmsg.OffsetCommitRequest)
	resp := kmsg.NewPtrOffsetCommitResponse()
	s := r.c.s
	code := int16(kerr.GroupAuthorizationFailed.Code)
	if r.may("group", req.Group, "read") {
		// Checked only when allowed: the check counts as the member's
		// heartbeat, which a denied request must not give.
		code = s.groups.CheckMember(req.Group, req.MemberID, req.Generation)
	}
	if code == groups.SimpleCommit {
		// No member and generation -1, to a group without members (an
		// admin tool setting offsets): stored.
		code = 0
	}
	var offsets []commitlog.Offset
	type ref struct{ t, p int }
	var valid []ref
	for ti, t := range req.Topics {
		rt := kmsg.NewOffsetCommitResponseTopic()
		rt.Topic = t.Topic
		info, terr := s.log.Topic(t.Topic)
		for pi, p := range t.Partitions {
			rp := kmsg.NewOffsetCommitResponseTopicPartition()
			rp.Partition = p.Partition
			switch {
			case code == kerr.GroupAuthorizationFailed.Code:
				rp.ErrorCode = code
			case !r.may("topic", t.Topic, "read"):
				rp.ErrorCode = kerr.TopicAuthorizationFailed.Code
			case code != 0:
				rp.ErrorCode = code
			case req.Group == "":
				rp.ErrorCode = kerr.InvalidGroupID.Code
			case partitionCode(info, terr, p.Partition) != 0:
				rp.ErrorCode = partitionCode(info, terr, p.Partition)
			case p.Offset < 0:
				rp.ErrorCode = kerr.InvalidRequest.Code
			default:
				offsets = append(offsets, commitlog.Offset{Topic: t.Topic, Partition: p.Partition, Offset: uint64(p.Offset)})
				valid = append(valid, ref{ti, pi})
			}
			rt.Partitions = append(rt.Partitions, rp)
		}
		resp.Topics = append(resp.Topics, rt)
	}
	if len(offsets) > 0 {
		if err := s.log.CommitOffsets(r.ctx, req.Group, offsets...); err != nil {
			s.cfg.logger.Warn("offset commit failed", "group", req.Group, "err", err)
			for _, v := range valid {
				resp.Topics[v.t].Partitions[v.p].ErrorCode = errorCode(err)
			}
		}
	}
	return resp
}

// handleOffsetFetch answers a group's committed offsets (-1 where none).
// With RequireStable (KIP-447), a partition whose offset an open (or
// committing) transaction holds is answered UNSTABLE_OFFSET_COMMIT: the
// client asks again, and so never starts a partition from an offset the
// previous owner's transaction is about to move.
func handleOffsetFetch(r *request) kmsg.Response {
	req := r.body.(*kmsg.OffsetFetchRequest)
	resp := kmsg.NewPtrOffsetFetchResponse()
	if r.version >= 8 {
		for _, g := range req.Groups {
			rg := kmsg.NewOffsetFetchResponseGroup()
			rg.Group = g.Group
			var topics []kmsg.OffsetFetchRequestTopic
			if g.Topics != nil {
				topics = make([]kmsg.OffsetFetchRequestTopic, 0, len(g.Topics))
				for _, t := range g.Topics {
					rt := kmsg.NewOffsetFetchRequestTopic()
					rt.Topic, rt.Partitions = t.Topic, t.Partitions
					topics = append(topics, rt)
				}
			}
			if !r.may("group", g.Group, "describe") {
				rg.ErrorCode = kerr.GroupAuthorizationFailed.Code
				resp.Groups = append(resp.Groups, rg)
				continue
			}
			for _, t := range r.c.s.committed(r, g.Group, topics, g.Topics == nil, req.RequireStable) {
				gt := kmsg.NewOffsetFetchResponseGroupTopic()
				gt.Topic = t.Topic
				for _, p := range t.Partitions {
					gp := kmsg.NewOffsetFetchResponseGroupTopicPartition()
					gp.Partition, gp.Offset, gp.LeaderEpoch, gp.Metadata, gp.ErrorCode = p.Partition, p.Offset, p.LeaderEpoch, p.Metadata, p.ErrorCode
					gt.Partitions = append(gt.Partitions, gp)
				}
				rg.Topics = append(rg.Topics, gt)
			}
			resp.Groups = append(resp.Groups, rg)
		}
		return resp
	}
	if !r.may("group", req.Group, "describe") {
		resp.ErrorCode = kerr.GroupAuthorizationFailed.Code
		return resp
	}
	resp.Topics = r.c.s.committed(r, req.Group, req.Topics, req.Topics == nil, r.version >= 7 && req.RequireStable)
	return resp
}

// committed lists group's offsets of topics (every partition it committed,
// when all).
func (s *Server) committed(r *request, group string, topics []kmsg.OffsetFetchRequestTopic, all, stable bool) []kmsg.OffsetFetchResponseTopic {
	if all {
		byTopic := map[string][]int32{}
		for _, o := range s.log.Groups()[group] {
			if r.may("topic", o.Topic, "describe") {
				byTopic[o.Topic] = append(byTopic[o.Topic], o.Partition)
			}
		}
		topics = nil
		for _, name := range slices.Sorted(maps.Keys(byTopic)) {
			t := kmsg.NewOffsetFetchRequestTopic()
			t.Topic, t.Partitions = name, byTopic[name]
			topics = append(topics, t)
		}
	}
	var out []kmsg.OffsetFetchResponseTopic
	for _, t := range topics {
		rt := kmsg.NewOffsetFetchResponseTopic()
		rt.Topic = t.Topic
		for _, p := range t.Partitions {
			rp := kmsg.NewOffsetFetchResponseTopicPartition()
			rp.Partition, rp.Offset, rp.LeaderEpoch, rp.Metadata = p, -1, -1, kmsg.StringPtr("")
			if !r.may("topic", t.Topic, "describe") {
				rp.ErrorCode = kerr.TopicAuthorizationFailed.Code
			} else if stable && s.txns.pending(group, tpKey{t.Topic, p}) {
				rp.ErrorCode = kerr.UnstableOffsetCommit.Code
			} else if off, ok := s.log.CommittedOffset(group, t.Topic, p); ok {
				rp.Offset = int64(off)
			}
			rt.Partitions = append(rt.Partitions, rp)
		}
		out = append(out, rt)
	}
	return out
}
