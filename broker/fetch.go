package broker

import (
	"context"
	"errors"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/broker/recordbatch"
	"github.com/ferrymq/ferry/commitlog"
)

// maxFetchWait bounds a fetch's long poll whatever the client asks, and
// maxFetchBytes its answer's records (Kafka's fetch.max.bytes default).
const (
	maxFetchWait  = 30 * time.Second
	maxFetchBytes = 55 << 20
)

// anyError reports whether a partition of resp carries an error: the
// client is told at once instead of after the long poll.
func anyError(resp *kmsg.FetchResponse) bool {
	for _, t := range resp.Topics {
		for _, p := range t.Partitions {
			if p.ErrorCode != 0 {
				return true
			}
		}
	}
	return false
}

// handleFetch answers with what each partition holds from its fetch
// offset, waiting up to the request's max wait for min bytes to be there.
// It opens no fetch sessions (KIP-227 lets a broker answer session ID 0:
// the client goes on with full fetch requests).
func handleFetch(r *request) kmsg.Response {
	req := r.body.(*kmsg.FetchRequest)
	resp := kmsg.NewPtrFetchResponse()
	if req.SessionID != 0 {
		resp.ErrorCode = kerr.FetchSessionIDNotFound.Code
		return resp
	}
	wait := min(time.Duration(max(req.MaxWaitMillis, 0))*time.Millisecond, maxFetchWait)
	ctx, cancel := context.WithTimeout(r.ctx, wait)
	defer cancel()
	for {
		resp, total, waitable := r.c.s.readFetch(r, req)
		if total >= int(req.MinBytes) || total > 0 && req.MinBytes <= 0 || ctx.Err() != nil || len(waitable) == 0 || anyError(resp) {
			return resp
		}
		// Wait for any partition to get a message, then read them all
		// again.
		r.c.s.awaitAny(ctx, waitable)
		if ctx.Err() != nil {
			resp, _, _ = r.c.s.readFetch(r, req)
			return resp
		}
	}
}

type waitPoint struct {
	topic     string
	partition int32
	offset    uint64
}

// readFetch reads every partition of req once. It returns the response,
// the record bytes in it and the partitions worth waiting on (those read
// up to their end without error).
func (s *Server) readFetch(r *request, req *kmsg.FetchRequest) (*kmsg.FetchResponse, int, []waitPoint) {
	resp := kmsg.NewPtrFetchResponse()
	total := 0
	budget := int(req.MaxBytes)
	if budget <= 0 || budget > maxFetchBytes {
		budget = maxFetchBytes
	}
	seen := map[tpKey]bool{}
	var waitable []waitPoint
	for _, t := range req.Topics {
		rt := kmsg.NewFetchResponseTopic()
		rt.Topic = t.Topic
		for _, p := range t.Partitions {
			if seen[tpKey{t.Topic, p.Partition}] {
				continue // named twice: answered once
			}
			seen[tpKey{t.Topic, p.Partition}] = true
			rp := kmsg.NewFetchResponseTopicPartition()
			rp.Partition = p.Partition
			rp.PreferredReadReplica = -1
			rp.RecordBatches = []byte{} // empty, not null: librdkafka refuses a null record set
			if !r.may("topic", t.Topic, "read") {
				rp.ErrorCode = kerr.TopicAuthorizationFailed.Code
				rt.Partitions = append(rt.Partitions, rp)
				continue
			}
			start, end, err := s.log.Bounds(t.Topic, p.Partition)
			if err != nil {
				rp.ErrorCode = errorCode(err)
				rt.Partitions = append(rt.Partitions, rp)
				continue
			}
			rp.HighWatermark, rp.LastStableOffset, rp.LogStartOffset = int64(end), int64(end), int64(start)
			switch off := p.FetchOffset; {
			case off < int64(start) || off > int64(end):
				rp.ErrorCode = kerr.OffsetOutOfRange.Code
			case off == int64(end):
				waitable = append(waitable, waitPoint{t.Topic, p.Partition, uint64(off)})
			case budget <= 0:
				// Over the response's bound: the client asks again.
			default:
				maxBytes := int(p.PartitionMaxBytes)
				if maxBytes <= 0 || maxBytes > budget {
					maxBytes = budget
				}
				res, err := s.log.Read(t.Topic, p.Partition, uint64(off), commitlog.ReadOpts{MaxBytes: maxBytes, MaxMessages: 10000})
				switch {
				case errors.Is(err, ferry.ErrOffsetOutOfRange):
					rp.ErrorCode = kerr.OffsetOutOfRange.Code
				case err != nil:
					rp.ErrorCode = errorCode(err)
				case len(res.Messages) == 0:
					waitable = append(waitable, waitPoint{t.Topic, p.Partition, res.Next})
				default:
					rp.RecordBatches = appendMessages(nil, res.Messages)
					total += len(rp.RecordBatches)
					budget -= len(rp.RecordBatches)
				}
			}
			rt.Partitions = append(rt.Partitions, rp)
		}
		resp.Topics = append(resp.Topics, rt)
	}
	return resp, total, waitable
}

// awaitAny returns when one of the partitions has a message at or after
// its offset, or ctx ends.
func (s *Server) awaitAny(ctx context.Context, points []waitPoint) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{}, len(points))
	for _, w := range points {
		go func() {
			s.log.Fetch(ctx, w.topic, w.partition, w.offset, commitlog.ReadOpts{MaxMessages: 1, MaxBytes: 1})
			done <- struct{}{}
		}()
	}
	<-done
}

// appendMessages encodes messages (in offset order) as one record batch:
// offsets as deltas from the first (a compacted partition has gaps), the
// message ID in the ferry-id header first.
func appendMessages(dst []byte, msgs []*ferry.Message) []byte {
	base := msgs[0]
	b := recordbatch.Batch{
		BaseOffset:      int64(base.Offset),
		LastOffsetDelta: int32(msgs[len(msgs)-1].Offset - base.Offset),
		BaseTimestamp:   base.Time.UnixMilli(),
		ProducerID:      -1,
		ProducerEpoch:   -1,
		BaseSequence:    -1,
		Records:         make([]recordbatch.Record, len(msgs)),
	}
	b.MaxTimestamp = b.BaseTimestamp
	for i, m := range msgs {
		ts := m.Time.UnixMilli()
		b.MaxTimestamp = max(b.MaxTimestamp, ts)
		hdrs := make([]recordbatch.Header, 0, len(m.Headers)+1)
		hdrs = append(hdrs, recordbatch.Header{Key: HeaderID, Value: []byte(m.ID.String())})
		for _, h := range m.Headers {
			hdrs = append(hdrs, recordbatch.Header{Key: h.Key, Value: h.Value})
		}
		b.Records[i] = recordbatch.Record{
			OffsetDelta:    int32(m.Offset - base.Offset),
			TimestampDelta: ts - b.BaseTimestamp,
			Key:            m.Key,
			Value:          m.Payload,
			Headers:        hdrs,
		}
	}
	out, err := recordbatch.AppendBatch(dst, b, recordbatch.None)
	if err != nil {
		// Uncompressed encoding of valid fields cannot fail.
		panic("broker: encoding a record batch: " + err.Error())
	}
	return out
}

func handleListOffsets(r *request) kmsg.Response {
	req := r.body.(*kmsg.ListOffsetsRequest)
	resp := kmsg.NewPtrListOffsetsResponse()
	l := r.c.s.log
	for _, t := range req.Topics {
		rt := kmsg.NewListOffsetsResponseTopic()
		rt.Topic = t.Topic
		for _, p := range t.Partitions {
			rp := kmsg.NewListOffsetsResponseTopicPartition()
			rp.Partition, rp.Timestamp, rp.Offset, rp.LeaderEpoch = p.Partition, -1, -1, 0
			start, end, err := l.Bounds(t.Topic, p.Partition)
			switch {
			case !r.may("topic", t.Topic, "describe"):
				rp.ErrorCode = kerr.TopicAuthorizationFailed.Code
			case err != nil:
				rp.ErrorCode = errorCode(err)
			case p.Timestamp == -2: // earliest
				rp.Offset = int64(start)
			case p.Timestamp == -1: // latest (the last stable offset is the end: a transaction is written whole)
				rp.Offset = int64(end)
			case p.Timestamp < 0:
				// -3 (the largest timestamp, v7) is not served.
				rp.ErrorCode = kerr.InvalidRequest.Code
			default:
				off, err := l.OffsetForTime(t.Topic, p.Partition, time.UnixMilli(p.Timestamp))
				if err != nil {
					rp.ErrorCode = errorCode(err)
					break
				}
				rp.Offset = int64(off)
				if off < end {
					if res, err := l.Read(t.Topic, p.Partition, off, commitlog.ReadOpts{MaxMessages: 1}); err == nil && len(res.Messages) > 0 {
						rp.Timestamp = res.Messages[0].Time.UnixMilli()
					}
				}
			}
			rt.Partitions = append(rt.Partitions, rp)
		}
		resp.Topics = append(resp.Topics, rt)
	}
	return resp
}
