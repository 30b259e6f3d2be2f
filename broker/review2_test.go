package broker_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Every API at every served version: a zero request (with what each
// needs to be meaningful) is answered, on the same connection, with a
// response franz-go decodes at that version.
func TestReviewEveryServedVersionDecodes(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tb.createTopic(ctx, "t", 2)
	c := dialRaw(t, tb.addr)
	av := kmsg.NewPtrApiVersionsRequest()
	av.SetVersion(3)
	av.ClientSoftwareName, av.ClientSoftwareVersion = "review", "1"
	c.send(av)
	avr := kmsg.NewPtrApiVersionsResponse()
	avr.SetVersion(3)
	if err := c.recv(avr, 5*time.Second); err != nil || avr.ErrorCode != 0 {
		t.Fatalf("ApiVersions: %v %v", err, avr.ErrorCode)
	}
	for _, k := range avr.ApiKeys {
		if k.ApiKey == 17 || k.ApiKey == 36 {
			continue // SASL without security closes the connection (tested in security_test.go)
		}
		for v := k.MinVersion; v <= k.MaxVersion; v++ {
			req := kmsg.RequestForKey(k.ApiKey)
			req.SetVersion(v)
			switch r := req.(type) {
			case *kmsg.ProduceRequest:
				r.Acks = 1
			case *kmsg.FetchRequest:
				r.ReplicaID, r.SessionEpoch, r.MaxWaitMillis = -1, -1, 1
				ft := kmsg.NewFetchRequestTopic()
				ft.Topic = "t"
				ft.Partitions = []kmsg.FetchRequestTopicPartition{kmsg.NewFetchRequestTopicPartition()}
				r.Topics = []kmsg.FetchRequestTopic{ft}
			case *kmsg.MetadataRequest:
				mt := kmsg.NewMetadataRequestTopic()
				mt.Topic = kmsg.StringPtr("t")
				r.Topics = []kmsg.MetadataRequestTopic{mt}
			case *kmsg.ListOffsetsRequest:
				lt := kmsg.NewListOffsetsRequestTopic()
				lt.Topic = "t"
				lp := kmsg.NewListOffsetsRequestTopicPartition()
				lp.Timestamp = -1
				lt.Partitions = []kmsg.ListOffsetsRequestTopicPartition{lp}
				r.Topics = []kmsg.ListOffsetsRequestTopic{lt}
			case *kmsg.CreateTopicsRequest:
				ct := kmsg.NewCreateTopicsRequestTopic()
				ct.Topic, ct.NumPartitions, ct.ReplicationFactor = fmt.Sprintf("c%d", v), 1, 1
				r.Topics = []kmsg.CreateTopicsRequestTopic{ct}
			case *kmsg.FindCoordinatorRequest:
				r.CoordinatorKey = "g"
				r.CoordinatorKeys = []string{"g"}
			case *kmsg.JoinGroupRequest:
				r.Group, r.ProtocolType, r.SessionTimeoutMillis, r.RebalanceTimeoutMillis = fmt.Sprintf("g%d", v), "consumer", 6000, 6000
				p := kmsg.NewJoinGroupRequestProtocol()
				p.Name = "range"
				r.Protocols = []kmsg.JoinGroupRequestProtocol{p}
			}
			c.send(req)
			resp := req.ResponseKind()
			resp.SetVersion(v)
			if err := c.recv(resp, 10*time.Second); err != nil {
				t.Fatalf("%s v%d: %v", kmsg.NameForKey(k.ApiKey), v, err)
			}
		}
	}
}

// Metadata v1+ with an empty (not null) topic list asks for no topics;
// franz-go sends it to learn the brokers. It must not list every topic.
func TestReviewMetadataEmptyTopicsIsNone(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tb.createTopic(ctx, "t", 1)
	cl := tb.client()
	req := kmsg.NewPtrMetadataRequest()
	req.Topics = []kmsg.MetadataRequestTopic{}
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Topics) != 0 {
		t.Fatalf("an empty topic list answered %d topics", len(resp.Topics))
	}
}

// A long-polling fetch in flight when the server closes is answered, and
// Close returns promptly.
func TestReviewCloseAnswersALongPoll(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tb.createTopic(ctx, "t", 1)
	c := dialRaw(t, tb.addr)
	req := kmsg.NewPtrFetchRequest()
	req.SetVersion(12)
	req.ReplicaID, req.MaxWaitMillis, req.MinBytes, req.MaxBytes, req.SessionEpoch = -1, 20000, 1, 1<<20, -1
	ft := kmsg.NewFetchRequestTopic()
	ft.Topic = "t"
	p := kmsg.NewFetchRequestTopicPartition()
	p.PartitionMaxBytes, p.LogStartOffset, p.CurrentLeaderEpoch = 1<<20, -1, -1
	ft.Partitions = append(ft.Partitions, p)
	req.Topics = append(req.Topics, ft)
	c.send(req)
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	go tb.srv.Close()
	resp := kmsg.NewPtrFetchResponse()
	resp.SetVersion(12)
	if err := c.recv(resp, 5*time.Second); err != nil {
		t.Fatalf("the long poll was not answered on Close: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("answered after %v", d)
	}
}

// OffsetCommit from a member of an old generation, and a "simple" commit
// (no member, generation -1) to a group that has members, are refused.
func TestReviewOffsetCommitGenerationChecks(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tb.createTopic(ctx, "t", 2)
	cl := tb.client(kgo.ConsumerGroup("g"), kgo.ConsumeTopics("t"), kgo.Balancers(kgo.RangeBalancer()))
	waitFor(t, 20*time.Second, func() bool {
		fs := cl.PollRecords(ctxShort(), 1)
		_ = fs
		m, _ := cl.GroupMetadata()
		return m != ""
	})
	member, gen := cl.GroupMetadata()
	other := tb.client()
	commit := func(member string, gen int32) int16 {
		req := kmsg.NewPtrOffsetCommitRequest()
		req.Group, req.MemberID, req.Generation = "g", member, gen
		rt := kmsg.NewOffsetCommitRequestTopic()
		rt.Topic = "t"
		rp := kmsg.NewOffsetCommitRequestTopicPartition()
		rp.Offset = 5
		rt.Partitions = append(rt.Partitions, rp)
		req.Topics = append(req.Topics, rt)
		resp, err := req.RequestWith(ctx, other)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Topics[0].Partitions[0].ErrorCode
	}
	if code := commit(member, gen-1); code == 0 {
		t.Errorf("commit at generation %d (current %d): accepted", gen-1, gen)
	}
	if code := commit("", -1); code == 0 {
		t.Errorf("a simple commit to a group with a member: accepted")
	}
	if code := commit(member, gen); code != 0 {
		t.Errorf("commit of the current member: %v", kerr.ErrorForCode(code))
	}
}

func ctxShort() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	time.AfterFunc(time.Second, cancel)
	return ctx
}
